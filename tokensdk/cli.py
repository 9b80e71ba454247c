"""The ``tokensdk`` command line (also ``python -m tokensdk``).

Commands::

    demo     the SDK at work against an embedded service (a live table)
    serve    run the reference token service
    keys     manage the signing keys of a service database (``keys rotate --db``)
    login    log in and save the session to a state file
    logout   revoke the saved session and forget it
    tokens   list what a state file holds (secrets redacted)
    verify   validate an asset access token locally
    header   print a MAC header for a named MAC token of a state file

Everything heavy (aiohttp, rich, the service) is imported by the command that needs
it, so ``--help`` is fast. Failures print one line on stderr and exit non-zero:
1 for an operation that failed, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokensdk._argtypes import positive_float, positive_int

if TYPE_CHECKING:
    from tokensdk import Session

__all__ = ["build_parser", "main"]

_DEFAULT_STATE = Path(".tokensdk-demo/state.json")
_TIMEOUT = 5.0


class CommandError(Exception):
    """A command failed in a way the user can fix; the message is the one line shown."""


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of every command.

    Returns:
        The top-level parser; each sub-parser's ``func`` runs its command.
    """
    from tokensdk.server._cli import add_serve_arguments

    parser = argparse.ArgumentParser(
        prog="tokensdk",
        description="Keep an asyncio application authenticated: tokens, refresh, MAC headers.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser(
        "demo",
        help="watch a session keep its tokens fresh (embedded service)",
        description="Start the reference service in-process, log in with short lifespans, "
        "obtain an asset token and a MAC token, and show them counting down while they are "
        "refreshed. A second run resumes from --state without a password.",
    )
    demo.add_argument(
        "--duration", type=positive_float, help="stop after SECONDS (default: Ctrl-C)"
    )
    demo.add_argument(
        "--state", type=Path, default=_DEFAULT_STATE, help=f"state file (default: {_DEFAULT_STATE})"
    )
    demo.add_argument(
        "--access-ttl", type=positive_int, default=4, help="access token lifespan in seconds (4)"
    )
    demo.add_argument("--plain", action="store_true", help="print plain lines even on a terminal")
    demo.set_defaults(func=_cmd_demo)

    serve = commands.add_parser(
        "serve",
        help="run the reference token service",
        description="Run the reference token service until Ctrl-C.",
    )
    add_serve_arguments(serve)
    serve.set_defaults(func=_cmd_serve)

    keys = commands.add_parser(
        "keys", help="manage a service's signing keys", description="Manage signing keys."
    )
    key_commands = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    rotate = key_commands.add_parser(
        "rotate",
        help="make a new key sign; old keys keep verifying",
        description="Rotate the signing key stored in a service database (stop the service "
        "first, or restart it afterwards). Old keys keep verifying until dropped with "
        "'serve --drop-key KID'.",
    )
    rotate.add_argument("--db", type=Path, required=True, help="the service's SQLite file")
    rotate.set_defaults(func=_cmd_keys_rotate)
    listing = key_commands.add_parser(
        "list", help="list the keys of a service database", description="List signing keys."
    )
    listing.add_argument("--db", type=Path, required=True, help="the service's SQLite file")
    listing.set_defaults(func=_cmd_keys_list)

    login = commands.add_parser(
        "login",
        help="log in and save the session",
        description="Log in with a password and save the session to a state file.",
    )
    login.add_argument("--url", required=True, help="the token service, e.g. http://127.0.0.1:8080")
    login.add_argument("--user", required=True, help="the username")
    login.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    login.add_argument("--state", type=Path, required=True, help="the state file to write")
    login.set_defaults(func=_cmd_login)

    logout = commands.add_parser(
        "logout",
        help="revoke the saved session",
        description="Revoke the saved session on the service and forget it locally.",
    )
    logout.add_argument("--url", required=True, help="the token service")
    logout.add_argument("--state", type=Path, required=True, help="the state file")
    logout.set_defaults(func=_cmd_logout)

    tokens = commands.add_parser(
        "tokens",
        help="list what a state file holds",
        description="List the tokens a state file holds; secrets are redacted.",
    )
    tokens.add_argument("--state", type=Path, required=True, help="the state file")
    tokens.set_defaults(func=_cmd_tokens)

    verify = commands.add_parser(
        "verify",
        help="validate an asset access token",
        description="Validate a PASETO v4.public asset access token locally and print the "
        "asset ids it grants.",
    )
    verify.add_argument("token", help="the token (v4.public....)")
    source = verify.add_mutually_exclusive_group(required=True)
    source.add_argument("--key", action="append", metavar="k4.public...", help="a trusted key")
    source.add_argument("--url", help="fetch the trusted keys from this service's /v1/keys")
    verify.set_defaults(func=_cmd_verify)

    header = commands.add_parser(
        "header",
        help="print a MAC header for a stored MAC token",
        description="Print an X-PowerAuth-Token header for a named MAC token of a state file.",
    )
    header.add_argument("name", help="the MAC token's name")
    header.add_argument("--state", type=Path, required=True, help="the state file")
    header.add_argument("--url", help="correct the timestamp by the service's clock")
    header.set_defaults(func=_cmd_header)
    return parser


# -- commands ---------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    import anyio

    from tokensdk._demo import DemoOptions, run_demo

    live = sys.stdout.isatty() and not args.plain
    if live:
        try:
            import rich  # noqa: F401
        except ImportError:
            print(
                "tokensdk demo: rich is not installed (pip install 'tokensdk[cli]');"
                " printing plain lines",
                file=sys.stderr,
            )
            live = False
    options = DemoOptions(
        duration=args.duration, state=args.state, access_ttl=args.access_ttl, live=live
    )
    return anyio.run(run_demo, options)


def _cmd_serve(args: argparse.Namespace) -> int:
    import anyio

    from tokensdk.server._cli import config_from_args, serve_forever

    try:
        config = config_from_args(args)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    try:
        anyio.run(serve_forever, config, args.host, args.port)
    except OSError as exc:
        raise CommandError(
            f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}"
        ) from None
    return 0


def _open_state_db(path: Path) -> Any:
    from tokensdk.server._db import SqlitePersistence
    from tokensdk.server._state import ServiceState

    if not path.is_file():
        raise CommandError(f"no service database at {path}")
    try:
        return ServiceState(db=SqlitePersistence(str(path)))
    except Exception as exc:  # sqlite3.Error, a record this version cannot read
        raise CommandError(f"cannot open service database {path}: {type(exc).__name__}") from None


def _cmd_keys_rotate(args: argparse.Namespace) -> int:
    import time

    state = _open_state_db(args.db)
    try:
        kid = state.rotate_signing_key(time.time())
    finally:
        state.db.close()
    print(f"new signing key {kid}")
    return 0


def _cmd_keys_list(args: argparse.Namespace) -> int:
    state = _open_state_db(args.db)
    try:
        entries = state.public_keys()
    finally:
        state.db.close()
    for number, entry in enumerate(entries, 1):
        role = "signs" if number == len(entries) else "verifies"
        print(f"{entry['kid']}  {role}  {entry['paserk']}")
    return 0


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        import getpass

        password = getpass.getpass("password: ")
    else:
        raise CommandError("no password: use --password-stdin, or run on a terminal")
    if not password:
        raise CommandError("the password is empty")
    return password


def _session(url: str, state: Path) -> Session:
    from tokensdk import FileStore, RetryConfig, Session

    # A person is waiting: fail fast instead of retrying for long.
    return Session(url, store=FileStore(state), timeout=_TIMEOUT, retry=RetryConfig(max_attempts=2))


def _cmd_login(args: argparse.Namespace) -> int:
    password = _read_password(args.password_stdin)

    async def run() -> str:
        async with _session(args.url, args.state) as session:
            await session.login(args.user, password)
            await session.flush()
            return str(session.username)

    user = _run(run, url=args.url)
    print(f"logged in as {user}; session saved to {args.state}")
    return 0


def _cmd_logout(args: argparse.Namespace) -> int:
    from tokensdk import SessionStatus

    async def run() -> str | None:
        async with _session(args.url, args.state) as session:
            if session.status is not SessionStatus.ACTIVE:
                return None
            user = session.username
            await session.logout()
            await session.flush()
            return user

    user = _run(run, url=args.url)
    if user is None:
        raise CommandError(f"{args.state} holds no active session")
    print(f"logged out {user}")
    return 0


def _load_state(path: Path) -> Any:
    import time

    from tokensdk import FileStore
    from tokensdk._models import decode_state

    async def load() -> Any:
        return await FileStore(path).load()

    document = _run(load)
    if document is None:
        raise CommandError(f"no state file at {path}")
    return decode_state(document, wall=time.time(), monotonic=time.monotonic())


def _in(seconds: float) -> str:
    return "expired" if seconds <= 0 else f"expires in {seconds:.0f}s"


def _cmd_tokens(args: argparse.Namespace) -> int:
    import time

    snapshot = _load_state(args.state)
    now = time.time()
    print(f"status: {snapshot.status.value}")
    creds = snapshot.credentials
    if creds is not None:
        print(f"user: {creds.username}")
        print(f"  access token   <redacted>  {_in(creds.access_expires_at - now)}")
        print(f"  refresh token  <redacted>  {_in(creds.refresh_expires_at - now)}")
    for item in snapshot.access_tokens:
        left = "no expiry" if item.expires_at is None else _in(item.expires_at - now)
        print(f"asset token {item.asset_id}  <redacted>  {left}")
    for mac in snapshot.mac_tokens.values():
        print(
            f"mac token {mac.name}  id {mac.token_id}  secret <redacted>  {'+'.join(mac.factors)}"
        )
    if creds is None and not snapshot.access_tokens and not snapshot.mac_tokens:
        print("(no tokens)")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    import datetime

    from tokensdk import InvalidInput, TokenInvalid
    from tokensdk._assets import TokenValidator

    async def run() -> Any:
        try:
            validator = TokenValidator(args.url, keys=args.key)
        except InvalidInput as exc:
            raise CommandError(f"bad key: {exc}") from None
        async with validator:
            if args.url is not None:
                await validator.refresh_keys()
            return await validator.validate(args.token)

    try:
        info = _run(run, url=args.url)
    except TokenInvalid as exc:
        raise CommandError(f"invalid token: {exc.reason}") from None
    expires = datetime.datetime.fromtimestamp(info.expires_at, datetime.UTC)
    for asset_id in info.asset_ids:
        print(asset_id)
    print(f"valid until {expires.isoformat(timespec='seconds')} (key {info.kid})", file=sys.stderr)
    return 0


def _cmd_header(args: argparse.Namespace) -> int:
    import time

    from tokensdk._mac import build_header

    snapshot = _load_state(args.state)
    mac = snapshot.mac_tokens.get(args.name)
    if mac is None:
        names = ", ".join(sorted(snapshot.mac_tokens)) or "none"
        raise CommandError(f"no MAC token named {args.name!r} in {args.state} (it has: {names})")
    offset = 0.0
    if args.url is not None:
        offset = _run(lambda: _clock_offset(args.url), url=args.url)
    timestamp = int((time.time() + offset) * 1000)
    print(f"X-PowerAuth-Token: {build_header(mac.token_id, mac.secret, timestamp)}")
    return 0


async def _clock_offset(url: str) -> float:
    from tokensdk import MemoryStore, RetryConfig, Session

    session = Session(url, store=MemoryStore(), timeout=_TIMEOUT, retry=RetryConfig(max_attempts=2))
    async with session:
        return await session.sync_clock()


# -- running and errors -----------------------------------------------------------------


def _run(function: Callable[[], Any], *, url: str | None = None) -> Any:
    """Run an async command body, turning expected failures into one-line errors."""
    import anyio

    from tokensdk import (
        InvalidCredentials,
        InvalidInput,
        ProtocolError,
        RateLimited,
        ServiceError,
        ServiceUnavailable,
        SessionLost,
        StoreError,
        TokenInvalid,
    )

    where = f" at {url}" if url else ""
    try:
        return anyio.run(function)
    except TokenInvalid:
        raise
    except InvalidCredentials as exc:
        raise CommandError(
            f"the service refused the credentials ({exc.error or 'invalid'})"
        ) from None
    except RateLimited as exc:
        raise CommandError(f"rate limited; retry in {exc.retry_after:.0f}s") from None
    except ServiceUnavailable as exc:
        if exc.status is None or exc.status == 0:
            raise CommandError(f"cannot reach the token service{where}: is it running?") from None
        raise CommandError(f"the token service{where} failed ({exc.status} {exc.error})") from None
    except ProtocolError:
        raise CommandError(f"{url} does not look like a tokensdk service") from None
    except ServiceError as exc:
        if exc.status == 404:
            raise CommandError(f"nothing at {url}/v1: is the URL right?") from None
        raise CommandError(f"the service answered {exc.status} {exc.error or 'error'}") from None
    except SessionLost as exc:
        raise CommandError(f"the saved session is gone ({exc.reason}); log in again") from None
    except StoreError as exc:
        raise CommandError(f"state file: {exc}") from None
    except InvalidInput as exc:
        raise CommandError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tokensdk`` command line.

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
    except CommandError as exc:
        print(f"tokensdk {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return result

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
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from tokensdk._argtypes import positive_float, positive_int

if TYPE_CHECKING:
    from tokensdk import Session, TokenSDKError
    from tokensdk._models import SessionSnapshot
    from tokensdk._observable import EventStream

__all__ = ["build_parser", "main"]

_DEFAULT_STATE = Path(".tokensdk-demo/state.json")
_TIMEOUT = 5.0


class CommandError(Exception):
    """A command failed in a way the user can fix; the message is the one line shown."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, like every other failure.

    argparse prints the whole usage before the error; for ``serve`` that is a dozen
    lines burying the one that matters. ``--help`` still shows everything.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of every command.

    Returns:
        The top-level parser; each sub-parser's ``func`` runs its command.
    """
    from tokensdk.server._cli import add_serve_arguments

    parser = _Parser(
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
        description="Run the reference token service until Ctrl-C or SIGTERM.",
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
    import signal

    # Ctrl-C must end the demo at any moment. Started with SIGINT ignored (a script's
    # background job), Python leaves it ignored until the demo's signal receiver takes
    # it over, and a Ctrl-C before that would be lost: take it now, as the receiver
    # will anyway. (A KeyboardInterrupt from here on ends in main(), exit status 0.)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)

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

    from tokensdk.server._cli import StartError, config_from_args, serve_forever

    try:
        config = config_from_args(args)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    try:
        anyio.run(serve_forever, config, args.host, args.port)
    except StartError as exc:
        raise CommandError(str(exc)) from None
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


async def _save_failure(session: Session, events: EventStream) -> BaseException | None:
    """Wait until the session's state is written; return why it was not, if it was not.

    The session only logs and announces a failed write (it must keep running), so a
    command that promises "saved" has to look for the announcement itself.

    Args:
        session: The session whose state must be on disk.
        events: A subscription made before the changes that must be saved.
    """
    from tokensdk import EventType

    await session.flush()
    await events.aclose()  # what is buffered is still delivered, then the stream ends
    failure = None
    async for event in events:
        if event.type is EventType.STORE_FAILED:
            failure = event.error
    return failure


def _cmd_login(args: argparse.Namespace) -> int:
    password = _read_password(args.password_stdin)

    async def run() -> str:
        async with _session(args.url, args.state) as session:
            events = session.events()
            await session.login(args.user, password)
            failure = await _save_failure(session, events)
            if failure is not None:
                # Nothing will ever use a session that was not saved: revoke it rather
                # than leave its tokens valid on the service for their whole lifetime.
                revoked = await session.logout()
                outcome = (
                    "the new session was revoked"
                    if revoked
                    else "the new session could not be revoked: its tokens stay valid on"
                    " the service until they expire"
                )
                raise CommandError(f"{failure}; {outcome}")
            return str(session.username)

    user = _run(run, url=args.url)
    print(f"logged in as {user}; session saved to {args.state}")
    return 0


def _cmd_logout(args: argparse.Namespace) -> int:
    from tokensdk import SessionStatus, TokenSDKError

    # Read-only first: a corrupt file is reported and left alone (opening a session
    # would move it aside), and a file with nothing to revoke needs no service.
    if _load_state(args.state).status is not SessionStatus.ACTIVE:
        raise CommandError(f"{args.state} holds no active session")

    async def run() -> str:
        async with _session(args.url, args.state) as session:
            if session.status is not SessionStatus.ACTIVE:
                # Its refresh token expired while on disk.
                raise CommandError(f"{args.state} holds no active session")
            user = session.username
            events = session.events()
            # Session.logout() forgets the session locally even when the service
            # cannot be reached, and the state file is the only handle that can still
            # revoke the token family. So make sure the service answers before logging
            # out: a down service or a wrong URL then leaves the file as it was, for
            # another try. Only a failure in the moment between both calls (or a
            # service that answers its status but fails the logout) still ends in a
            # local-only logout, which is then reported as a failure.
            try:
                await session.sync_clock()
            except TokenSDKError as exc:
                raise CommandError(
                    f"{_explain(exc, args.url)} (nothing was revoked; the session is kept in"
                    f" {args.state} for another try)"
                ) from None
            if not await session.logout():
                raise CommandError(
                    f"logged out {user} locally only: the service at {args.url} did not"
                    " revoke the session, so its tokens stay valid there until they expire"
                )
            failure = await _save_failure(session, events)
            if failure is not None:
                raise CommandError(
                    f"logged out {user} on the service, but {failure}: the file still holds"
                    " the revoked session"
                )
            return str(user)

    # Errors are raised inside run(): the library's warnings about them are then dropped.
    print(f"logged out {_run(run, url=args.url)}")
    return 0


def _load_state(path: Path) -> SessionSnapshot:
    """Read and decode a state file, changing nothing (a corrupt one stays where it is).

    A session's :class:`~tokensdk.FileStore` moves a corrupt file aside when it loads
    it; commands that only look at the file must not.
    """
    import stat
    import time

    from tokensdk import StoreCorrupt
    from tokensdk._models import decode_state
    from tokensdk.stores._codec import CorruptState, NewerFormat
    from tokensdk.stores._codec import decode_state as decode_envelope
    from tokensdk.stores._file import _read_regular_file

    try:
        # The store's own reader: a FIFO in the file's place does not hang it.
        result = _read_regular_file(path)
    except OSError as exc:
        raise CommandError(f"cannot read state file {path}: {exc.strerror or exc}") from None
    if result is None:
        raise CommandError(f"no state file at {path}")
    st, data = result
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise CommandError(f"cannot read state file {path}: it is {kind}")
    if st.st_mode & 0o077:
        # The same refusal as the session's store: the file holds secrets.
        raise CommandError(
            f"state file {path} is accessible by group or others (mode"
            f" {stat.S_IMODE(st.st_mode):04o}); it holds secrets: run `chmod 600 {path}`"
        )
    try:
        document = decode_envelope(data)
        return decode_state(document, wall=time.time(), monotonic=time.monotonic())
    except CorruptState as exc:
        raise CommandError(f"state file {path} is corrupt ({exc.reason}); left as it is") from None
    except StoreCorrupt as exc:
        raise CommandError(f"state file {path} is corrupt ({exc}); left as it is") from None
    except NewerFormat as exc:
        raise CommandError(
            f"state file {path} was written by a newer tokensdk (format version"
            f" {exc.version}); upgrade tokensdk to read it"
        ) from None


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

    from tokensdk.mac import build_header

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


class _HeldLog(logging.Handler):
    """Keeps the library's log warnings while a command runs (see :func:`_run`)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _explain(exc: TokenSDKError, url: str | None) -> str:
    """Say in one line what a library error means for the person at the terminal."""
    from tokensdk import (
        AccountFrozen,
        InvalidCredentials,
        ProtocolError,
        RateLimited,
        ServiceError,
        ServiceUnavailable,
        SessionLost,
        StoreError,
    )

    where = f" at {url}" if url else ""
    if isinstance(exc, InvalidCredentials):
        return f"the service refused the credentials ({exc.error or 'invalid'})"
    if isinstance(exc, AccountFrozen):
        return "the account is frozen"
    if isinstance(exc, RateLimited):
        return f"rate limited; retry in {exc.retry_after:.0f}s"
    if isinstance(exc, ServiceUnavailable):
        if exc.status is None or exc.status == 0:
            return f"cannot reach the token service{where}: is it running?"
        return f"the token service{where} failed ({exc.status} {exc.error})"
    if isinstance(exc, ProtocolError):
        return f"{url or 'the service'} does not look like a tokensdk service"
    if isinstance(exc, ServiceError):
        if exc.status == 404:
            return f"nothing at {url}/v1: is the URL right?"
        return f"the service answered {exc.status} {exc.error or 'error'}"
    if isinstance(exc, SessionLost):
        return f"the saved session is gone ({exc.reason}); log in again"
    if isinstance(exc, StoreError):
        return f"state file: {exc}"
    return str(exc) or type(exc).__name__


def _run(function: Callable[[], Any], *, url: str | None = None) -> Any:
    """Run an async command body, turning expected failures into one-line errors.

    The library logs what it works around (a failed save, an unreachable service at
    logout). The command reports what matters itself, so those warnings are held:
    dropped when the command fails (its one line says it), shown when it succeeds.
    """
    import anyio

    from tokensdk import TokenInvalid, TokenSDKError

    held = _HeldLog()
    logger = logging.getLogger("tokensdk")
    logger.addHandler(held)
    try:
        result = anyio.run(function)
    except TokenInvalid:
        raise
    except TokenSDKError as exc:
        raise CommandError(_explain(exc, url)) from None
    finally:
        logger.removeHandler(held)
    for record in held.records:
        print(record.getMessage(), file=sys.stderr)
    return result


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

"""Command-line plumbing for ``python -m tokensdk serve``: options, config, serving.

The top-level CLI owns the parser; it calls :func:`add_serve_arguments` on its
``serve`` sub-parser, :func:`config_from_args` on the parsed namespace and runs
:func:`serve_forever`, which raises :class:`StartError` (one line to show) when the
service cannot start.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.abc

from tokensdk._argtypes import port_number, positive_float, positive_int, power_of_two
from tokensdk.server._app import running_service
from tokensdk.server._config import ServiceConfig
from tokensdk.server._state import ServiceState

__all__ = [
    "KEY_FILE_ENV",
    "StartError",
    "add_serve_arguments",
    "config_from_args",
    "serve_forever",
]

#: The environment variable naming the service key file (``--key-file`` wins over it).
KEY_FILE_ENV = "TOKENSDK_SERVICE_KEY_FILE"


class StartError(Exception):
    """The service could not start (port, database, configuration); the message is one line."""


def _user(text: str) -> tuple[str, str]:
    name, colon, password = text.partition(":")
    if not colon or not name:
        # Never echo the argument: it holds a password.
        raise argparse.ArgumentTypeError("expected NAME:PASSWORD")
    return name, password


def _asset(text: str) -> tuple[str, str]:
    # Asset ids may contain colons; a hex key never does.
    asset_id, colon, key = text.rpartition(":")
    if not colon or not asset_id or not key:
        raise argparse.ArgumentTypeError("expected ID:PUBHEX")
    return asset_id, key


def _client(text: str) -> tuple[str, str | None]:
    client_id, colon, secret = text.partition(":")
    if not client_id or (colon and not secret):
        # Never echo the argument: it holds a secret.
        raise argparse.ArgumentTypeError("expected ID:SECRET, or ID for a public client")
    return client_id, secret if colon else None


def _retry_window(text: str) -> float:
    with contextlib.suppress(ValueError):
        if float(text) == 0:
            return 0.0  # the extension off
    value = positive_float(text)
    if value > ServiceState.MAX_IDEMPOTENCY_WINDOW:
        raise argparse.ArgumentTypeError(
            f"must be at most {ServiceState.MAX_IDEMPOTENCY_WINDOW:g} seconds: {text!r}"
        )
    return value


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the reference service's options to ``parser``.

    Every :class:`ServiceConfig` field a person may want to set has an option
    (``clock`` is for tests only); defaults are the config's own.

    Args:
        parser: The (sub-)parser of the ``serve`` command.
    """
    defaults = ServiceConfig()
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (127.0.0.1)")
    parser.add_argument(
        "--port", type=port_number, default=0, help="TCP port; 0 picks a free one (0)"
    )
    parser.add_argument("--realm", default=defaults.realm, help="service realm (%(default)s)")
    users = parser.add_argument_group("users")
    users.add_argument(
        "--user",
        action="append",
        type=_user,
        default=[],
        metavar="NAME:PASSWORD",
        help="add a user (repeatable; split at the first colon)",
    )
    users.add_argument(
        "--users-file", type=Path, help='JSON file {"name": "password", ...} of users'
    )
    users.add_argument(
        "--frozen-user", action="append", default=[], metavar="NAME", help="freeze an account"
    )
    users.add_argument(
        "--scrypt-n",
        type=power_of_two,
        default=defaults.scrypt_n,
        metavar="N",
        help="scrypt cost for new password hashes, a power of two (%(default)s: about"
        " 128 MiB and 0.7 s of one core per login; both scale with N)",
    )
    users.add_argument(
        "--hash-concurrency",
        type=positive_int,
        default=defaults.hash_concurrency,
        metavar="COUNT",
        help="password checks run at once (default: the number of CPUs)",
    )
    users.add_argument(
        "--hash-queue",
        type=positive_int,
        default=defaults.hash_queue,
        metavar="COUNT",
        help="password checks that may wait for a turn; more get 503 service_busy"
        " (default: four times --hash-concurrency)",
    )

    lifetimes = parser.add_argument_group("lifetimes (seconds)")
    lifetimes.add_argument(
        "--access-ttl",
        type=positive_int,
        default=defaults.access_ttl,
        metavar="SECONDS",
        help="access token lifetime (%(default)s)",
    )
    lifetimes.add_argument(
        "--refresh-ttl",
        type=positive_int,
        default=defaults.refresh_ttl,
        metavar="SECONDS",
        help="refresh token lifetime (%(default)s)",
    )
    lifetimes.add_argument(
        "--one-time-key-ttl",
        type=positive_int,
        default=defaults.one_time_key_ttl,
        metavar="SECONDS",
        help="one-time login key lifetime (%(default)s)",
    )
    lifetimes.add_argument(
        "--challenge-ttl",
        type=positive_int,
        default=defaults.challenge_ttl,
        metavar="SECONDS",
        help="asset challenge lifetime (%(default)s)",
    )
    lifetimes.add_argument(
        "--asset-token-lifetime",
        type=positive_int,
        default=defaults.asset_token_lifetime,
        metavar="SECONDS",
        help="asset access token lifetime (%(default)s)",
    )
    lifetimes.add_argument(
        "--idempotency-window",
        type=_retry_window,
        default=defaults.idempotency_window,
        metavar="SECONDS",
        help="how long after its first success a refresh may be retried with the same"
        " idempotencyKey and get the same answer; at most 30, 0 for none: keys are"
        " ignored, as by a service of contract v1 alone (%(default)s)",
    )

    limits = parser.add_argument_group("limits")
    limits.add_argument(
        "--login-rate-limit",
        type=positive_int,
        default=defaults.login_rate_limit,
        metavar="COUNT",
        help="login attempts per username from one client IP within the window, and"
        " one-time-key requests per username (%(default)s)",
    )
    limits.add_argument(
        "--ip-rate-limit",
        type=positive_int,
        default=defaults.ip_rate_limit,
        metavar="COUNT",
        help="login attempts (a success gives its attempt back), one-time-key requests and"
        " challenge requests per client IP within the window, each counted apart"
        " (default: five times --login-rate-limit)",
    )
    limits.add_argument(
        "--user-rate-limit",
        type=positive_int,
        default=defaults.user_rate_limit,
        metavar="COUNT",
        help="login attempts per username from all clients together, and challenge"
        " requests per asset, within the window (default: ten times --login-rate-limit)",
    )
    limits.add_argument(
        "--login-rate-window",
        type=positive_float,
        default=defaults.login_rate_window,
        metavar="SECONDS",
        help="the rate-limit window (%(default)s)",
    )
    limits.add_argument(
        "--max-body",
        type=positive_int,
        default=defaults.max_body,
        metavar="BYTES",
        help="largest request body accepted; larger ones get 413 (%(default)s)",
    )
    limits.add_argument(
        "--header-timeout",
        type=positive_float,
        default=defaults.header_timeout,
        metavar="SECONDS",
        help="close connections whose request head takes longer (%(default)s)",
    )
    limits.add_argument(
        "--mac-window-past",
        type=positive_float,
        default=defaults.mac_window_past,
        metavar="SECONDS",
        help="how old a MAC header's timestamp may be (%(default)s)",
    )
    limits.add_argument(
        "--mac-window-future",
        type=positive_float,
        default=defaults.mac_window_future,
        metavar="SECONDS",
        help="how far ahead a MAC header's timestamp may be (%(default)s)",
    )

    storage = parser.add_argument_group("state, assets and keys")
    storage.add_argument("--db", help="SQLite file for persistent state (default: memory)")
    storage.add_argument(
        "--key-file",
        metavar="PATH",
        help="the 32-byte service key that seals secrets in the database (default:"
        f" ${KEY_FILE_ENV}, else DB.key next to the database, created on first start)",
    )
    storage.add_argument(
        "--asset",
        action="append",
        type=_asset,
        default=[],
        metavar="ID:PUBHEX",
        help="register an asset and its holder's Ed25519 public key (repeatable)",
    )
    storage.add_argument(
        "--rotate-key",
        action="store_true",
        help="generate a new signing key at start; old ones keep verifying",
    )
    storage.add_argument(
        "--drop-key",
        action="append",
        default=[],
        metavar="KID",
        help="stop trusting a signing key (k4.pid...) (repeatable)",
    )
    storage.add_argument(
        "--client",
        dest="clients",
        action="append",
        type=_client,
        default=[],
        metavar="ID:SECRET",
        help="add an OAuth 2.0 client of /oauth2/token (repeatable; ID alone: a public"
        " client without a secret)",
    )
    storage.add_argument(
        "--redis",
        dest="redis_url",
        metavar="URL",
        help="a Redis server (redis://HOST:PORT/DB) that holds the MAC replay guard and"
        " the rate-limit counts, shared by every service process given the same URL"
        " (default: kept in this process)",
    )


def config_from_args(args: argparse.Namespace) -> ServiceConfig:
    """Build a :class:`ServiceConfig` from parsed ``serve`` options.

    Args:
        args: The namespace :func:`add_serve_arguments`'s options were parsed into.

    Returns:
        The configuration.

    Raises:
        ValueError: The users file is unreadable or not a JSON object of strings.
    """
    users: dict[str, str] = {}
    if args.users_file is not None:
        try:
            loaded = json.loads(Path(args.users_file).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read users file {args.users_file}: {exc}") from None
        if not isinstance(loaded, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in loaded.items()
        ):
            raise ValueError(f"users file {args.users_file} must be a JSON object of strings")
        users.update(loaded)
    users.update(dict(args.user))
    return ServiceConfig(
        realm=args.realm,
        users=users,
        frozen_users=frozenset(args.frozen_user),
        access_ttl=args.access_ttl,
        refresh_ttl=args.refresh_ttl,
        one_time_key_ttl=args.one_time_key_ttl,
        login_rate_limit=args.login_rate_limit,
        login_rate_window=args.login_rate_window,
        ip_rate_limit=args.ip_rate_limit,
        user_rate_limit=args.user_rate_limit,
        hash_concurrency=args.hash_concurrency,
        hash_queue=args.hash_queue,
        header_timeout=args.header_timeout,
        max_body=args.max_body,
        mac_window_past=args.mac_window_past,
        mac_window_future=args.mac_window_future,
        challenge_ttl=args.challenge_ttl,
        asset_token_lifetime=args.asset_token_lifetime,
        db=args.db,
        key_file=args.key_file or os.environ.get(KEY_FILE_ENV) or None,
        idempotency_window=args.idempotency_window,
        assets=dict(args.asset),
        rotate_key=args.rotate_key,
        drop_keys=tuple(args.drop_key),
        scrypt_n=args.scrypt_n,
        redis_url=args.redis_url or None,
        clients=dict(args.clients),
    )


def _start_failure(exc: Exception, config: ServiceConfig, host: str, port: int) -> str:
    """Say in one line why the service could not start."""
    if isinstance(exc, sqlite3.Error):
        detail = str(exc)
        if config.db and config.db in detail:
            return f"service database: {detail}"  # SQLite's message names the file
        return f"cannot open the service database {config.db}: {detail}"
    if isinstance(exc, OSError | OverflowError):
        if isinstance(exc, socket.gaierror):
            reason = exc.strerror or str(exc)
        elif isinstance(exc, OSError) and exc.errno:
            # asyncio wraps bind errors as "error while attempting to bind on address
            # (...): ..."; the system's own wording says the same in a few words.
            reason = os.strerror(exc.errno)
        else:
            reason = str(exc)
        return f"cannot listen on {host}:{port}: {reason}"
    return f"cannot start the service: {exc}"


async def serve_forever(
    config: ServiceConfig,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    on_ready: Callable[[str], object] | None = None,
) -> None:
    """Run the service until SIGINT or SIGTERM; print ``listening on http://HOST:PORT``.

    The first SIGINT or SIGTERM (also one that arrives while the service starts)
    shuts it down gracefully and this returns: it stops accepting connections,
    lets requests in flight finish for up to 5 seconds (then cancels them),
    writes what is queued to the database and closes it. A second signal during
    that cancels the rest at once. Cancelling the caller stops the service too.

    Args:
        config: The service configuration.
        host: The interface to bind.
        port: The TCP port; 0 picks a free one (the printed line has the real one).
        on_ready: Called with the base URL once the service listens.

    Raises:
        StartError: The service could not start: the address cannot be bound, the
            database cannot be opened, or the configuration is refused (an asset key
            that is not Ed25519, for example).
    """
    started = False
    stop = anyio.Event()
    failure: Exception | None = None
    async with anyio.create_task_group() as tg:
        # Taken before the service starts: a signal during start-up (hashing the
        # configured passwords takes a while) ends it as soon as it is up.
        await tg.start(_until_signals, stop, tg.cancel_scope)
        try:
            async with running_service(config, host, port) as svc:
                started = True
                print(f"listening on {svc.url}", file=sys.stdout, flush=True)
                if on_ready is not None:
                    on_ready(svc.url)
                await stop.wait()
        except Exception as exc:
            failure = exc  # raised below, bare rather than in the task group's group
        tg.cancel_scope.cancel()  # the signal watcher
    if failure is None:
        return
    # Only start-up failures are the user's to fix; one while serving is a bug
    # whose traceback is worth more than a summary.
    if started or not isinstance(failure, OSError | OverflowError | ValueError | sqlite3.Error):
        raise failure
    raise StartError(_start_failure(failure, config, host, port)) from failure


async def _until_signals(
    stop: anyio.Event,
    scope: anyio.CancelScope,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Set ``stop`` on the first SIGINT or SIGTERM; cancel ``scope`` on the second."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for _ in signals:
            if stop.is_set():
                scope.cancel()  # asked twice: stop waiting for requests in flight
                return
            stop.set()

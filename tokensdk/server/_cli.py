"""Command-line plumbing for ``python -m tokensdk serve``: options, config, serving.

The top-level CLI owns the parser; it calls :func:`add_serve_arguments` on its
``serve`` sub-parser, :func:`config_from_args` on the parsed namespace and runs
:func:`serve_forever`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import anyio

from tokensdk._argtypes import positive_int
from tokensdk.server._app import running_service
from tokensdk.server._config import ServiceConfig

__all__ = ["add_serve_arguments", "config_from_args", "serve_forever"]


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


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the reference service's options to ``parser``.

    Args:
        parser: The (sub-)parser of the ``serve`` command.
    """
    defaults = ServiceConfig()
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one")
    parser.add_argument("--realm", default=defaults.realm, help="service realm")
    parser.add_argument(
        "--user",
        action="append",
        type=_user,
        default=[],
        metavar="NAME:PASSWORD",
        help="add a user (repeatable; split at the first colon)",
    )
    parser.add_argument(
        "--users-file", type=Path, help='JSON file {"name": "password", ...} of users'
    )
    parser.add_argument(
        "--frozen-user", action="append", default=[], metavar="NAME", help="freeze an account"
    )
    parser.add_argument(
        "--access-ttl", type=positive_int, default=defaults.access_ttl, help="seconds"
    )
    parser.add_argument(
        "--refresh-ttl", type=positive_int, default=defaults.refresh_ttl, help="seconds"
    )
    parser.add_argument("--db", help="SQLite file for persistent state (default: memory)")
    parser.add_argument(
        "--asset",
        action="append",
        type=_asset,
        default=[],
        metavar="ID:PUBHEX",
        help="register an asset and its holder's Ed25519 public key (repeatable)",
    )
    parser.add_argument(
        "--rotate-key",
        action="store_true",
        help="generate a new signing key at start; old ones keep verifying",
    )
    parser.add_argument(
        "--drop-key",
        action="append",
        default=[],
        metavar="KID",
        help="stop trusting a signing key (k4.pid...) (repeatable)",
    )
    parser.add_argument(
        "--scrypt-n",
        type=positive_int,
        default=defaults.scrypt_n,
        help="scrypt cost for password hashes (a power of two)",
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
        db=args.db,
        assets=dict(args.asset),
        rotate_key=args.rotate_key,
        drop_keys=tuple(args.drop_key),
        scrypt_n=args.scrypt_n,
    )


async def serve_forever(
    config: ServiceConfig,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    on_ready: Callable[[str], object] | None = None,
) -> None:
    """Run the service until cancelled; print ``listening on http://HOST:PORT`` once bound.

    Args:
        config: The service configuration.
        host: The interface to bind.
        port: The TCP port; 0 picks a free one (the printed line has the real one).
        on_ready: Called with the base URL once the service listens.
    """
    async with running_service(config, host, port) as svc:
        print(f"listening on {svc.url}", file=sys.stdout, flush=True)
        if on_ready is not None:
            on_ready(svc.url)
        await anyio.sleep_forever()

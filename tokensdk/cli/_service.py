"""``tokensdk serve`` and ``tokensdk keys``: the reference service and its database."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tokensdk.cli._running import CommandError

__all__ = ["add_keys", "add_serve"]

_KEY_FILE_HELP = (
    "the service key file that seals the database's secrets"
    " (default: $TOKENSDK_SERVICE_KEY_FILE, else DB.key)"
)


def add_serve(add_parser: Callable[..., argparse.ArgumentParser]) -> None:
    """Add the ``serve`` command (its options are the service's own).

    Args:
        add_parser: The ``add_parser`` of the top-level parser's sub-parsers.
    """
    from tokensdk.server._cli import add_serve_arguments

    serve = add_parser(
        "serve",
        help="run the reference token service",
        description="Run the reference token service until Ctrl-C or SIGTERM.",
    )
    add_serve_arguments(serve)
    serve.set_defaults(func=_cmd_serve)


def add_keys(add_parser: Callable[..., argparse.ArgumentParser]) -> None:
    """Add the ``keys`` command and its actions ``rotate`` and ``list``.

    Args:
        add_parser: The ``add_parser`` of the top-level parser's sub-parsers.
    """
    keys = add_parser(
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
    rotate.add_argument("--key-file", type=Path, help=_KEY_FILE_HELP)
    rotate.set_defaults(func=_cmd_keys_rotate)
    listing = key_commands.add_parser(
        "list", help="list the keys of a service database", description="List signing keys."
    )
    listing.add_argument("--db", type=Path, required=True, help="the service's SQLite file")
    listing.add_argument("--key-file", type=Path, help=_KEY_FILE_HELP)
    listing.set_defaults(func=_cmd_keys_list)


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


def _open_state_db(path: Path, key_file: Path | None) -> Any:
    from tokensdk.server._cli import KEY_FILE_ENV
    from tokensdk.server._db import SqlitePersistence
    from tokensdk.server._state import ServiceState
    from tokensdk.server._vault import ServiceKeyError, Vault

    if not path.is_file():
        raise CommandError(f"no service database at {path}")
    key_path = str(key_file or os.environ.get(KEY_FILE_ENV) or f"{path}.key")
    db = None
    try:
        db = SqlitePersistence(str(path))
        return ServiceState(db=db, vault=Vault.from_file(key_path))
    except ServiceKeyError as exc:  # one line naming the key file, never the key
        if db is not None:
            db.close()
        raise CommandError(str(exc)) from None
    except Exception as exc:  # sqlite3.Error, a record this version cannot read
        if db is not None:
            db.close()
        raise CommandError(f"cannot open service database {path}: {type(exc).__name__}") from None


def _cmd_keys_rotate(args: argparse.Namespace) -> int:
    import time

    state = _open_state_db(args.db, args.key_file)
    try:
        kid = state.rotate_signing_key(time.time())
    finally:
        state.db.close()
    print(f"new signing key {kid}")
    return 0


def _cmd_keys_list(args: argparse.Namespace) -> int:
    state = _open_state_db(args.db, args.key_file)
    try:
        entries = state.public_keys()
    finally:
        state.db.close()
    for number, entry in enumerate(entries, 1):
        role = "signs" if number == len(entries) else "verifies"
        print(f"{entry['kid']}  {role}  {entry['paserk']}")
    return 0

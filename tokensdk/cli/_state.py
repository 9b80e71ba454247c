"""``tokensdk tokens`` and ``tokensdk header``: commands that read a state file.

They only look: the file is read with :func:`tokensdk.stores.read_state_file`, so a
corrupt one is reported and left where it is (a session's store would move it aside).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tokensdk._errors import printable
from tokensdk.cli._running import CommandError, run, session_for_a_person

if TYPE_CHECKING:
    from tokensdk import SessionSnapshot

__all__ = ["add_header", "add_tokens", "load_state"]


def add_tokens(add_parser: Callable[..., argparse.ArgumentParser]) -> None:
    """Add the ``tokens`` command.

    Args:
        add_parser: The ``add_parser`` of the top-level parser's sub-parsers.
    """
    tokens = add_parser(
        "tokens",
        help="list what a state file holds",
        description="List the tokens a state file holds; secrets are redacted.",
    )
    tokens.add_argument("--state", type=Path, required=True, help="the state file")
    tokens.set_defaults(func=_cmd_tokens)


def add_header(add_parser: Callable[..., argparse.ArgumentParser]) -> None:
    """Add the ``header`` command.

    Args:
        add_parser: The ``add_parser`` of the top-level parser's sub-parsers.
    """
    header = add_parser(
        "header",
        help="print a MAC header for a stored MAC token",
        description="Print an X-PowerAuth-Token header for a named MAC token of a state file.",
    )
    header.add_argument("name", help="the MAC token's name")
    header.add_argument("--state", type=Path, required=True, help="the state file")
    header.add_argument("--url", help="correct the timestamp by the service's clock")
    header.set_defaults(func=_cmd_header)


def load_state(path: Path) -> SessionSnapshot:
    """Read and decode a state file, changing nothing (a corrupt one stays where it is).

    Raises:
        CommandError: There is no file, or it cannot be read or decoded.
    """
    import time

    from tokensdk import StoreCorrupt, StoreError
    from tokensdk._models import document_to_snapshot
    from tokensdk.stores import read_state_file

    try:
        document = read_state_file(path)
    except StoreError as exc:  # StoreCorrupt included: its message says "left as it is"
        raise CommandError(str(exc)) from None
    if document is None:
        raise CommandError(f"no state file at {path}")
    try:
        return document_to_snapshot(document, wall=time.time(), monotonic=time.monotonic())
    except StoreCorrupt as exc:
        raise CommandError(f"state file {path} is corrupt ({exc}); left as it is") from None


def _in(seconds: float) -> str:
    return "expired" if seconds <= 0 else f"expires in {seconds:.0f}s"


def _cmd_tokens(args: argparse.Namespace) -> int:
    import time

    snapshot = load_state(args.state)
    now = time.time()
    print(f"status: {snapshot.status.value}")
    creds = snapshot.credentials
    if creds is not None:
        print(f"user: {printable(creds.username)}")  # as the service spelled it
        print(f"  access token   <redacted>  {_in(creds.access_expires_at - now)}")
        if creds.refresh_token is None:
            print("  refresh token  none")
        else:
            at = creds.refresh_expires_at
            print(f"  refresh token  <redacted>  {'-' if at is None else _in(at - now)}")
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


def _cmd_header(args: argparse.Namespace) -> int:
    import time

    from tokensdk.mac import build_header

    snapshot = load_state(args.state)
    mac = snapshot.mac_tokens.get(args.name)
    if mac is None:
        names = ", ".join(sorted(snapshot.mac_tokens)) or "none"
        raise CommandError(f"no MAC token named {args.name!r} in {args.state} (it has: {names})")
    offset = 0.0
    if args.url is not None:
        offset = run(lambda: _clock_offset(args.url), url=args.url)
    timestamp = int((time.time() + offset) * 1000)
    print(f"X-PowerAuth-Token: {build_header(mac.token_id, mac.secret, timestamp)}")
    return 0


async def _clock_offset(url: str) -> float:
    from tokensdk import MemoryStore

    async with session_for_a_person(url, MemoryStore()) as session:
        return await session.sync_clock()

"""``tokensdk login`` and ``tokensdk logout``: a saved session, made and revoked."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tokensdk._errors import printable
from tokensdk.cli._running import CommandError, explain, run, session_for_a_person
from tokensdk.cli._state import load_state

if TYPE_CHECKING:
    from tokensdk import Session
    from tokensdk._observable import EventStream

__all__ = ["add_login", "add_logout"]


def add_login(add_parser: Callable[..., argparse.ArgumentParser]) -> None:
    """Add the ``login`` command.

    Args:
        add_parser: The ``add_parser`` of the top-level parser's sub-parsers.
    """
    login = add_parser(
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


def add_logout(add_parser: Callable[..., argparse.ArgumentParser]) -> None:
    """Add the ``logout`` command.

    Args:
        add_parser: The ``add_parser`` of the top-level parser's sub-parsers.
    """
    logout = add_parser(
        "logout",
        help="revoke the saved session",
        description="Revoke the saved session on the service and forget it locally.",
    )
    logout.add_argument("--url", required=True, help="the token service")
    logout.add_argument("--state", type=Path, required=True, help="the state file")
    logout.set_defaults(func=_cmd_logout)


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
    from tokensdk import FileStore

    return session_for_a_person(url, FileStore(state))


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

    async def body() -> str:
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
            return printable(str(session.username))  # the service's spelling

    user = run(body, url=args.url)
    print(f"logged in as {user}; session saved to {args.state}")
    return 0


def _cmd_logout(args: argparse.Namespace) -> int:
    from tokensdk import SessionStatus, TokenSDKError

    # Read-only first: a corrupt file is reported and left alone (opening a session
    # would move it aside), and a file with nothing to revoke needs no service.
    if load_state(args.state).status is not SessionStatus.ACTIVE:
        raise CommandError(f"{args.state} holds no active session")

    async def body() -> str:
        async with _session(args.url, args.state) as session:
            if session.status is not SessionStatus.ACTIVE:
                # Its refresh token expired while on disk.
                raise CommandError(f"{args.state} holds no active session")
            user = printable(str(session.username))  # the service's spelling
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
                    f"{explain(exc, args.url)} (nothing was revoked; the session is kept in"
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
            return user

    # Errors are raised inside body(): the library's warnings about them are then dropped.
    print(f"logged out {run(body, url=args.url)}")
    return 0

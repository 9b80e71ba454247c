"""Running a command body: library failures become one line, held log warnings.

Every command fails with :class:`CommandError` (its message is the one line shown);
:func:`run` runs an async body and says in one line what a library error means for
the person at the terminal.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tokensdk import Session, StateStore, TokenSDKError

__all__ = ["CommandError", "explain", "run", "session_for_a_person"]

TIMEOUT = 5.0


class CommandError(Exception):
    """A command failed in a way the user can fix; the message is the one line shown."""


def session_for_a_person(url: str, store: StateStore) -> Session:
    """A session for a command someone is waiting on: it fails fast instead of retrying."""
    from tokensdk import RetryConfig, Session

    return Session(url, store=store, timeout=TIMEOUT, retry=RetryConfig(max_attempts=2))


class _HeldLog(logging.Handler):
    """Keeps the library's log warnings while a command runs (see :func:`run`)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def explain(exc: TokenSDKError, url: str | None) -> str:
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


def run(function: Callable[[], Any], *, url: str | None = None) -> Any:
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
        raise CommandError(explain(exc, url)) from None
    finally:
        logger.removeHandler(held)
    for record in held.records:
        print(record.getMessage(), file=sys.stderr)
    return result

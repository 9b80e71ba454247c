"""Small pieces of fleet coordination (a shared store: FileStore, RedisStore).

The Session runs the coordinated refresh (lock, reload, adopt or refresh, save);
this module holds what that needs and does not touch the session's state: the
retry limits, the borrowed lock, the conflict signal, the saver's shared writer
and the comparison of two states.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from tokensdk._models import SessionSnapshot
from tokensdk.stores import StateStore

__all__ = [
    "BORROWED",
    "CONFLICT_RETRIES",
    "LOCK_RECHECK",
    "WATCH_BACKOFF",
    "WATCH_BACKOFF_MAX",
    "Borrowed",
    "Conflict",
    "SharedWriter",
    "same_activation",
]

#: Times a refresh or a write re-reads the shared state after losing a race.
CONFLICT_RETRIES = 8
#: Seconds between two looks at a refresh lock a sibling holds (its result usually
#: arrives first, as a change).
LOCK_RECHECK = 0.25
#: First and longest pause before watching the shared state again after an outage.
WATCH_BACKOFF = 0.1
WATCH_BACKOFF_MAX = 1.0


class Borrowed:
    """The lock this member already holds, used by a second piece of its work."""

    async def release(self) -> None:
        """The owner releases it."""


BORROWED = Borrowed()


class Conflict(Exception):
    """A sibling wrote the shared state while this member was about to refresh."""


class SharedWriter:
    """The saver's store in fleet mode: writes the session's state compare-and-set.

    The saver hands it a snapshot; it writes the session's current state instead
    (never an older one than a state adopted meanwhile) through the coordinator.

    Args:
        store: The shared store (for the repr).
        write: Writes the session's current state.
    """

    def __init__(self, store: StateStore, write: Callable[[], Awaitable[None]]) -> None:
        self._store = store
        self._write = write

    def __repr__(self) -> str:
        return f"_SharedWriter({self._store!r})"

    async def load(self) -> dict[str, Any] | None:
        return None  # never called: the session loads through its coordinator

    async def save(self, document: Any) -> None:
        await self._write()

    async def clear(self) -> None:
        await self._write()


def same_activation(theirs: SessionSnapshot, ours: SessionSnapshot) -> bool:
    """Whether two states hold the same pair with the same status (only extras differ)."""
    if theirs.status is not ours.status:
        return False
    a, b = theirs.credentials, ours.credentials
    return (a is None and b is None) or (
        a is not None and b is not None and a.access_token == b.access_token
    )

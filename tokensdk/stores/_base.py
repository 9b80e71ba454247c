"""The extension point every state persistence backend implements."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

__all__ = ["StateStore"]


@runtime_checkable
class StateStore(Protocol):
    """Where a session keeps its state between runs.

    A store is dumb and robust: it saves and loads one JSON-able document (a
    ``dict`` the session versions itself) and never interprets it. Saves are
    atomic: a load returns the last complete document saved, never a mix.

    A store that can write without waiting (one in memory) may also define
    ``save_nowait(document) -> None``; the session then saves from a loop callback
    instead of a task switch. A store may define ``async quarantine() -> str | None``
    to move aside (or delete) a document it loaded but the session could not use;
    it returns where the document went.

    A store whose content cannot outlive the process (one in memory) says so with a
    class attribute ``durable = False``; the session then keeps a refresh's
    idempotency key in memory rather than writing it before every refresh, and
    writes the store only when flushed (``session.flush()``) and at close, not
    after every change, unless the store is shared by several members (a store
    without the attribute counts as durable).
    """

    async def load(self) -> dict[str, Any] | None:
        """Read the stored document.

        Returns:
            The document, or None when nothing is stored.

        Raises:
            StoreCorrupt: The stored data could not be decoded (and was moved aside).
            StoreError: The store could not be read.
        """
        ...

    async def save(self, document: Mapping[str, Any]) -> None:
        """Replace the stored document.

        Args:
            document: A JSON-able mapping; it is copied, later changes do not leak in.

        Raises:
            InvalidInput: The document is not JSON-serialisable.
            StoreError: The store could not be written; the previous document stays.
        """
        ...

    async def clear(self) -> None:
        """Remove the stored document (nothing stored is fine).

        Raises:
            StoreError: The store could not be cleared.
        """
        ...

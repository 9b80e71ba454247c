"""MemoryStore: state kept in memory, for tests and short-lived programs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import anyio.lowlevel

from tokensdk.stores._codec import decode_state, encode_state

__all__ = ["MemoryStore"]


class MemoryStore:
    """Keep the state document in memory, as its encoded form.

    Storing the encoded JSON makes every save and load a deep copy, so a caller
    mutating its document afterwards cannot change what is stored, and a
    document that a :class:`FileStore` would refuse is refused here too.

    Args:
        initial: A document to start with, or None for an empty store.

    Raises:
        InvalidInput: ``initial`` is not JSON-serialisable.
    """

    __slots__ = ("_data",)

    durable: ClassVar[bool] = False
    """Nothing stored here outlives the process (see :class:`StateStore`)."""

    def __init__(self, initial: Mapping[str, Any] | None = None) -> None:
        self._data = None if initial is None else encode_state(initial)

    @property
    def document(self) -> dict[str, Any] | None:
        """A copy of the stored document, or None when nothing is stored.

        A session writes it when flushed and at close only (``durable = False``):
        call ``await session.flush()`` first to read the session's current state.
        """
        return None if self._data is None else decode_state(self._data)

    async def load(self) -> dict[str, Any] | None:
        """Return a copy of the stored document, or None when nothing is stored."""
        await anyio.lowlevel.checkpoint()
        return self.document

    async def save(self, document: Mapping[str, Any]) -> None:
        """Store a copy of ``document``.

        Args:
            document: A JSON-able mapping.

        Raises:
            InvalidInput: The document is not JSON-serialisable.
        """
        self.save_nowait(document)

    def save_nowait(self, document: Mapping[str, Any]) -> None:
        """Store a copy of ``document`` without waiting (the session's fast path).

        Args:
            document: A JSON-able mapping.

        Raises:
            InvalidInput: The document is not JSON-serialisable.
        """
        self._data = encode_state(document)

    async def quarantine(self) -> str | None:
        """Forget a document the session could not use (nowhere to move it aside).

        Returns:
            None.
        """
        await self.clear()
        return None

    async def clear(self) -> None:
        """Forget the stored document."""
        await anyio.lowlevel.checkpoint()
        self._data = None

    def __repr__(self) -> str:
        # Never show the document: it holds secrets.
        return f"MemoryStore(empty={self._data is None})"

"""Coalescing persistence: a burst of state changes becomes few store writes.

The session submits its whole state after every change; :class:`CoalescingSaver`
keeps only the newest submission and writes it when the store is free, so at most
one write is in flight and a burst of N changes costs about two writes, not N.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any, Final

import anyio

from tokensdk.stores import StateStore

__all__ = ["CoalescingSaver"]

log = logging.getLogger("tokensdk")


class _Nothing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<nothing pending>"


_NOTHING: Final = _Nothing()


class CoalescingSaver:
    """Saves the latest document to a StateStore; a burst of submits produces few writes.

    :meth:`flush` waits until the last submitted document is on the store. The saver
    keeps a reference to each submitted document until it is written: submit a fresh
    document each time and do not mutate it afterwards. Use it from the event loop's
    thread.

    Args:
        store: Where documents go.
        on_error: Called with the exception when a write fails; the saver carries on
            (the next submit is written as usual).
        encode: Turns a submitted value into the document to save, at write time, so
            a burst of submits costs one encoding per write, not one per submit.
        deferred: Write only when :meth:`flush` is called, never on a submit alone:
            for a store whose content cannot outlive the process (``durable =
            False``), so nothing it holds is ever read after a crash, and its owner
            flushes before anyone else reads it (the session does at close).
    """

    def __init__(
        self,
        store: StateStore,
        *,
        on_error: Callable[[BaseException], None],
        encode: Callable[[Any], Mapping[str, Any]] | None = None,
        deferred: bool = False,
    ) -> None:
        self._store = store
        self._on_error = on_error
        self._encode = encode
        self._deferred = deferred
        # The newest submission not yet handed to the store: a document, None (clear)
        # or _NOTHING, with its submission number.
        self._pending: Any = _NOTHING
        self._pending_seq = 0
        self._submitted = 0  # number of the latest submission
        self._done = 0  # every submission up to this number is written (or failed)
        # Cleared and set again, never re-created: a save follows every state change.
        # asyncio's, for speed: an anyio.Event cannot be cleared (see StateHub).
        self._wakeup = asyncio.Event()
        # A store that writes without waiting (MemoryStore) is written from a loop
        # callback (asyncio's call_soon: anyio has none): one per burst, and no task
        # switch.
        self._save_nowait: Callable[[Mapping[str, Any]], None] | None = getattr(
            store, "save_nowait", None
        )
        self._soon = False
        # At most one write in flight; an uncontended acquire does not yield.
        self._write_lock = anyio.Lock(fast_acquire=True)
        self.writes = 0
        """How many store writes (save or clear calls) were performed, failed ones included."""

    def __repr__(self) -> str:
        return (
            f"CoalescingSaver({self._store!r}, submitted={self._submitted}, "
            f"done={self._done}, writes={self.writes})"
        )

    @property
    def idle(self) -> bool:
        """True when everything submitted so far has been written (or has failed)."""
        return self._done >= self._submitted

    def submit(self, document: Any) -> None:
        """Schedule ``document`` to be saved, replacing any pending one; never blocks.

        Args:
            document: The whole state to save, or None to clear the store.
        """
        self._submitted += 1
        self._pending = document
        self._pending_seq = self._submitted
        if self._deferred:
            return  # written by the next flush, with whatever is newest then
        if self._save_nowait is None or document is None:
            self._wakeup.set()
        elif not self._soon:
            self._soon = True
            asyncio.get_running_loop().call_soon(self._write_soon)

    def _write_soon(self) -> None:
        self._soon = False
        document, seq = self._pending, self._pending_seq
        if isinstance(document, _Nothing):
            return  # a flush wrote it already
        if self._write_lock.locked() or document is None or self._save_nowait is None:
            self._wakeup.set()  # a write is in flight: the run loop goes next, in order
            return
        self._pending = _NOTHING
        self.writes += 1
        try:
            self._save_nowait(document if self._encode is None else self._encode(document))
        except Exception as exc:
            self._report(exc)
        self._done = max(self._done, seq)

    async def run(self) -> None:
        """Write pending documents until cancelled (the owner's task group runs this).

        Cancelling it never loses a submission: one whose write was interrupted stays
        pending for the next :meth:`flush`.
        """
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            await self._write_pending()

    async def flush(self) -> None:
        """Wait until everything submitted so far is written (or failed, see ``on_error``).

        Works with or without :meth:`run` running: after the loop was cancelled, it
        writes the pending document itself.
        """
        target = self._submitted
        while self._done < target:
            if not await self._write_pending():
                # Nothing was pending and no write is in flight: nothing left to wait
                # for. (Guards against spinning should the bookkeeping ever disagree.)
                break

    async def _write_pending(self) -> bool:
        """Write the pending document, if any; return whether there was one."""
        async with self._write_lock:
            document, seq = self._pending, self._pending_seq
            if isinstance(document, _Nothing):
                return False
            self._pending = _NOTHING
            self.writes += 1
            try:
                if document is None:
                    await self._store.clear()
                else:
                    encoded = document if self._encode is None else self._encode(document)
                    await self._store.save(encoded)
            except Exception as exc:
                self._report(exc)
            except BaseException:
                # Cancelled mid-write: the write may not have happened. Keep the
                # document pending unless a newer one replaced it meanwhile.
                if isinstance(self._pending, _Nothing):
                    self._pending, self._pending_seq = document, seq
                raise
            self._done = max(self._done, seq)
            return True

    def _report(self, error: Exception) -> None:
        try:
            self._on_error(error)
        except Exception:
            # A failing error handler must not stop persistence.
            log.exception("tokensdk: the store error handler failed")

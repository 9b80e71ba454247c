"""The coordination port: how the members sharing one stored state agree on it.

A :class:`StateStore` loads and saves a document. A :class:`Coordinator` adds what
several members (processes, hosts) of one credential need to share it safely:

- versioned loads and a compare-and-set save (``save_if``): a write derived from an
  old version fails instead of overwriting a newer state (fencing by version);
- an exclusive refresh lock with a lease: one refresh per token window fleet-wide,
  and a member killed while holding it blocks the others for one lease at most;
- a watch for versions written elsewhere, so every member adopts them.

:class:`LocalCoordinator` is the default for a plain store (memory, keyring, a
custom one): one process owns the state, the session's single flight is the lock,
nothing is ever written elsewhere. :class:`StoreCoordinator` drives a store that
has the fleet primitives (:class:`~tokensdk.FileStore` for processes on one host,
:class:`~tokensdk.RedisStore` for many hosts). :func:`coordinator_for` picks one by
the store's type, so ``Session(url, store=FileStore(path))`` coordinates with
nothing to configure.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol, runtime_checkable

import anyio

from tokensdk._errors import InvalidInput
from tokensdk.stores import StateStore

__all__ = ["Coordinator", "Lease", "LocalCoordinator", "StoreCoordinator", "coordinator_for"]


@runtime_checkable
class Lease(Protocol):
    """A held refresh lock; the coordinator frees it after its lease at the latest."""

    async def release(self) -> None:
        """Give the lock back (idempotent; a no-op once it lapsed)."""
        ...


@runtime_checkable
class Coordinator(Protocol):
    """How the members sharing one stored state coordinate (see the module text).

    Attributes:
        store: The store the state lives in.
        shared: Whether other members may write the state (False: this process
            owns it, and the session keeps its in-process fast path).
        lease: Seconds a refresh lock lasts when its holder does not release it.
    """

    store: StateStore
    shared: bool
    lease: float

    async def load(self) -> tuple[dict[str, Any] | None, int | None]:
        """Read the document and its version (``(None, None)`` when nothing is stored).

        Raises:
            StoreError: The store could not be read (``StoreUnavailable``: not reached).
        """
        ...

    async def save_if(self, document: Mapping[str, Any], version: int | None) -> int | None:
        """Write ``document`` if the stored version is still ``version`` (None: nothing stored).

        Returns:
            The new version, or None when another member wrote first.
        """
        ...

    async def restore(self, document: Mapping[str, Any], version: int | None) -> int | None:
        """Write back a state this member holds after the store lost it (flushed, deleted).

        Returns:
            The version now stored for it, or None when another member wrote first.
        """
        ...

    async def try_lock(self) -> Lease | None:
        """Take the refresh lock for :attr:`lease` seconds, or None when another holds it."""
        ...

    async def lock_remaining(self) -> float | None:
        """Seconds to wait before trying the lock again, or None when it is free."""
        ...

    def changes(self) -> AbstractAsyncContextManager[AsyncIterator[int]]:
        """Watch versions written by any member (``async with``, then iterate)."""
        ...


class _LocalLease:
    __slots__ = ()

    async def release(self) -> None:
        """Nothing to give back: the session's single flight is the lock."""


_LOCAL_LEASE = _LocalLease()


class LocalCoordinator:
    """The in-process default: one process owns the state of a plain :class:`StateStore`.

    The session's single flight already makes refreshes exclusive and nothing is
    written elsewhere, so the lock is always granted and the watch never fires.
    Versions are not kept (always 0).

    Args:
        store: The store.
    """

    shared = False
    lease = 0.0

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def __repr__(self) -> str:
        return f"LocalCoordinator({self.store!r})"

    async def load(self) -> tuple[dict[str, Any] | None, int | None]:
        """Load the document (version 0)."""
        document = await self.store.load()
        return document, None if document is None else 0

    async def save_if(self, document: Mapping[str, Any], version: int | None) -> int | None:
        """Save unconditionally: nobody else writes."""
        await self.store.save(document)
        return 0

    async def restore(self, document: Mapping[str, Any], version: int | None) -> int | None:
        """Save unconditionally: nobody else writes."""
        return await self.save_if(document, version)

    async def try_lock(self) -> Lease | None:
        """Always granted."""
        return _LOCAL_LEASE

    async def lock_remaining(self) -> float | None:
        """Always free."""
        return None

    @asynccontextmanager
    async def changes(self) -> AsyncIterator[AsyncIterator[int]]:
        """A watch that never fires: nobody else writes."""

        async def never() -> AsyncIterator[int]:
            await anyio.sleep_forever()
            yield 0  # pragma: no cover - unreachable

        yield never()


_PRIMITIVES = ("load_versioned", "save_if", "try_lock", "lock_remaining", "changes")


class StoreCoordinator:
    """Coordinates through a store with fleet primitives (``FileStore``, ``RedisStore``).

    The store provides ``load_versioned``, ``save_if``, ``try_lock(lease)``,
    ``lock_remaining`` and ``changes()``; a store that can write back a state it
    lost at a given version provides ``restore(document, version)`` too (Redis:
    versions stay monotonic after a flush).

    Args:
        store: The shared store.
        lease: Seconds a refresh lock lasts if its holder dies without releasing it
            (Redis; a file lock is freed by the kernel at once). Longer than one
            refresh round trip, short enough to wait out.

    Raises:
        InvalidInput: The store lacks the primitives, or the lease is not positive.
    """

    shared = True

    def __init__(self, store: StateStore, *, lease: float = 10.0) -> None:
        missing = [name for name in _PRIMITIVES if not callable(getattr(store, name, None))]
        if missing:
            raise InvalidInput(f"{type(store).__name__} cannot coordinate: no {missing[0]}()")
        if not lease > 0:
            raise InvalidInput("lease must be a positive number of seconds")
        self.store = store
        self.lease = float(lease)
        self._shared: Any = store  # the primitives, typed loosely: two store types

    def __repr__(self) -> str:
        return f"StoreCoordinator({self.store!r}, lease={self.lease})"

    async def load(self) -> tuple[dict[str, Any] | None, int | None]:
        """Read the document and its version (``(None, None)`` when nothing is stored)."""
        document, version = await self._shared.load_versioned()
        return (None, None) if document is None else (document, int(version))

    async def save_if(self, document: Mapping[str, Any], version: int | None) -> int | None:
        """Compare-and-set (see :class:`Coordinator`)."""
        result = await self._shared.save_if(document, version)
        return None if result is None else int(result)

    async def restore(self, document: Mapping[str, Any], version: int | None) -> int | None:
        """Write back a lost state at its version when the store can, else create it anew."""
        restore = getattr(self._shared, "restore", None)
        if restore is not None and version is not None:
            return version if await restore(document, version) else None
        return await self.save_if(document, None)

    async def try_lock(self) -> Lease | None:
        """Take the refresh lock for :attr:`lease` seconds, or None when another holds it."""
        lease: Lease | None = await self._shared.try_lock(self.lease)
        return lease

    async def lock_remaining(self) -> float | None:
        """Seconds until the other holder's lease lapses (a short poll for a file lock)."""
        remaining = await self._shared.lock_remaining()
        return None if remaining is None else float(remaining)

    def changes(self) -> AbstractAsyncContextManager[AsyncIterator[int]]:
        """The store's own change watch (Redis pub/sub, file stat polling)."""
        watch: AbstractAsyncContextManager[AsyncIterator[int]] = self._shared.changes()
        return watch


def coordinator_for(store: StateStore) -> Coordinator:
    """The coordinator a store's type calls for.

    A store with the fleet primitives (``FileStore``, ``RedisStore``) is shared by
    whoever opens the same path or name: it gets a :class:`StoreCoordinator`. Any
    other store is owned by one process: :class:`LocalCoordinator`.

    Args:
        store: The session's store.
    """
    if all(callable(getattr(store, name, None)) for name in _PRIMITIVES):
        return StoreCoordinator(store)
    return LocalCoordinator(store)

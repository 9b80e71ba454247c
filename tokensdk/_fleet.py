"""Small pieces of fleet coordination (a shared store: FileStore, RedisStore).

The Session runs the coordinated refresh (lock, reload, adopt or refresh, save);
this module holds what that needs and does not touch the session's state: the
retry limits, the borrowed lock, the conflict signal, the saver's shared writer
and the comparison of two states.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio

from tokensdk._clock import Clock
from tokensdk._context import Lifecycle
from tokensdk._coordinator import Coordinator, Lease
from tokensdk._errors import (
    NotLoggedIn,
    SessionClosed,
    SessionLost,
    StoreError,
    StoreUnavailable,
)
from tokensdk._models import (
    Credentials,
    EventType,
    SessionSnapshot,
    SessionStatus,
    document_to_snapshot,
    snapshot_to_document,
)
from tokensdk._observable import StateHub
from tokensdk.stores import StateStore

__all__ = [
    "BORROWED",
    "CONFLICT_RETRIES",
    "LOCK_RECHECK",
    "WATCH_BACKOFF",
    "WATCH_BACKOFF_MAX",
    "Borrowed",
    "Conflict",
    "Fleet",
    "SharedWriter",
    "same_activation",
]

log = logging.getLogger("tokensdk")

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


class Fleet:
    """A fleet member's side of the shared state: lock, reload, adopt, write, watch.

    One refresh per token window fleet-wide: the member holding the refresh lock
    re-reads the shared state first and adopts what a sibling saved; writes are
    compare-and-set on the stored version; changes other members write are adopted
    as if they happened here. With a store owned by this process (``shared`` false)
    only :meth:`exclusive` is used, and it only runs the block.

    Args:
        coord: The coordinator of the session's store.
        shared: Other processes write the same state.
        hub: The session's state hub.
        clock: The session's clock.
        life: The session's lifecycle facts.
        flush: Waits until the session's state is saved.
        timeout: Seconds one HTTP attempt may take (bounds waits for the lock).
        rng: Random source for the watch's backoff.
        has_relogin: The session has a relogin hook.
        install: Makes a pair the session's served pair.
        uninstall: Stops serving a pair.
        refresh_once: One refresh of this member (raises :class:`Conflict`).
        store_failed: Reports a store error the session carries on after.

    Attributes:
        version: The stored version this member's state is.
        saved_rev: The hub revision known to be in the shared store.
        claim: The latest change wins a write conflict (login, loss, a new pair).
    """

    def __init__(
        self,
        *,
        coord: Coordinator,
        shared: bool,
        hub: StateHub,
        clock: Clock,
        life: Lifecycle,
        flush: Callable[[], Awaitable[None]],
        timeout: float,
        rng: random.Random,
        has_relogin: bool,
        install: Callable[[Credentials], None],
        uninstall: Callable[[], None],
        refresh_once: Callable[[], Awaitable[Credentials]],
        store_failed: Callable[[BaseException], None],
    ) -> None:
        self._coord = coord
        self._shared = shared
        self._hub = hub
        self._clock = clock
        self._life = life
        self._flush = flush
        self._timeout = timeout
        self._rng = rng
        self._has_relogin = has_relogin
        self._install = install
        self._uninstall = uninstall
        self._refresh_once = refresh_once
        self._store_failed = store_failed
        self.version: int | None = None
        self.saved_rev = -1
        self.claim = False
        self._shared_lock = anyio.Lock()  # one load or write of the shared state at a time
        self._adopted = anyio.Event()  # set (and replaced) when another's state is adopted
        self._held: Lease | None = None  # the fleet's lock, while this member holds it

    async def refresh(self, wanted: Credentials | None) -> Credentials:
        """One refresh per token window fleet-wide: lock, reload, adopt or refresh, save.

        The member holding the refresh lock re-reads the shared state first: a pair
        a sibling obtained meanwhile is adopted, not refreshed again; a pending
        refresh a dead sibling left is retried with its idempotency key. Writes are
        compare-and-set on the stored version, so a member whose lease lapsed cannot
        overwrite what the next holder saved with something older.
        """
        try:
            lease = await self._lock_or_adopt(wanted)
        except StoreUnavailable:
            raise  # Redis is down: no refresh without the lock (see docs/FLEET.md)
        except StoreError as exc:
            # The shared file cannot be used at all (its directory is gone, a broken
            # disk): no member can coordinate through it. A broken store must not
            # stop the application: carry on as a single session does.
            self._store_failed(exc)
            try:
                return await self._refresh_once()
            except Conflict:
                raise StoreUnavailable("the shared state changed during a refresh") from None
        if lease is None:
            return self._adopted_result()
        # Borrowed: this member holds the lock already (an exclusive block needs a
        # bearer); refresh under it, and leave releasing it to the block.
        own = lease is not BORROWED
        if own:
            self._held = lease
        try:
            for _ in range(CONFLICT_RETRIES):
                await self._reload()
                if self._moved_on(wanted) and not self._relogin_due():
                    return self._adopted_result()
                try:
                    return await self._refresh_once()
                except Conflict:
                    continue
            raise StoreUnavailable("the shared state kept changing during a refresh")
        finally:
            if own:
                await self._release(lease)

    async def _release(self, lease: Lease) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(self._timeout):
            # A loss or a relogin is in the store before the next holder reloads.
            await self._flush()
        with anyio.CancelScope(shield=True):
            self._held = None
            await lease.release()

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Run a block under the fleet's lock with the shared state reloaded (see context)."""
        if not self._shared:
            yield
            return
        snapshot = self._hub.snapshot
        active = snapshot.status is SessionStatus.ACTIVE
        wanted = snapshot.credentials if active else None
        while True:
            lease = await self._lock_or_adopt(wanted)
            if lease is not None:
                break
            wanted = self._hub.snapshot.credentials  # a sibling refreshed: fine here
        # Borrowed from a refresh of this member: it releases the lock when it ends,
        # maybe before this block does (then a sibling may create the same thing).
        own = lease is not BORROWED
        if own:
            self._held = lease
        try:
            await self._reload()
            yield
        finally:
            if own:
                await self._release(lease)

    async def _lock_or_adopt(self, wanted: Credentials | None) -> Lease | None:
        """Take the refresh lock, or None once a sibling's newer state was adopted."""
        clock = self._clock
        now_wall, now_mono = clock.time(), clock.monotonic()
        left = wanted.access_left(now_wall, now_mono) if wanted is not None else 0.0
        give_up = now_mono + max(left, self._timeout) + self._coord.lease
        while True:
            if self._held is not None:
                return BORROWED  # this member holds it (a refresh, an exclusive block)
            adopted = self._adopted
            lease = await self._coord.try_lock()
            if lease is not None:
                return lease
            if self._moved_on(wanted) and not self._relogin_due():
                return None
            remaining = await self._coord.lock_remaining()
            if clock.monotonic() >= give_up:
                raise StoreUnavailable("another member holds the refresh lock too long")
            if remaining is None:
                continue  # released between the two looks
            # The holder's result arrives as a change (adopted by watch); a holder
            # that saved nothing (it failed) or died is found by trying again.
            with anyio.move_on_after(min(remaining, LOCK_RECHECK)):
                await adopted.wait()
            if self._moved_on(wanted) and not self._relogin_due():
                return None

    def _relogin_due(self) -> bool:
        """A sibling lost the session and this member has a relogin hook.

        The hook runs once fleet-wide, under the lock: this member waits for the lock
        (the sibling's own relogin, if it has one, is then adopted) rather than
        giving up while a relogin may be on its way.
        """
        snapshot = self._hub.snapshot
        return snapshot.status is SessionStatus.NEEDS_LOGIN and self._has_relogin

    def _moved_on(self, wanted: Credentials | None) -> bool:
        """Whether the state moved past ``wanted`` (a sibling refreshed, logged in, lost it)."""
        snapshot = self._hub.snapshot
        current = snapshot.credentials if snapshot.status is SessionStatus.ACTIVE else None
        if current is None or wanted is None:
            return current is not wanted
        # Every refresh brings a new access token (the refresh token may stay).
        return current.access_token != wanted.access_token

    def _adopted_result(self) -> Credentials:
        snapshot = self._hub.snapshot
        if snapshot.status is SessionStatus.ACTIVE and snapshot.credentials is not None:
            return snapshot.credentials
        if snapshot.status is SessionStatus.LOGGED_OUT:
            raise NotLoggedIn("logged out (by another member of the fleet)")
        raise SessionLost(self._life.lost_reason)

    async def _reload(self) -> None:
        """Read the shared state; adopt it if it moved, write ours back if it was lost."""
        async with self._shared_lock:
            document, version = await self._coord.load()
            snapshot = self._hub.snapshot
            if document is None:
                if (
                    snapshot.credentials is not None
                    or snapshot.status is not SessionStatus.LOGGED_OUT
                ):
                    # Redis was flushed or restarted, or the file removed, while this
                    # member held the state: write it back rather than lose the session.
                    restored = await self._coord.restore(
                        snapshot_to_document(snapshot), self.version
                    )
                    if restored is not None:
                        log.warning("tokensdk: the shared store lost the state; written back")
                        self.version, self.saved_rev = restored, snapshot.revision
                return
            if version != self.version:
                self._adopt(document, version)
            elif snapshot.revision > self.saved_rev:
                await self._write_locked()

    async def write(self) -> None:
        """Write the current state to the shared store (compare-and-set on the version)."""
        async with self._shared_lock:
            await self._write_locked()

    async def _write_locked(self) -> None:
        for _ in range(CONFLICT_RETRIES):
            snapshot = self._hub.snapshot
            if snapshot.revision <= self.saved_rev:
                return  # already there (or adopted from there)
            document = snapshot_to_document(snapshot)
            written = await self._coord.save_if(document, self.version)
            if written is not None:
                self.version, self.saved_rev, self.claim = written, snapshot.revision, False
                return
            # Somebody wrote first. Ours still wins when it is a login, a loss, a
            # logout or a new pair (the claim), or when theirs left the pair and status
            # as ours has them (a MAC token, an asset token): else theirs is newer.
            stored, version = await self._coord.load()
            if stored is None:
                written = await self._coord.restore(document, self.version)
                if written is not None:
                    self.version, self.saved_rev = written, snapshot.revision
                    self.claim = False
                    return
                continue
            theirs = self._decode_shared(stored)
            if self.claim or same_activation(theirs, snapshot):
                self.version = version
                continue
            self._adopt(stored, version, theirs)
            return
        raise StoreUnavailable("the shared state kept changing under this member's writes")

    def _decode_shared(self, document: Mapping[str, Any]) -> SessionSnapshot:
        return document_to_snapshot(
            document, wall=self._clock.time(), monotonic=self._clock.monotonic()
        )

    def _adopt(
        self,
        document: Mapping[str, Any],
        version: int | None,
        theirs: SessionSnapshot | None = None,
    ) -> None:
        """Make a state another member wrote this member's state, as if it happened here.

        Commits it into the hub (change callbacks and events fire here too) without
        writing it back, installs an adopted pair and wakes members waiting for it.
        """
        theirs = theirs or self._decode_shared(document)
        self.version = version
        ours = self._hub.snapshot
        new, old = theirs.credentials, ours.credentials
        same_pair = (new is None) == (old is None) and (
            new is None or old is None or new.access_token == old.access_token
        )
        if (
            same_pair
            and theirs.status is ours.status
            and theirs.pending_refresh == ours.pending_refresh
            and theirs.access_tokens == ours.access_tokens
            and dict(theirs.mac_tokens) == dict(ours.mac_tokens)
        ):
            self.saved_rev = ours.revision
            return
        events = []
        if theirs.status is not ours.status or theirs.username != ours.username:
            self._life.generation += 1  # another activation: work on the old one is stale
            if theirs.status is SessionStatus.ACTIVE and new is not None:
                events.append(self._hub.event(EventType.LOGGED_IN, new.username))
            elif theirs.status is SessionStatus.LOGGED_OUT:
                self._life.lost_reason = "logged_out"
                events.append(self._hub.event(EventType.LOGGED_OUT, ours.username))
            else:
                self._life.lost_reason = "stored_session_lost"
                events.append(self._hub.event(EventType.SESSION_LOST, "stored_session_lost"))
        elif not same_pair and new is not None:
            events.append(self._hub.event(EventType.REFRESHED, new.username))
        if theirs.status is ours.status and theirs.username == ours.username:
            for name in theirs.mac_tokens.keys() - ours.mac_tokens.keys():
                events.append(self._hub.event(EventType.MAC_TOKEN_ADDED, name))
            for name in ours.mac_tokens.keys() - theirs.mac_tokens.keys():
                events.append(self._hub.event(EventType.MAC_TOKEN_REMOVED, name))
        # Asset tokens do not depend on the login: a sibling's change is announced here too.
        mine = {t.asset_id: t.token for t in ours.access_tokens}
        for item in theirs.access_tokens:
            if item.asset_id not in mine:
                events.append(self._hub.event(EventType.ACCESS_TOKEN_ADDED, item.asset_id))
            elif mine[item.asset_id] != item.token:
                events.append(self._hub.event(EventType.ACCESS_TOKEN_REPLACED, item.asset_id))
        for asset_id in mine.keys() - {t.asset_id for t in theirs.access_tokens}:
            events.append(self._hub.event(EventType.ACCESS_TOKEN_REMOVED, asset_id))
        self._hub.commit(
            *events,
            status=theirs.status,
            credentials=new,
            access_tokens=theirs.access_tokens,
            mac_tokens=theirs.mac_tokens,
            pending_refresh=theirs.pending_refresh,
            revision=max(theirs.revision, ours.revision + 1),
        )
        self.saved_rev = self._hub.snapshot.revision
        if theirs.status is SessionStatus.ACTIVE and new is not None:
            if not same_pair or ours.status is not SessionStatus.ACTIVE:
                self._install(new)
        else:
            self._uninstall()
        adopted, self._adopted = self._adopted, anyio.Event()
        adopted.set()

    async def watch(self) -> None:
        """Adopt every state another member writes; resynchronise after an outage."""
        failures = 0
        while True:
            try:
                async with self._coord.changes() as versions:
                    if failures:
                        await self._reload()  # messages were missed; the store may be empty
                        failures = 0
                    async for version in versions:
                        if version != self.version:
                            await self._reload()
            except SessionClosed:
                return
            except StoreError as exc:
                failures += 1
                delay = min(WATCH_BACKOFF * 2 ** (failures - 1), WATCH_BACKOFF_MAX)
                delay *= 0.5 + self._rng.random() / 2
                log.info("tokensdk: watching the shared state failed: %s", type(exc).__name__)
                await anyio.sleep(delay)

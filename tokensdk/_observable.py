"""The session's single source of truth and its ordered change dispatch.

Every change to a session (credentials, the asset token array, the MAC tokens, the
status) is one :meth:`StateHub.commit` of a new immutable snapshot. Commits are
synchronous and cheap; delivery is not done by the committer:

- change callbacks run one at a time, in commit order, in the hub's own task; a
  callback that is slow makes later ones receive a newer snapshot (coalescing),
  never an older one, and the final snapshot is always delivered;
- events go to every subscriber's bounded buffer; a subscriber that does not keep
  up loses events (counted and logged), never blocks the session.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio

from tokensdk._clock import Clock
from tokensdk._errors import SessionClosed, printable
from tokensdk._models import Event, EventType, SessionSnapshot

__all__ = ["ChangeCallback", "EventStream", "StateHub"]

log = logging.getLogger("tokensdk")

ChangeCallback = Callable[[SessionSnapshot], Awaitable[None] | None]


class EventStream:
    """An async iterator over a session's events; ends when the session closes.

    Use ``async for event in session.events(): ...``; :meth:`aclose` unsubscribes.
    Events already buffered when the session closes are still delivered.

    Attributes:
        dropped: Events lost because the buffer was full.
    """

    def __init__(self, hub: StateHub, buffer: int) -> None:
        self._hub = hub
        self._buffer: deque[Event] = deque()
        self._limit = buffer
        self._ready: anyio.Event | None = None
        self._ended = False
        self.dropped = 0

    def _push(self, event: Event) -> None:
        if len(self._buffer) >= self._limit:
            self.dropped += 1
            log.warning("tokensdk: an event subscriber is too slow; dropped %s", event.type)
            return
        self._buffer.append(event)
        if self._ready is not None:
            self._ready.set()

    def _end(self) -> None:
        self._ended = True
        if self._ready is not None:
            self._ready.set()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        while not self._buffer:
            if self._ended:
                raise StopAsyncIteration
            self._ready = anyio.Event()
            await self._ready.wait()
        return self._buffer.popleft()

    async def aclose(self) -> None:
        """Stop receiving events."""
        self._hub._unsubscribe(self)
        self._end()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class StateHub:
    """Holds the current snapshot and tells everyone who listens when it changes.

    Args:
        clock: Stamps events with wall time.
        snapshot: The initial state.
    """

    def __init__(self, clock: Clock, snapshot: SessionSnapshot | None = None) -> None:
        self._clock = clock
        self._snapshot = snapshot or SessionSnapshot()
        self._callbacks: list[ChangeCallback] = []
        self._listeners: list[Callable[[SessionSnapshot], None]] = []
        self._subscribers: list[EventStream] = []
        self._delivered = -1
        # asyncio events, for speed (the SDK's other primitives are anyio's): anyio's
        # cannot be cleared, and a new anyio.Event per commit costs ~2.4 us against
        # ~0.2 us to set and clear one of these. anyio's cancel scopes cancel a wait
        # on them like any other; aiohttp ties tokensdk to asyncio anyway.
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        self._frozen = False

    @property
    def snapshot(self) -> SessionSnapshot:
        """The current state."""
        return self._snapshot

    def add_callback(self, callback: ChangeCallback) -> None:
        """Register a change callback (sync or async); it receives snapshots."""
        self._callbacks.append(callback)

    def add_listener(self, listener: Callable[[SessionSnapshot], None]) -> None:
        """Register an internal synchronous listener called inside every commit."""
        self._listeners.append(listener)

    def commit(self, *events: Event, **changes: Any) -> SessionSnapshot:
        """Replace the snapshot with one carrying ``changes``; announce it and ``events``.

        Raises:
            SessionClosed: The session is closing; its final state is already fixed.
        """
        if self._frozen:
            raise SessionClosed("the session was closed")
        # ``revision`` among the changes is taken as is: a state loaded from a store
        # keeps its number (loading it changes nothing). Otherwise one more.
        old = self._snapshot
        revision = changes.pop("revision", None)
        if revision is None:
            revision = old.revision + 1
        # Built field by field: attrs.evolve introspects the class on every call and
        # costs twice as much, once per refresh (benchmark row 3).
        snapshot = SessionSnapshot(
            status=changes.pop("status", old.status),
            credentials=changes.pop("credentials", old.credentials),
            access_tokens=changes.pop("access_tokens", old.access_tokens),
            mac_tokens=changes.pop("mac_tokens", old.mac_tokens),
            revision=revision,
            pending_refresh=changes.pop("pending_refresh", old.pending_refresh),
        )
        if changes:
            raise TypeError(f"not a snapshot field: {', '.join(changes)}")
        self._snapshot = snapshot
        for listener in self._listeners:
            listener(snapshot)
        for event in events:
            self.emit(event)
        if self._callbacks:
            self._idle.clear()
            self._wake.set()
        return snapshot

    @property
    def observed(self) -> bool:
        """Whether an event would reach anyone (a subscriber, or the debug log).

        A committer may skip building an event nobody receives.
        """
        return bool(self._subscribers) or log.isEnabledFor(logging.DEBUG)

    def event(
        self, type: EventType, detail: str | None = None, error: BaseException | None = None
    ) -> Event:
        """Build an event stamped with the current wall time."""
        return Event(type=type, at=self._clock.time(), detail=detail, error=error)

    def emit(self, event: Event) -> None:
        """Hand ``event`` to every subscriber without waiting."""
        if log.isEnabledFor(logging.DEBUG):
            # A detail (a username from a login answer) may come from the service.
            detail = printable(str(event.detail))
            if event.error is not None:
                error = printable(str(event.error), 1000)
                log.debug("tokensdk: %s (%s): %s", event.type.value, detail, error)
            else:
                log.debug("tokensdk: %s (%s)", event.type.value, detail)
        for stream in self._subscribers:
            stream._push(event)

    def subscribe(self, buffer: int = 1024) -> EventStream:
        """Subscribe to events from now on.

        Args:
            buffer: How many undelivered events to hold before dropping new ones.
        """
        stream = EventStream(self, buffer)
        if self._closed:
            stream._end()
        else:
            self._subscribers.append(stream)
        return stream

    def _unsubscribe(self, stream: EventStream) -> None:
        if stream in self._subscribers:
            self._subscribers.remove(stream)

    async def run(self) -> None:
        """Deliver snapshots to the change callbacks, in order, one at a time."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._deliver()

    async def _deliver(self) -> None:
        while self._delivered < self._snapshot.revision:
            snapshot = self._snapshot
            self._delivered = snapshot.revision
            for callback in list(self._callbacks):
                try:
                    result = callback(snapshot)
                    if inspect.isawaitable(result):
                        await result
                except Exception as exc:
                    log.warning("tokensdk: a change callback failed: %s", type(exc).__name__)
                    self.emit(self.event(EventType.CALLBACK_FAILED, _name(callback), exc))
        self._idle.set()

    async def drain(self, limit: float = 5.0) -> None:
        """Deliver the final snapshot if it was not yet (used at close), for ``limit`` s at most."""
        with anyio.move_on_after(limit, shield=True):
            await self._deliver()

    async def wait_delivered(self) -> None:
        """Wait until every committed snapshot reached the callbacks."""
        await self._idle.wait()

    def freeze(self) -> None:
        """Refuse further commits: the state being saved at close is the final one."""
        self._frozen = True

    def close(self) -> None:
        """End every event stream."""
        self._closed = True
        for stream in self._subscribers:
            stream._end()
        self._subscribers.clear()


def _name(callback: object) -> str:
    return getattr(callback, "__qualname__", None) or type(callback).__name__

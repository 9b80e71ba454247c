"""One clock abstraction: wall time, a monotonic time, and sleeping until a monotonic deadline.

Everything in tokensdk that reads time takes a :class:`Clock`, so tests move time
with :class:`ManualClock` instead of sleeping.
"""

from __future__ import annotations

import heapq
import itertools
import time
from typing import Protocol, runtime_checkable

import anyio

__all__ = ["Clock", "ManualClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """Where tokensdk reads time from."""

    def time(self) -> float:
        """Return wall-clock time in Unix seconds (may jump)."""
        ...

    def monotonic(self) -> float:
        """Return a monotonic time in seconds (never goes backwards)."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Sleep until ``monotonic() >= deadline``."""
        ...


def _boottime() -> float:
    # CLOCK_BOOTTIME keeps counting while the machine is suspended, so a token's
    # monotonic deadline stays honest across a laptop's sleep; CLOCK_MONOTONIC would not.
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class SystemClock:
    """The real clock: ``time.time`` and a suspend-aware monotonic clock."""

    __slots__ = ("monotonic",)

    def __init__(self) -> None:
        self.monotonic = _boottime if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic

    def time(self) -> float:
        """Return wall-clock time in Unix seconds."""
        return time.time()

    async def sleep_until(self, deadline: float) -> None:
        """Sleep until the monotonic clock reaches ``deadline``."""
        # The event loop sleeps on CLOCK_MONOTONIC, which stops during suspend; loop
        # until our own clock agrees so a wake-up is never early.
        while (left := deadline - self.monotonic()) > 0:  # noqa: ASYNC110
            await anyio.sleep(left)

    def __repr__(self) -> str:
        return "SystemClock()"


class ManualClock:
    """A clock for tests: time stands still until :meth:`advance` moves it.

    Args:
        wall: The initial wall time (Unix seconds).
        monotonic: The initial monotonic time.
    """

    def __init__(self, wall: float = 1_700_000_000.0, monotonic: float = 1000.0) -> None:
        self._wall = wall
        self._mono = monotonic
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._seq = itertools.count()
        self._new_sleeper: anyio.Event | None = None

    def time(self) -> float:
        """Return the current fake wall time."""
        return self._wall

    def monotonic(self) -> float:
        """Return the current fake monotonic time."""
        return self._mono

    async def sleep_until(self, deadline: float) -> None:
        """Block until :meth:`advance` moves the clock to ``deadline`` or past it."""
        if deadline <= self._mono:
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        entry = (deadline, next(self._seq), event)
        heapq.heappush(self._sleepers, entry)
        if self._new_sleeper is not None:
            self._new_sleeper.set()
        try:
            await event.wait()
        finally:
            if not event.is_set():  # cancelled: forget it, so next_deadline stays true
                self._sleepers.remove(entry)
                heapq.heapify(self._sleepers)

    def advance(self, seconds: float) -> None:
        """Move both clocks forward and wake every sleeper whose deadline passed."""
        if seconds < 0:
            raise ValueError("a monotonic clock cannot go backwards; use jump_wall()")
        self._wall += seconds
        self._mono += seconds
        while self._sleepers and self._sleepers[0][0] <= self._mono:
            heapq.heappop(self._sleepers)[2].set()

    async def wait_for_sleeper(self) -> None:
        """Wait until somebody sleeps on this clock (returns at once if somebody does)."""
        while not self._sleepers:
            self._new_sleeper = anyio.Event()
            await self._new_sleeper.wait()

    def advance_to_next(self) -> bool:
        """Advance to the earliest sleeper's deadline; return False if nobody sleeps."""
        deadline = self.next_deadline
        if deadline is None:
            return False
        self.advance(max(deadline - self._mono, 0.0))
        return True

    def jump_wall(self, seconds: float) -> None:
        """Move only the wall clock (a user changing the system time); may be negative."""
        self._wall += seconds

    @property
    def next_deadline(self) -> float | None:
        """The earliest monotonic deadline anyone sleeps until, or None."""
        return self._sleepers[0][0] if self._sleepers else None

    def __repr__(self) -> str:
        return f"ManualClock(wall={self._wall!r}, monotonic={self._mono!r})"

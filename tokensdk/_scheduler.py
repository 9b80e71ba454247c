"""Many deadlines on one timer heap, served by one task.

A session has one :class:`Scheduler`; every token's refresh or revalidation is an
entry on its heap, not a task of its own. The runner sleeps until the earliest
deadline (on the injected clock) and wakes for nothing else, so an idle session
costs no CPU however many tokens it holds.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections.abc import Callable

import anyio

from tokensdk._clock import Clock

__all__ = ["Scheduler", "Timer"]

log = logging.getLogger("tokensdk")


class Timer:
    """A handle to one scheduled callback; :meth:`cancel` it to drop it."""

    __slots__ = ("_callback", "_scheduler", "deadline")

    def __init__(
        self, scheduler: Scheduler, deadline: float, callback: Callable[[], object]
    ) -> None:
        self._scheduler = scheduler
        self._callback: Callable[[], object] | None = callback
        self.deadline = deadline

    @property
    def cancelled(self) -> bool:
        """True once cancelled or fired."""
        return self._callback is None

    def cancel(self) -> None:
        """Drop the callback; cancelling twice or after it fired does nothing."""
        if self._callback is not None:
            self._callback = None
            self._scheduler._cancelled += 1

    def __repr__(self) -> str:
        state = "done" if self._callback is None else "pending"
        return f"Timer(deadline={self.deadline!r}, {state})"


class Scheduler:
    """A timer heap on a :class:`Clock`; :meth:`run` serves it until cancelled.

    Callbacks are plain functions called from the runner task; they must not block
    (start a task in the owner's task group for real work). A failing callback is
    logged and does not stop the others.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._cancelled = 0
        self._sleep: anyio.CancelScope | None = None
        self._sleeping_until = math.inf
        self.wakeups = 0

    def __len__(self) -> int:
        return len(self._heap) - self._cancelled

    def call_at(self, deadline: float, callback: Callable[[], object]) -> Timer:
        """Call ``callback()`` once the clock's monotonic time reaches ``deadline``.

        Args:
            deadline: A monotonic time (``clock.monotonic()`` base).
            callback: A non-blocking function.

        Returns:
            A handle that can cancel it.
        """
        timer = Timer(self, deadline, callback)
        heapq.heappush(self._heap, (deadline, next(self._seq), timer))
        if deadline < self._sleeping_until and self._sleep is not None:
            self._sleep.cancel()
        return timer

    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer:
        """Call ``callback()`` after ``delay`` seconds of the clock's monotonic time."""
        return self.call_at(self._clock.monotonic() + delay, callback)

    def run_due(self) -> int:
        """Fire every callback whose deadline has passed; return how many fired."""
        heap = self._heap
        now = self._clock.monotonic()
        fired = 0
        while heap and heap[0][0] <= now:
            timer = heapq.heappop(heap)[2]
            callback = timer._callback
            if callback is None:
                self._cancelled -= 1
                continue
            timer._callback = None
            fired += 1
            try:
                callback()
            except Exception:
                log.exception("tokensdk: a scheduled callback failed")
        if self._cancelled > 64 and self._cancelled > len(heap) // 2:
            self._compact()
        return fired

    def _compact(self) -> None:
        self._heap = [entry for entry in self._heap if entry[2]._callback is not None]
        heapq.heapify(self._heap)
        self._cancelled = 0

    async def run(self) -> None:
        """Serve the heap forever; cancel the enclosing scope to stop."""
        while True:
            self.run_due()
            deadline = self._heap[0][0] if self._heap else math.inf
            with anyio.CancelScope() as scope:
                self._sleep = scope
                self._sleeping_until = deadline
                if deadline == math.inf:
                    await anyio.sleep_forever()
                else:
                    await self._clock.sleep_until(deadline)
            self._sleep = None
            self._sleeping_until = math.inf
            self.wakeups += 1

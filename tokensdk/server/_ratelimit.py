"""A sliding-window counter of failed attempts per key: pure, time passed in."""

from __future__ import annotations

import collections
import math

import attrs

__all__ = ["SlidingWindowLimiter"]


@attrs.define
class SlidingWindowLimiter:
    """Allow ``limit`` events per key within any ``window`` seconds.

    Memory holds at most ``limit`` timestamps per key, and keys whose events all
    left the window are dropped by :meth:`retry_after` and :meth:`purge`.

    Args:
        limit: Events allowed per key within the window.
        window: The window length in seconds.
    """

    limit: int
    window: float
    _events: dict[str, collections.deque[float]] = attrs.field(factory=dict, init=False)

    def retry_after(self, key: str, now: float) -> int | None:
        """Return how many whole seconds (>= 1) ``key`` must wait, or None when allowed.

        Args:
            key: Who is asking (e.g. ``user:alice`` or ``ip:127.0.0.1``).
            now: A monotonic time in seconds.

        Returns:
            None when another attempt is allowed now, else the seconds to wait.
        """
        events = self._events.get(key)
        if events is None:
            return None
        self._expire(key, events, now)
        if len(events) < self.limit:
            return None
        return max(1, math.ceil(events[0] + self.window - now))

    def record(self, key: str, now: float) -> None:
        """Count one event for ``key`` at ``now``."""
        events = self._events.setdefault(key, collections.deque(maxlen=max(self.limit, 1)))
        events.append(now)

    def reset(self, key: str) -> None:
        """Forget every event of ``key`` (e.g. after a successful login)."""
        self._events.pop(key, None)

    def purge(self, now: float) -> None:
        """Drop every key whose events all left the window."""
        for key, events in list(self._events.items()):
            self._expire(key, events, now)

    def _expire(self, key: str, events: collections.deque[float], now: float) -> None:
        while events and events[0] <= now - self.window:
            events.popleft()
        if not events:
            del self._events[key]

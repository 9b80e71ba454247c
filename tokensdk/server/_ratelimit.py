"""A sliding-window counter of attempts per key: pure, time passed in."""

from __future__ import annotations

import collections
import math

import attrs

__all__ = ["SlidingWindowLimiter"]


@attrs.define
class SlidingWindowLimiter:
    """Allow ``limit`` events per key within any ``window`` seconds.

    Memory holds at most ``limit`` timestamps per key. Keys whose events all left
    the window are dropped as the limiter goes: :meth:`retry_after` drops the key
    it looks at, and :meth:`retry_after` and :meth:`record` sweep the whole table
    (:meth:`purge`) at most once per ``window`` seconds. A sweep costs one pass
    over the keys, but every key it visits was recorded since the previous sweep
    or is dropped by it, so its cost is paid for by earlier calls (amortised
    O(1) per call). However many distinct keys come by (sprayed usernames, client
    addresses), a key idle for two windows is gone by the next call, so the table
    holds only keys seen within the last two windows.

    Args:
        limit: Events allowed per key within the window.
        window: The window length in seconds.
    """

    limit: int
    window: float
    _events: dict[str, collections.deque[float]] = attrs.field(factory=dict, init=False)
    _next_purge: float = attrs.field(default=-math.inf, init=False)

    def __len__(self) -> int:
        """Return how many keys the limiter holds (for tests and monitoring)."""
        return len(self._events)

    def retry_after(self, key: str, now: float) -> int | None:
        """Return how many whole seconds (>= 1) ``key`` must wait, or None when allowed.

        Args:
            key: Who is asking (e.g. ``user:alice`` or ``ip:127.0.0.1``).
            now: A monotonic time in seconds.

        Returns:
            None when another attempt is allowed now, else the seconds to wait.
        """
        self._maybe_purge(now)
        events = self._events.get(key)
        if events is None:
            return None
        self._expire(key, events, now)
        if len(events) < self.limit:
            return None
        return max(1, math.ceil(events[0] + self.window - now))

    def record(self, key: str, now: float) -> None:
        """Count one event for ``key`` at ``now``."""
        self._maybe_purge(now)
        events = self._events.setdefault(key, collections.deque(maxlen=max(self.limit, 1)))
        events.append(now)

    def reset(self, key: str) -> None:
        """Forget every event of ``key`` (e.g. after a successful login)."""
        self._events.pop(key, None)

    def release(self, key: str) -> None:
        """Take back the newest event of ``key`` (an attempt counted up front that succeeded)."""
        events = self._events.get(key)
        if events:
            events.pop()
        if events is not None and not events:
            del self._events[key]

    def purge(self, now: float) -> None:
        """Drop every key whose events all left the window."""
        for key, events in list(self._events.items()):
            self._expire(key, events, now)

    def _maybe_purge(self, now: float) -> None:
        # Once per window: often enough that an idle key goes within two windows,
        # rarely enough that the sweep is paid for by the calls between sweeps.
        if now >= self._next_purge:
            self._next_purge = now + self.window
            self.purge(now)

    def _expire(self, key: str, events: collections.deque[float], now: float) -> None:
        while events and events[0] <= now - self.window:
            events.popleft()
        if not events:
            del self._events[key]

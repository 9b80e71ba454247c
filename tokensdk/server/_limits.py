"""Where the rate-limit counts live: this process (the default), or a Redis shared by several.

The handlers ask one question per request, :meth:`RateLimits.attempt`: are all
these (limit, key) pairs under their limits, and if so, count these. Asking it
as one operation keeps it atomic: in memory it runs without suspending (no other
request can come between the check and the count), in Redis it is one Lua script
(no other process can either), so a concurrent burst cannot slip past a limit.

Limits are sliding windows: ``limit`` events per key within any ``window`` seconds.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import attrs

from tokensdk.server._api_errors import ApiError
from tokensdk.server._ratelimit import SlidingWindowLimiter

__all__ = ["MemoryRateLimits", "RateLimits", "RedisRateLimits", "redis_unavailable"]

#: A (limit name, key) pair, e.g. ``("ip", "127.0.0.1")``.
Hit = tuple[str, str]


@attrs.frozen
class Limit:
    """``limit`` events per key within any ``window`` seconds."""

    limit: int
    window: float


class RateLimits(Protocol):
    """The counts of every named limit (``login``, ``user``, ``ip``, ...)."""

    async def attempt(self, checks: Sequence[Hit], record: Sequence[Hit]) -> int | None:
        """Count ``record`` if every pair of ``checks`` is under its limit.

        Args:
            checks: The pairs that must be under their limits.
            record: The pairs to count one event for, when they all are.

        Returns:
            None when allowed (``record`` counted), else the whole seconds (>= 1)
            to wait (nothing counted).
        """
        ...

    async def reset(self, name: str, key: str) -> None:
        """Forget every event of ``key`` under limit ``name``."""
        ...

    async def release(self, name: str, key: str) -> None:
        """Take back the newest event of ``key`` under limit ``name``."""
        ...

    async def aclose(self) -> None:
        """Release connections (nothing to do in memory)."""
        ...


class MemoryRateLimits:
    """The counts in this process: one :class:`SlidingWindowLimiter` per limit.

    No method suspends, so a check and its count are never separated by another
    request.

    Args:
        limiters: Limit name -> its limiter.
        clock: Monotonic seconds.
    """

    def __init__(
        self, limiters: Mapping[str, SlidingWindowLimiter], clock: Callable[[], float]
    ) -> None:
        self._limiters = dict(limiters)
        self._clock = clock

    async def attempt(self, checks: Sequence[Hit], record: Sequence[Hit]) -> int | None:
        """See :meth:`RateLimits.attempt`."""
        now = self._clock()
        waits = [
            wait
            for name, key in checks
            if (wait := self._limiters[name].retry_after(key, now)) is not None
        ]
        if waits:
            return max(waits)
        for name, key in record:
            self._limiters[name].record(key, now)
        return None

    async def reset(self, name: str, key: str) -> None:
        """See :meth:`RateLimits.reset`."""
        self._limiters[name].reset(key)

    async def release(self, name: str, key: str) -> None:
        """See :meth:`RateLimits.release`."""
        self._limiters[name].release(key)

    async def aclose(self) -> None:
        """Nothing to release."""


# KEYS: the checked keys, then the recorded keys. ARGV: now (ms), the number of
# checks, then (limit, window ms) per checked key, then (limit, window ms, member)
# per recorded key. Returns 0 when allowed, else the milliseconds to wait.
# A sorted set per key holds its events scored by time, as the in-memory deque
# does: trimmed to the window, capped at ``limit`` entries, expiring with it.
_ATTEMPT = """
local now = tonumber(ARGV[1])
local nchecks = tonumber(ARGV[2])
local i = 3
local wait = 0
for k = 1, nchecks do
  local limit = tonumber(ARGV[i])
  local window = tonumber(ARGV[i + 1])
  i = i + 2
  redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', now - window)
  if redis.call('ZCARD', KEYS[k]) >= limit then
    local oldest = redis.call('ZRANGE', KEYS[k], 0, 0, 'WITHSCORES')
    local w = tonumber(oldest[2]) + window - now
    if w > wait then wait = w end
  end
end
if wait > 0 then return wait end
for k = nchecks + 1, #KEYS do
  local limit = tonumber(ARGV[i])
  local window = tonumber(ARGV[i + 1])
  local member = ARGV[i + 2]
  i = i + 3
  redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', now - window)
  redis.call('ZADD', KEYS[k], now, member)
  local extra = redis.call('ZCARD', KEYS[k]) - limit
  if extra > 0 then redis.call('ZREMRANGEBYRANK', KEYS[k], 0, extra - 1) end
  redis.call('PEXPIRE', KEYS[k], window)
end
return 0
"""


def redis_unavailable() -> ApiError:
    """The 503 answer when the shared Redis cannot be reached (nothing was counted)."""
    return ApiError(
        503,
        "service_unavailable",
        "the service cannot reach its shared state; try again later",
        headers={"Retry-After": "1"},
    )


class RedisRateLimits:
    """The counts in Redis, shared by every service process that uses the same server.

    Each (limit, key) is one sorted set ``<prefix><name>:<key>`` of event times
    (wall clock, milliseconds: processes on several hosts need synchronised
    clocks; a skew shifts their windows by as much). The prefix carries a hash tag
    (``{limits}``) so that every key lives in one Redis Cluster slot, as a script
    over several keys requires. A Redis that cannot be reached makes the request
    fail with 503 ``service_unavailable`` (:func:`redis_unavailable`): the service
    refuses rather than count nothing.

    Args:
        client: A ``redis.asyncio.Redis`` client.
        limits: Limit name -> its limit and window.
        clock: Wall seconds.
        prefix: Key prefix.
    """

    def __init__(
        self,
        client: Any,
        limits: Mapping[str, Limit],
        clock: Callable[[], float],
        *,
        prefix: str = "tokensdk:service:{limits}:",
    ) -> None:
        self._client = client
        self._limits = dict(limits)
        self._clock = clock
        self._prefix = prefix
        self._script = client.register_script(_ATTEMPT)

    def _key(self, name: str, key: str) -> str:
        return f"{self._prefix}{name}:{key}"

    def _window_ms(self, name: str) -> int:
        return max(1, math.ceil(self._limits[name].window * 1000))

    async def attempt(self, checks: Sequence[Hit], record: Sequence[Hit]) -> int | None:
        """See :meth:`RateLimits.attempt`."""
        from redis.exceptions import RedisError

        keys = [self._key(n, k) for n, k in checks] + [self._key(n, k) for n, k in record]
        args: list[int | str] = [int(self._clock() * 1000), len(checks)]
        for name, _ in checks:
            args += [self._limits[name].limit, self._window_ms(name)]
        for name, _ in record:
            args += [self._limits[name].limit, self._window_ms(name), secrets.token_hex(8)]
        try:
            wait_ms = int(await self._script(keys=keys, args=args))
        except RedisError:
            raise redis_unavailable() from None
        return None if wait_ms <= 0 else max(1, math.ceil(wait_ms / 1000))

    async def reset(self, name: str, key: str) -> None:
        """See :meth:`RateLimits.reset`."""
        from redis.exceptions import RedisError

        try:
            await self._client.delete(self._key(name, key))
        except RedisError:
            raise redis_unavailable() from None

    async def release(self, name: str, key: str) -> None:
        """See :meth:`RateLimits.release`."""
        from redis.exceptions import RedisError

        try:
            await self._client.zpopmax(self._key(name, key))
        except RedisError:
            raise redis_unavailable() from None

    async def aclose(self) -> None:
        """Close the client's connections."""
        await self._client.aclose()

    def __repr__(self) -> str:
        return f"RedisRateLimits(prefix={self._prefix!r})"

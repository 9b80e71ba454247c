"""What every handler shares: the configuration, the state, limiters, counters."""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import attrs
from aiohttp import web

from tokensdk.mac import AsyncReplayGuard, ReplayGuard, TimestampWindow
from tokensdk.server._config import ServiceConfig
from tokensdk.server._limits import RateLimits
from tokensdk.server._ratelimit import SlidingWindowLimiter
from tokensdk.server._state import ServiceState

__all__ = ["SERVICE_KEY", "STATS_KEY", "PasswordChecks", "Service", "ServiceStats"]

_T = TypeVar("_T")


@attrs.define
class ServiceStats:
    """Counters the service keeps, for tests and benchmarks.

    Attributes:
        logins: Successful logins (password or one-time key).
        refreshes: Successful refreshes.
        rejected_bearers: Bearer tokens refused (invalid, expired or revoked).
        expired_bearers: The subset of rejected bearers that were presented after expiry.
        failed_logins: Login attempts refused for bad credentials.
        password_hashes: Password checks (scrypt runs) started for requests.
        busy: Requests answered 503 ``service_busy`` (too many password checks waiting).
        rate_limited: Requests answered 429.
        refresh_reuses: Refresh tokens presented a second time (families revoked).
        mac_tokens_created: MAC tokens created.
        mac_headers_accepted: ``X-PowerAuth-Token`` headers that verified.
        mac_headers_rejected: ``X-PowerAuth-Token`` headers refused.
        asset_tokens_issued: Asset access tokens signed.
        requests_by_path: Requests per matched route path (``<unmatched>`` otherwise).
    """

    logins: int = 0
    refreshes: int = 0
    rejected_bearers: int = 0
    expired_bearers: int = 0
    failed_logins: int = 0
    password_hashes: int = 0
    busy: int = 0
    rate_limited: int = 0
    refresh_reuses: int = 0
    mac_tokens_created: int = 0
    mac_headers_accepted: int = 0
    mac_headers_rejected: int = 0
    asset_tokens_issued: int = 0
    requests_by_path: collections.Counter[str] = attrs.field(factory=collections.Counter)


@attrs.define
class PasswordChecks:
    """Password checks (scrypt, in threads): ``slots`` run at once, ``queue`` more wait.

    Each check holds ``128 * r * N`` bytes and a core while it runs, so the slots
    bound both the memory and the CPU that unauthenticated requests can take;
    :attr:`full` tells a caller to refuse rather than join an unbounded queue.
    Admission is counted synchronously, before the first await, so a burst cannot
    slip past the bound.
    """

    slots: int
    queue: int
    _limiter: anyio.CapacityLimiter = attrs.field(init=False)
    _admitted: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        self._limiter = anyio.CapacityLimiter(self.slots)

    @property
    def full(self) -> bool:
        """Whether every slot and every waiting place is taken."""
        return self._admitted >= self.slots + self.queue

    async def run(self, func: Callable[..., _T], *args: Any) -> _T:
        """Run ``func(*args)`` in a worker thread when a slot is free."""
        self._admitted += 1
        try:
            return await anyio.to_thread.run_sync(func, *args, limiter=self._limiter)
        finally:
            self._admitted -= 1


@attrs.define
class Service:
    """Everything the handlers share: config, state, limiters, stats.

    Rate limits (sliding windows of ``login_rate_window`` seconds):

    - ``login_limiter``: login attempts per (username, client IP), tight;
    - ``user_limiter``: login attempts per username from everywhere, a high ceiling;
    - ``ip_limiter``: login attempts per client IP;
    - ``key_limiter``: one-time-key requests per username;
    - ``request_limiter``: one-time-key and challenge requests per client IP;
    - ``asset_limiter``: challenge requests per asset, a high ceiling.

    ``limits`` holds the counts the handlers use (:mod:`tokensdk.server._limits`):
    these limiters (:class:`~tokensdk.server._limits.MemoryRateLimits`, the
    default), or sorted sets in a Redis shared by several service processes
    (``redis_url``; the limiters above then stay empty).

    ``hashing`` bounds the password checks running at once and waiting.
    ``replay_guard`` remembers accepted MAC headers: in this process, or in Redis.
    """

    config: ServiceConfig
    state: ServiceState
    stats: ServiceStats
    login_limiter: SlidingWindowLimiter
    user_limiter: SlidingWindowLimiter
    ip_limiter: SlidingWindowLimiter
    key_limiter: SlidingWindowLimiter
    request_limiter: SlidingWindowLimiter
    asset_limiter: SlidingWindowLimiter
    limits: RateLimits
    hashing: PasswordChecks
    mac_window: TimestampWindow
    replay_guard: ReplayGuard | AsyncReplayGuard

    def now(self) -> float:
        return self.config.clock.time()

    def mono(self) -> float:
        return self.config.clock.monotonic()


SERVICE_KEY = web.AppKey("tokensdk_service", Service)
STATS_KEY = web.AppKey("tokensdk_stats", ServiceStats)

"""What several service processes share through Redis (``serve --redis URL``).

Shared: the MAC replay guard (a header accepted by one process is ``replayed`` at
every other) and the rate-limit counts (attempts add up across processes). Not
shared: the state itself. Each process keeps the records in memory, loaded from
the database at start and written through to it; a token, MAC token, asset or
revocation that one process creates later is unknown to the others until they
restart (docs/PROTOCOL-EXTENSIONS.md, "Several service processes").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tokensdk.mac import RedisReplayGuard, TimestampWindow
from tokensdk.server._config import ServiceConfig
from tokensdk.server._limits import Limit, RedisRateLimits, redis_unavailable

__all__ = ["SharedReplayGuard", "connect_shared"]


class SharedReplayGuard:
    """A :class:`~tokensdk.mac.RedisReplayGuard` whose Redis failures answer 503.

    A header is neither accepted nor remembered when Redis cannot be asked.

    Args:
        guard: The Redis guard.
    """

    def __init__(self, guard: RedisReplayGuard) -> None:
        self._guard = guard

    async def check_and_remember(
        self, token_id: str, nonce: bytes, timestamp_ms: int, now_ms: int
    ) -> bool:
        """See :meth:`tokensdk.mac.RedisReplayGuard.check_and_remember`."""
        from redis.exceptions import RedisError

        try:
            return await self._guard.check_and_remember(token_id, nonce, timestamp_ms, now_ms)
        except RedisError:
            raise redis_unavailable() from None


def connect_shared(
    config: ServiceConfig, limits: Mapping[str, Limit], window: TimestampWindow
) -> tuple[RedisRateLimits, SharedReplayGuard]:
    """Open the Redis of ``config.redis_url``: shared rate limits and replay guard.

    Connections are made on first use; the rate limits' ``aclose`` closes them.

    Raises:
        ValueError: The URL is not one redis-py accepts, or redis-py is not
            installed (``pip install 'tokensdk[redis]'``).
    """
    assert config.redis_url is not None
    try:
        import redis.asyncio
    except ImportError:  # pragma: no cover - redis is in the test extra
        raise ValueError("--redis needs redis-py: pip install 'tokensdk[redis]'") from None
    client: Any = redis.asyncio.Redis.from_url(config.redis_url)
    guard = RedisReplayGuard(client, window, prefix="tokensdk:service:mac-nonce:")
    rate_limits = RedisRateLimits(client, limits, config.clock.time)
    return rate_limits, SharedReplayGuard(guard)

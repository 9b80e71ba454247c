"""The Redis test harness starts a genuine redis-server (no fake) and restarts it empty."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis
from _redis import redis_server

pytestmark = pytest.mark.anyio


async def test_real_server_answers_and_restarts_empty(tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis") as server:
        client = aioredis.Redis.from_url(server.url)
        try:
            info = await client.info("server")
            assert "redis_version" in info
            assert await client.set("k", "v", nx=True, px=10_000)
            assert not await client.set("k", "w", nx=True, px=10_000)
            server.kill()
            with pytest.raises(aioredis.ConnectionError):
                await client.get("k")
            server.start()
            assert await client.get("k") is None  # a restart without persistence is empty
        finally:
            await client.aclose()

"""The shared MAC replay guard on a real redis-server: one acceptance per header, fleet-wide."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest
import redis.asyncio as aioredis
from _redis import RedisServer, redis_server

from tokensdk import HeaderInvalid
from tokensdk.mac import (
    RedisReplayGuard,
    ReplayGuard,
    TimestampWindow,
    averify_token_header,
    build_header,
)

pytestmark = pytest.mark.anyio

SECRET = bytes(range(16))
TOKEN_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"
NOW = 1_700_000_000_000
WINDOW = TimestampWindow(past_ms=600_000, future_ms=120_000)


def lookup(token_id: str) -> bytes | None:
    return SECRET if token_id == TOKEN_ID else None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as running:
        yield running


@pytest.fixture
async def client(server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    redis_client = aioredis.Redis.from_url(server.url)
    await redis_client.flushdb()
    yield redis_client
    await redis_client.aclose()


async def test_second_use_is_replayed(client: aioredis.Redis) -> None:
    guard = RedisReplayGuard(client, WINDOW)
    header = build_header(TOKEN_ID, SECRET, NOW)
    parsed = await averify_token_header(header, lookup, NOW, WINDOW, replay_guard=guard)
    assert parsed.token_id == TOKEN_ID
    with pytest.raises(HeaderInvalid) as caught:
        await averify_token_header(header, lookup, NOW + 1, WINDOW, replay_guard=guard)
    assert caught.value.error == "replayed"


async def test_entry_lives_until_the_timestamp_leaves_the_window(client: aioredis.Redis) -> None:
    header = build_header(TOKEN_ID, SECRET, NOW - 1_000)
    await averify_token_header(
        header, lookup, NOW, WINDOW, replay_guard=RedisReplayGuard(client, WINDOW)
    )
    (key,) = await client.keys("*")
    assert key.decode().startswith("tokensdk:mac-nonce:{" + TOKEN_ID + "}:")
    ttl = await client.pttl(key)
    assert 0 < ttl <= WINDOW.past_ms - 1_000


async def test_forged_and_stale_headers_plant_nothing(client: aioredis.Redis) -> None:
    guard = RedisReplayGuard(client, WINDOW)
    forged = build_header(TOKEN_ID, bytes(16), NOW)
    with pytest.raises(HeaderInvalid, match="token_invalid"):
        await averify_token_header(forged, lookup, NOW, WINDOW, replay_guard=guard)
    stale = build_header(TOKEN_ID, SECRET, NOW - WINDOW.past_ms - 1)
    with pytest.raises(HeaderInvalid, match="timestamp_too_old"):
        await averify_token_header(stale, lookup, NOW, WINDOW, replay_guard=guard)
    assert await client.dbsize() == 0


async def test_concurrent_uses_accept_exactly_one(server: RedisServer) -> None:
    header = build_header(TOKEN_ID, SECRET, NOW)
    clients = [aioredis.Redis.from_url(server.url) for _ in range(8)]
    await clients[0].flushdb()
    accepted: list[int] = []
    refused: list[str] = []

    async def verify(index: int) -> None:
        guard = RedisReplayGuard(clients[index % len(clients)], WINDOW)
        try:
            await averify_token_header(header, lookup, NOW, WINDOW, replay_guard=guard)
        except HeaderInvalid as exc:
            refused.append(exc.error)
        else:
            accepted.append(index)

    try:
        async with anyio.create_task_group() as tg:
            for index in range(200):
                tg.start_soon(verify, index)
    finally:
        for redis_client in clients:
            await redis_client.aclose()
    assert len(accepted) == 1
    assert refused == ["replayed"] * 199


_VERIFIER = textwrap.dedent(
    """
    import asyncio, sys
    import redis.asyncio as aioredis
    from tokensdk import HeaderInvalid
    from tokensdk.mac import RedisReplayGuard, TimestampWindow, averify_token_header

    async def main() -> None:
        url, header, now = sys.argv[1], sys.stdin.read(), int(sys.argv[2])
        client = aioredis.Redis.from_url(url)
        guard = RedisReplayGuard(client, TimestampWindow())
        try:
            await averify_token_header(
                header, lambda _: bytes(range(16)), now, replay_guard=guard
            )
            print("accepted")
        except HeaderInvalid as exc:
            print(exc.error)
        finally:
            await client.aclose()

    asyncio.run(main())
    """
)


def test_two_verifier_processes_share_the_guard(server: RedisServer, tmp_path: Path) -> None:
    header = build_header(TOKEN_ID, SECRET, NOW)
    script = tmp_path / "verifier.py"
    script.write_text(_VERIFIER)
    outcomes = []
    for _ in range(2):  # two real OS processes, one after the other
        done = subprocess.run(
            [sys.executable, str(script), server.url, str(NOW)],
            input=header,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        outcomes.append(done.stdout.strip())
    assert outcomes == ["accepted", "replayed"]


async def test_in_process_guard_works_through_the_async_verifier() -> None:
    guard = ReplayGuard(WINDOW)
    header = build_header(TOKEN_ID, SECRET, NOW)
    await averify_token_header(header, lookup, NOW, WINDOW, replay_guard=guard)
    with pytest.raises(HeaderInvalid, match="replayed"):
        await averify_token_header(header, lookup, NOW, WINDOW, replay_guard=guard)


async def test_unreachable_redis_accepts_nothing(server: RedisServer) -> None:
    # A port nobody listens on: the error propagates, the header is not accepted.
    dead = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)
    header = build_header(TOKEN_ID, SECRET, NOW)
    try:
        with pytest.raises(aioredis.ConnectionError):
            await averify_token_header(
                header, lookup, NOW, WINDOW, replay_guard=RedisReplayGuard(dead, WINDOW)
            )
    finally:
        await dead.aclose()

"""RedisStore on a real redis-server: versions, compare-and-set, lease, change feed, outages."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest
import redis.asyncio as aioredis
from _redis import RedisServer, redis_server

from tokensdk import InvalidInput, StoreCorrupt
from tokensdk.stores._redis import RedisStore, StoreUnavailable

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as running:
        yield running


@pytest.fixture
async def store(server: RedisServer) -> AsyncIterator[RedisStore]:
    client = aioredis.Redis.from_url(server.url)
    await client.flushdb()
    await client.aclose()
    opened = RedisStore(server.url, name="bot")
    yield opened
    await opened.aclose()


async def test_plain_store_round_trip(store: RedisStore) -> None:
    assert await store.load() is None
    await store.save({"a": 1})
    assert await store.load() == {"a": 1}
    await store.save({"a": 2})
    assert await store.load_versioned() == ({"a": 2}, 2)
    await store.clear()
    assert await store.load_versioned() == (None, 0)


async def test_save_if_is_a_compare_and_set(store: RedisStore) -> None:
    assert await store.save_if({"v": 1}, None) == 1
    assert await store.save_if({"v": "late"}, None) is None  # somebody created it first
    assert await store.save_if({"v": 2}, 1) == 2
    assert await store.save_if({"v": "stale"}, 1) is None  # derived from an old version
    assert await store.load_versioned() == ({"v": 2}, 2)


async def test_racing_writers_one_wins_per_version(server: RedisServer, store: RedisStore) -> None:
    await store.save_if({"n": 0}, None)
    others = [RedisStore(server.url, name="bot") for _ in range(10)]
    wins: list[int] = []

    async def write(index: int) -> None:
        if await others[index].save_if({"n": index}, 1) is not None:
            wins.append(index)

    try:
        async with anyio.create_task_group() as tg:
            for index in range(10):
                tg.start_soon(write, index)
    finally:
        for other in others:
            await other.aclose()
    assert len(wins) == 1
    assert await store.load_versioned() == ({"n": wins[0]}, 2)


async def test_restore_writes_back_only_what_is_newer(store: RedisStore) -> None:
    assert await store.restore({"v": "held"}, 5)  # Redis lost it: written back
    assert await store.load_versioned() == ({"v": "held"}, 5)
    assert not await store.restore({"v": "older"}, 4)
    assert not await store.restore({"v": "same"}, 5)
    assert await store.restore({"v": "newer"}, 7)
    assert await store.save_if({"v": "next"}, 7) == 8


async def test_lease_is_exclusive_and_expires(store: RedisStore, server: RedisServer) -> None:
    other = RedisStore(server.url, name="bot")
    try:
        lease = await store.try_lock(30.0)
        assert lease is not None
        assert await other.try_lock(30.0) is None
        remaining = await other.lock_remaining()
        assert remaining is not None
        assert 0 < remaining <= 30.0
        await lease.release()
        assert await other.lock_remaining() is None
        short = await other.try_lock(0.05)
        assert short is not None
        # Redis frees an abandoned lease by itself: wait for its key to expire
        # (a keyspace event, not a sleep).
        client = aioredis.Redis.from_url(server.url)
        pubsub = client.pubsub()
        await pubsub.psubscribe("__keyevent@0__:expired")
        try:
            with anyio.fail_after(10):
                while await other.lock_remaining() is not None:
                    await pubsub.get_message(timeout=1.0)
        finally:
            await pubsub.aclose()
            await client.aclose()
        assert not await short.still_held()
        await short.release()  # expired: a no-op, never deletes someone else's lease
        again = await store.try_lock(30.0)
        assert again is not None
        await short.release()
        assert await again.still_held()
        await again.release()
    finally:
        await other.aclose()


async def test_changes_feed_sees_every_write(store: RedisStore, server: RedisServer) -> None:
    writer = RedisStore(server.url, name="bot")
    seen: list[int] = []
    try:
        async with store.changes() as versions:
            await writer.save_if({"v": 1}, None)
            await writer.save({"v": 2})
            await writer.restore({"v": 9}, 9)
            with anyio.fail_after(10):
                async for version in versions:
                    seen.append(version)
                    if version == 9:
                        break
    finally:
        await writer.aclose()
    assert seen == [1, 2, 9]


async def test_names_are_separate_and_hash_tagged(store: RedisStore, server: RedisServer) -> None:
    other = RedisStore(server.url, name="other-bot")
    client = aioredis.Redis.from_url(server.url)
    try:
        await store.save({"who": "bot"})
        await other.save({"who": "other"})
        assert await store.load() == {"who": "bot"}
        lease = await store.try_lock(30.0)
        assert lease is not None
        keys = sorted(k.decode() for k in await client.keys("*"))
        assert keys == [
            "tokensdk:{bot}:lock",
            "tokensdk:{bot}:state",
            "tokensdk:{other-bot}:state",
        ]
        await lease.release()
    finally:
        await other.aclose()
        await client.aclose()


async def test_garbage_in_redis_is_store_corrupt(store: RedisStore, server: RedisServer) -> None:
    client = aioredis.Redis.from_url(server.url)
    try:
        await client.hset("tokensdk:{bot}:state", mapping={"doc": b"\xff{", "version": 3})
    finally:
        await client.aclose()
    with pytest.raises(StoreCorrupt):
        await store.load_versioned()


async def test_unreachable_redis_is_store_unavailable(tmp_path: Path) -> None:
    with redis_server(tmp_path / "down") as server:
        store = RedisStore(f"redis://:hunter2-secret@127.0.0.1:{server.port}/0", name="bot")
        await store.save({"a": 1})
        server.kill()
        try:
            for call in (store.load(), store.save({"a": 2}), store.try_lock(1.0)):
                with pytest.raises(StoreUnavailable) as caught:
                    await call
                assert "hunter2" not in str(caught.value)
            assert "hunter2" not in repr(store)
            server.start()  # restarted empty: the client reconnects by itself
            assert await store.load() is None
        finally:
            await store.aclose()


def test_bad_arguments() -> None:
    with pytest.raises(InvalidInput):
        RedisStore(name="bot")
    with pytest.raises(InvalidInput):
        RedisStore("redis://127.0.0.1:1/0", name="")
    with pytest.raises(InvalidInput):
        RedisStore("redis://127.0.0.1:1/0", name="a{b}")
    with pytest.raises(InvalidInput):
        RedisStore("http://127.0.0.1:1/0", name="bot")
    with pytest.raises(InvalidInput):
        RedisStore("redis+sentinel://127.0.0.1:26379", name="bot")

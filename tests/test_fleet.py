"""Fleet mode with real OS processes: many members share one credential.

Each member (tests/_fleet_member.py) runs ``access_token()`` callers for a while and
presents a fresh token at ``GET /v1/me`` every 100 ms; the reference service runs in
this process with 3 s access tokens. Set ``TOKENSDK_FLEET_SECONDS`` to run longer
(default 20).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from _proxy import Fault, FaultProxy
from _redis import RedisServer, redis_server
from aiohttp import web

from tokensdk import (
    EventType,
    ManualClock,
    RedisStore,
    Session,
    SessionStatus,
    StoreUnavailable,
    SystemClock,
)
from tokensdk.server import RunningService

MEMBER = str(Path(__file__).with_name("_fleet_member.py"))
SECONDS = float(os.environ.get("TOKENSDK_FLEET_SECONDS", "20"))
ACCESS_TTL = 3
_GUARD = 120 + 2 * SECONDS


@contextmanager
def service_in_thread(**overrides: Any) -> Iterator[RunningService]:
    """The reference service (in memory, real clock) in a thread of this process."""
    from _service import service

    found: list[Any] = []
    ready = threading.Event()

    async def serve() -> None:
        stop = asyncio.Event()
        async with service(SystemClock(), **overrides) as svc:
            found.extend([svc, asyncio.get_running_loop(), stop])
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    try:
        assert ready.wait(60), "the service did not start"
        yield found[0]
    finally:
        if found:
            found[1].call_soon_threadsafe(found[2].set)
        thread.join(60)


def start_member(url: str, store: str, seconds: float, *options: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, MEMBER, url, store, str(seconds), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def results(members: Sequence[subprocess.Popen[bytes]]) -> list[dict[str, Any]]:
    """Each member's counters (it exited cleanly and was ready)."""
    found = []
    for member in members:
        out, err = member.communicate(timeout=_GUARD)
        assert member.returncode == 0, err.decode(errors="replace")[-3000:]
        lines = out.decode().splitlines()
        assert "ready" in lines or member is members[0], lines
        found.append(json.loads(lines[-1]))
    return found


def run_fleet(
    url: str, store: str, count: int, seconds: float, *options: str
) -> list[dict[str, Any]]:
    """One member logs in; once it is ready the others open the same store."""
    first = start_member(url, store, seconds, "--login", *options)
    assert first.stdout is not None
    line = first.stdout.readline()
    assert line == b"ready\n", (line, first.stderr.read() if first.stderr else b"")
    members = [start_member(url, store, seconds, *options) for _ in range(count - 1)]
    found = results([first, *members])
    return found


def assert_one_refresh_per_window(
    svc: RunningService, found: list[dict[str, Any]], seconds: float
) -> None:
    stats = svc.stats
    where = f"members: {found}; service: {stats}"
    assert all(member.get("lost", 0) == 0 for member in found), where
    assert all(member.get("refused", 0) == 0 for member in found), where
    assert all(not member["errors"] for member in found), where
    assert all(member.get("checked", 0) > 0 for member in found), where
    assert stats.refresh_reuses == 0, where
    assert stats.rejected_bearers == 0, where
    # A pair is refreshed between 40 % and 77.5 % of its 3 s life: one fleet-wide
    # refresh per pair means at most one per 1.2 s; one per member per window would
    # be several times that.
    most = math.ceil(seconds / (0.4 * ACCESS_TTL)) + 2
    least = math.floor(seconds / ACCESS_TTL) - 1
    assert least <= stats.refreshes <= most, where


@pytest.mark.parametrize("count", [2, 4])
def test_a_fleet_on_one_file_refreshes_once_per_window(tmp_path: Path, count: int) -> None:
    with service_in_thread(access_ttl=ACCESS_TTL) as svc:
        found = run_fleet(svc.url, f"file:{tmp_path / 'state.json'}", count, SECONDS)
        assert_one_refresh_per_window(svc, found, SECONDS)
    print(f"file fleet of {count}: {svc.stats.refreshes} refreshes in {SECONDS} s; {found}")


def test_without_coordination_a_fleet_on_one_file_loses_its_session(tmp_path: Path) -> None:
    """What every FileStore did before fleet mode: each member refreshes its own copy."""
    with service_in_thread(access_ttl=ACCESS_TTL) as svc:
        found = run_fleet(svc.url, f"file:{tmp_path / 'state.json'}", 2, 8.0, "--local")
    assert svc.stats.refresh_reuses >= 1
    assert sum(member.get("lost", 0) for member in found) >= 1, found


# -- Redis ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as running:
        yield running


@pytest.mark.parametrize("count", [2, 4, 8])
def test_a_fleet_on_one_redis_refreshes_once_per_window(
    redis: RedisServer, request: pytest.FixtureRequest, count: int
) -> None:
    store = f"redis:{redis.url}#{request.node.name}"
    with service_in_thread(access_ttl=ACCESS_TTL) as svc:
        found = run_fleet(svc.url, store, count, SECONDS)
        assert_one_refresh_per_window(svc, found, SECONDS)
    print(f"redis fleet of {count}: {svc.stats.refreshes} refreshes in {SECONDS} s; {found}")


def _held_refresh(
    proxy: FaultProxy, holders: list[tuple[int, float, str]], holding: anyio.Event
) -> Fault:
    """Forward a refresh (the service rotates the pair), then hold its answer forever."""

    async def fault(request: web.Request) -> web.StreamResponse:
        status, headers, payload = await proxy.forward(request)
        key = json.loads(await request.read())["idempotencyKey"]
        holders.append((int(request.headers["X-Fleet-Member"]), time.monotonic(), key))
        holding.set()
        await proxy.released.wait()  # until the client hangs up (killed) or the end
        return web.Response(body=payload, status=status, headers=headers)

    return fault


@pytest.mark.anyio
async def test_killing_the_lock_holder_mid_refresh_costs_the_fleet_one_lease(
    redis: RedisServer, request: pytest.FixtureRequest
) -> None:
    """kill -9 the member whose refresh reached the service but whose answer is held.

    The pending refresh (refresh token + key) was in Redis before the request left;
    the lease lapses; the next member retries that refresh with that key and gets the
    same answer: nobody is logged out, no expired token is presented.
    """
    from _service import service

    lease, seconds = 2.0, 12.0
    store = f"redis:{redis.url}#{request.node.name}"
    holders: list[tuple[int, float, str]] = []
    async with (
        service(SystemClock(), access_ttl=ACCESS_TTL) as svc,
        FaultProxy(svc.url, cancel_on_hangup=True).running() as proxy,
    ):
        proxy.only_paths = {"/v1/refresh"}
        holding = anyio.Event()
        proxy.fail_next(1, _held_refresh(proxy, holders, holding))
        options = ("--lease", str(lease), "--callers", "3")
        first = start_member(proxy.url, store, seconds, "--login", *options)
        assert first.stdout is not None
        line = await anyio.to_thread.run_sync(first.stdout.readline)
        assert line == b"ready\n"
        members = [first] + [start_member(proxy.url, store, seconds, *options) for _ in range(2)]
        with anyio.fail_after(30):
            await holding.wait()
        pid, held_at, key = holders[0]
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        survivors = [member for member in members if member.pid != pid]
        found = await anyio.to_thread.run_sync(results, survivors)
        next(member for member in members if member.pid == pid).communicate(timeout=_GUARD)
        retries = [hit for hit in proxy.hits if hit.path == "/v1/refresh" and hit.at > held_at]
    where = f"members: {found}; service: {svc.stats}"
    assert all(member.get("lost", 0) == 0 for member in found), where
    assert all(member.get("refused", 0) == 0 for member in found), where
    assert all(not member["errors"] for member in found), where
    assert svc.stats.refresh_reuses == 0, where
    assert svc.stats.rejected_bearers == 0, where
    # The first refresh after the kill is the dead member's, retried with its key.
    assert retries, where
    assert json.loads(retries[0].body)["idempotencyKey"] == key
    assert retries[0].status == 200
    recovered = retries[0].at - killed
    # One lease (from when the holder took it, before its request) plus one look at
    # the lock (0.25 s), with a margin for a loaded machine.
    assert recovered <= lease + 0.25 + 1.0, recovered
    print(f"killed the lock holder: recovered in {recovered:.2f} s (lease {lease} s)")


@pytest.mark.anyio
async def test_a_redis_restart_loses_no_session_and_refreshes_nothing_without_the_lock(
    redis: RedisServer, request: pytest.FixtureRequest, clock: ManualClock
) -> None:
    """Redis dies and comes back empty while two members hold the state.

    While it is down, members serve the tokens they hold (the hot path never touches
    Redis); a refresh that becomes necessary cannot take the lock, so it is not sent
    (no reuse can follow) and callers get StoreUnavailable. Once Redis is back, a
    member writes the state back, and the next refresh is one refresh, adopted by
    the other member.
    """
    from _service import PASSWORDS, service

    name = request.node.name
    stores = [RedisStore(redis.url, name=name) for _ in range(3)]
    async with AsyncExitStack() as stack:
        for store in stores:
            stack.push_async_callback(store.aclose)
        svc = await stack.enter_async_context(service(clock, access_ttl=60))
        a = await stack.enter_async_context(Session(svc.url, store=stores[0], clock=clock))
        b = await stack.enter_async_context(Session(svc.url, store=stores[1], clock=clock))
        async with b.events() as events:
            await a.login("alice", PASSWORDS["alice"])
            with anyio.fail_after(10):
                assert (await anext(events)).type is EventType.LOGGED_IN
        token = await a.access_token()
        redis.kill()
        assert await a.access_token() == token  # still fresh: served from memory
        assert await b.access_token() == token
        clock.advance(59)  # inside the mandatory window: a refresh is needed
        for member in (a, b):
            with pytest.raises(StoreUnavailable):
                await member.access_token()
        assert svc.stats.refreshes == 0  # nothing was sent without the lock
        redis.start()  # empty
        with anyio.fail_after(10):  # one watch backoff step (at most 1 s) and a write
            async with stores[2].changes() as versions:
                if (await stores[2].load_versioned())[0] is None:
                    await anext(versions)  # the write-back publishes its version
        async with b.events() as events:
            fresh = await a.access_token()
            assert fresh != token
            with anyio.fail_after(10):
                assert (await anext(events)).type is EventType.REFRESHED
        assert await b.access_token() == fresh
        assert svc.stats.refreshes == 1
        assert svc.stats.refresh_reuses == 0
        assert a.status is b.status is SessionStatus.ACTIVE


# -- OAuth 2.0: the same fleet against a real provider ------------------------------------


def test_a_fleet_on_one_redis_refreshes_once_per_window_at_a_real_oauth_provider(
    redis: RedisServer, oidc_provider: Any, request: pytest.FixtureRequest
) -> None:
    """panva's oidc-provider revokes the whole grant when a rotated refresh token is used
    twice: any double refresh by two members would end every member's session."""
    provider = oidc_provider({"accessTokenTTL": ACCESS_TTL}, shared=False)
    store = f"redis:{redis.url}#{request.node.name}"
    found = run_fleet(provider.issuer, store, 4, SECONDS, "--oauth")
    stats = anyio.run(provider.stats)
    where = f"members: {found}; provider: {stats}"
    assert all(member.get("lost", 0) == 0 for member in found), where
    assert all(member.get("refused", 0) == 0 for member in found), where
    assert all(not member["errors"] for member in found), where
    assert all(member.get("checked", 0) > 0 for member in found), where
    assert stats["errors"] == [], where  # no invalid_grant: no refresh token used twice
    assert stats["grants_revoked"] == 0, where
    refreshes = sum(stats["grants"].get("refresh_token", {}).values())
    most = math.ceil(SECONDS / (0.4 * ACCESS_TTL)) + 2
    least = math.floor(SECONDS / ACCESS_TTL) - 1
    assert least <= refreshes <= most, where
    print(f"oauth redis fleet of 4: {refreshes} refreshes in {SECONDS} s; {found}")

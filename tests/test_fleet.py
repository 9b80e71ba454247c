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
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from _redis import RedisServer, redis_server

from tokensdk import SystemClock
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

"""The reference service killed (SIGKILL) mid-rotation, restarted on the same database.

A real OS process runs the service (forked from ``_crash_service.py``), the test
drives refreshes over HTTP and kills it at random moments, then checks what the
SQLite file holds and what the restarted service answers:

- the pair of the last 200 answer is on disk (nothing is answered before it is);
- a rotation is all or nothing: either the old refresh token is still unused and
  no successor exists (not committed), or it is used and exactly one successor
  is (committed), never a mix;
- after restart the old refresh token either still works (not committed) or
  counts as reuse, 401 ``refresh_token_reused`` (committed): never accepted twice.

``TOKENSDK_CRASH_ITERATIONS`` sets the number of kills, ``TOKENSDK_SEED`` the draws.
"""

from __future__ import annotations

import collections
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from _crash_service import PASSWORD, USER
from _forkserver import GUARD, ForkServer

from tokensdk.server._db import SqlitePersistence
from tokensdk.server._state import ServiceState, token_digest
from tokensdk.server._vault import Vault

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not hasattr(os, "fork"), reason="the crash service forks"),
]

CRASH_SERVICE = Path(__file__).with_name("_crash_service.py")
# A kill and restart cost tens of milliseconds; TOKENSDK_CRASH_ITERATIONS makes a
# longer run (the file-store crash tests read the same variable).
_KILLS = int(os.environ.get("TOKENSDK_CRASH_ITERATIONS", "100"))


class _CrashService(ForkServer):
    """Drives ``_crash_service.py``: start a service child, SIGKILL it; repeat."""

    def run(self) -> str:
        """Start a service child on the database; return its URL once it listens."""
        self.send("run")
        words = self.line()
        if words[0] != "ready":
            self.fail(f"said {words}")
        return words[1]


async def _post(
    http: aiohttp.ClientSession, url: str, path: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    async with http.post(url + path, json=body) as response:
        return response.status, await response.json()


async def _login(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    status, body = await _post(http, url, "/v1/login", {"username": USER, "password": PASSWORD})
    assert status == 200, body
    return body


async def _refresh(
    http: aiohttp.ClientSession, url: str, pair: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    body = {"username": USER, "refreshToken": pair["refreshToken"]}
    return await _post(http, url, "/v1/refresh", body)


async def _refresh_until_killed(
    http: aiohttp.ClientSession,
    url: str,
    pair: dict[str, Any],
    service: _CrashService,
    count: int,
    delay: float,
) -> tuple[dict[str, Any], str]:
    """Refresh in a loop; kill the service ``delay`` s after sending refresh ``count``.

    Returns:
        The pair of the last 200 answer, and how the refresh that failed failed:
        ``sent`` (the request may have reached the service) or ``refused`` (the
        service was dead before it was sent).
    """
    fire = anyio.Event()

    async def killer() -> None:
        await fire.wait()
        # The sleep is the kill point itself, not a wait for something to happen.
        await anyio.sleep(delay)
        await anyio.to_thread.run_sync(service.kill)

    async with anyio.create_task_group() as tg:
        tg.start_soon(killer)
        sent = 0
        while True:
            sent += 1
            if sent == count:
                fire.set()
            try:
                status, body = await _refresh(http, url, pair)
            except aiohttp.ClientConnectorError:
                how = "refused"
                break
            except aiohttp.ClientError:
                how = "sent"
                break
            assert status == 200, body
            pair = body
    return pair, how


def _inspect(db: Path, pair: dict[str, Any], where: str) -> bool:
    """Check the file the kill left; return whether the interrupted rotation committed."""
    state = ServiceState(db=SqlitePersistence(str(db)), vault=Vault.from_file(f"{db}.key"))
    try:
        acked = state.refresh_tokens.get(token_digest(pair["refreshToken"]))
        assert acked is not None, f"the pair of a 200 answer is not on disk at {where}"
        family = state.families[acked.family]
        assert not family.revoked, where
        unused = [
            key
            for key, r in state.refresh_tokens.items()
            if r.family == acked.family and not r.used
        ]
        if acked.used:
            # Committed: the old token is spent and exactly one successor lives.
            assert len(unused) == 1, f"{len(unused)} live refresh tokens at {where}"
            assert len(state.access) >= 2, where
        else:
            # Not committed: no trace of a successor.
            assert unused == [token_digest(pair["refreshToken"])], f"a half rotation at {where}"
        return acked.used
    finally:
        state.db.close()


@pytest.mark.timeout(120 + _KILLS)
async def test_service_killed_mid_rotation_never_accepts_a_refresh_token_twice(
    tmp_path: Path,
) -> None:
    seed = int(os.environ.get("TOKENSDK_SEED", str(random.randrange(2**32))))
    print(f"service crash test: TOKENSDK_SEED={seed} TOKENSDK_CRASH_ITERATIONS={_KILLS}")
    rng = random.Random(seed)
    db = tmp_path / "service.db"
    landed: collections.Counter[str] = collections.Counter()
    service = _CrashService(CRASH_SERVICE, [str(db)], tmp_path / "log")
    connector = aiohttp.TCPConnector(force_close=True)  # a fresh connection per request
    timeout = aiohttp.ClientTimeout(total=GUARD)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            url = await anyio.to_thread.run_sync(service.run)
            pair = await _login(http, url)
            # How long one rotation takes here (disk, fsync, load of the machine): the
            # kills land at random points within about that long after a request.
            took = []
            for _ in range(5):
                started = time.perf_counter()
                status, pair = await _refresh(http, url, pair)
                took.append(time.perf_counter() - started)
                assert status == 200
            rotation = statistics.median(took)
            for kill in range(_KILLS):
                where = f"kill {kill} (TOKENSDK_SEED={seed}, landed so far: {dict(landed)})"
                pair, how = await _refresh_until_killed(
                    http, url, pair, service, rng.randint(1, 3), rng.uniform(0.0, 1.5 * rotation)
                )
                committed = _inspect(db, pair, where)
                assert not (committed and how == "refused"), where
                landed[f"{how}, {'committed' if committed else 'not committed'}"] += 1

                url = await anyio.to_thread.run_sync(service.run)
                # The last pair answered 200 works after the restart...
                async with http.get(
                    url + "/v1/me", headers={"Authorization": f"Bearer {pair['accessToken']}"}
                ) as response:
                    assert response.status == 200, where
                # ... and its refresh token is either unused (not committed) or reuse.
                status, body = await _refresh(http, url, pair)
                if committed:
                    assert (status, body["error"]) == (401, "refresh_token_reused"), where
                    pair = await _login(http, url)
                else:
                    assert status == 200, f"{body} at {where}"
                    pair = body
            await anyio.to_thread.run_sync(service.kill)
    finally:
        service.close()
    print(f"service crash test: {_KILLS} kills landed {dict(landed)}")
    if _KILLS >= 100:
        # Kills drawn over the rotation must hit both sides of the commit, or this
        # test would not test what it says. (Few kills may miss one by chance.)
        assert landed["sent, committed"], landed
        assert landed["sent, not committed"], landed

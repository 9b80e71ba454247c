"""Several service processes over one SQLite file share the replay guard and rate limits.

Real processes (``python -m tokensdk serve``), a real ``redis-server`` (tests/_redis.py),
real sockets. Without ``--redis`` each process keeps its own guard and counts, so
every test here fails: the second process accepts the replayed header, and each
process counts only its own attempts.
"""

from __future__ import annotations

import base64
import contextlib
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from _redis import redis_server

from tokensdk.mac import HEADER_NAME, build_header

pytestmark = pytest.mark.anyio

_START_GUARD = 60.0


@contextlib.contextmanager
def _serve(db: Path, redis_url: str | None, *extra: str) -> Iterator[str]:
    """Run ``python -m tokensdk serve`` on a free port; yield its URL; SIGTERM it after."""
    argv = [
        sys.executable,
        "-m",
        "tokensdk",
        "serve",
        "--user=alice:wonderland",
        "--scrypt-n=16",
        f"--db={db}",
        *extra,
    ]
    if redis_url is not None:
        argv.append(f"--redis={redis_url}")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        readable, _, _ = select.select([proc.stdout], [], [], _START_GUARD)
        line = proc.stdout.readline().decode() if readable else ""
        if not line.startswith("listening on "):
            proc.kill()
            _, err = proc.communicate()
            raise RuntimeError(f"serve did not start: {line!r} {err.decode()[-2000:]}")
        yield line.split()[-1]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=_START_GUARD)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


async def _login(http: aiohttp.ClientSession, url: str, password: str) -> aiohttp.ClientResponse:
    async with http.post(
        url + "/v1/login", json={"username": "alice", "password": password}
    ) as response:
        await response.read()
        return response


@pytest.mark.parametrize("shared", [True, False], ids=["redis", "no-redis"])
async def test_a_mac_header_used_at_one_process_is_replayed_at_the_other(
    tmp_path: Path, shared: bool
) -> None:
    db = tmp_path / "service.db"
    with redis_server(tmp_path / "redis") as redis:
        url = redis.url if shared else None
        async with aiohttp.ClientSession() as http:
            with _serve(db, url) as first:
                async with http.post(
                    first + "/v1/login", json={"username": "alice", "password": "wonderland"}
                ) as response:
                    assert response.status == 200
                    access = (await response.json())["accessToken"]
                async with http.post(
                    first + "/v1/tokens/create",
                    json={"factors": ["possession"]},
                    headers={"Authorization": f"Bearer {access}"},
                ) as response:
                    assert response.status == 200
                    created = await response.json()
                # The second process starts after the token exists: it loads it from
                # the database (records made later by one process are unknown to the
                # other; see docs/PROTOCOL-EXTENSIONS.md).
                with _serve(db, url) as second:
                    secret = base64.b64decode(created["tokenSecret"])
                    header = build_header(created["tokenId"], secret, int(time.time() * 1000))
                    async with http.get(
                        first + "/v1/me/token", headers={HEADER_NAME: header}
                    ) as response:
                        assert response.status == 200, await response.text()
                    async with http.get(
                        second + "/v1/me/token", headers={HEADER_NAME: header}
                    ) as response:
                        body = await response.json()
                    if shared:
                        assert (response.status, body["error"]) == (401, "replayed")
                        fresh = build_header(created["tokenId"], secret, int(time.time() * 1000))
                        async with http.get(
                            second + "/v1/me/token", headers={HEADER_NAME: fresh}
                        ) as response:
                            assert response.status == 200  # the second one works at all
                    else:
                        # Each process has its own guard: the replay goes through.
                        assert response.status == 200, body


@pytest.mark.parametrize("shared", [True, False], ids=["redis", "no-redis"])
async def test_login_attempts_add_up_across_processes(tmp_path: Path, shared: bool) -> None:
    db = tmp_path / "service.db"
    limit = ("--login-rate-limit=4", "--ip-rate-limit=100", "--user-rate-limit=100")
    with redis_server(tmp_path / "redis") as redis:
        url = redis.url if shared else None
        async with aiohttp.ClientSession() as http:
            with _serve(db, url, *limit) as first, _serve(db, url, *limit) as second:
                for target in (first, second, first, second):
                    response = await _login(http, target, "wrong")
                    assert response.status == 401
                # Four bad attempts in all, two at each: the fifth trips the limit
                # of 4 per (username, IP) at either process only if they add up.
                for target in (first, second):
                    response = await _login(http, target, "wonderland")
                    if shared:
                        assert response.status == 429
                        assert int(response.headers["Retry-After"]) >= 1
                    else:
                        assert response.status == 200


async def test_a_success_gives_its_attempt_back_in_redis(tmp_path: Path) -> None:
    # The per-(user, IP) count is cleared by a success at either process.
    db = tmp_path / "service.db"
    limit = ("--login-rate-limit=2", "--ip-rate-limit=100", "--user-rate-limit=100")
    with redis_server(tmp_path / "redis") as redis:
        async with aiohttp.ClientSession() as http:
            with _serve(db, redis.url, *limit) as first, _serve(db, redis.url, *limit) as second:
                assert (await _login(http, first, "wrong")).status == 401
                assert (await _login(http, second, "wonderland")).status == 200
                assert (await _login(http, first, "wrong")).status == 401
                assert (await _login(http, second, "wonderland")).status == 200
                assert (await _login(http, first, "wrong")).status == 401
                assert (await _login(http, second, "wrong")).status == 401
                assert (await _login(http, first, "wonderland")).status == 429


async def test_redis_down_answers_503_and_counts_nothing(tmp_path: Path) -> None:
    db = tmp_path / "service.db"
    with redis_server(tmp_path / "redis") as redis:
        async with aiohttp.ClientSession() as http:
            with _serve(db, redis.url) as url:
                assert (await _login(http, url, "wonderland")).status == 200
                redis.kill()
                response = await _login(http, url, "wonderland")
                assert response.status == 503
                assert response.headers["Retry-After"] == "1"
                redis.start()
                assert (await _login(http, url, "wonderland")).status == 200

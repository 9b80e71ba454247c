"""The reference service against unauthenticated resource exhaustion (issue 10, section 4).

Concurrent password guessing from one address, bounded password hashing, string
length limits, one-time keys for made-up users, per-IP limits on keys and
challenges, header limits, slow request heads, and the owner-lockout limit.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from _service import call, login, service
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from yarl import URL

import tokensdk.server._app as app_module
import tokensdk.server._logins as logins_module
from tokensdk import ManualClock
from tokensdk.server import RunningService, ServiceConfig
from tokensdk.server._state import UserRecord

pytestmark = pytest.mark.anyio

PUB = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # No pool limit: concurrent requests reach the service concurrently.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


@pytest.fixture
async def http2() -> AsyncIterator[aiohttp.ClientSession]:
    """A client on another loopback address: another client IP for the service."""
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def _gather(count: int, attempt: Any) -> list[tuple[int, Any, Any]]:
    results: list[tuple[int, Any, Any]] = []

    async def one(i: int) -> None:
        results.append(await attempt(i))

    async with anyio.create_task_group() as tg:
        for i in range(count):
            tg.start_soon(one, i)
    return results


# -- password guessing and hashing -----------------------------------------------------


async def test_concurrent_logins_from_one_ip_are_counted_before_hashing(
    http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    # 300 concurrent logins, each with another username, from one address: the
    # per-IP limit (5 x 10 by default) counts each attempt before its password is
    # hashed (or refused as busy), so no more than the limit are ever hashed and
    # most get 429. Counted after the hash (as before), every attempt in flight got
    # past the limit: all hashed, all 401.
    async with service(clock, scrypt_n=2**12) as svc:

        async def attempt(i: int) -> tuple[int, Any, Any]:
            body = {"username": f"user{i}", "password": "guess"}
            return await call(http, svc, "POST", "/v1/login", body)

        results = await _gather(300, attempt)
        limit = 5 * svc.config.login_rate_limit
        statuses = [status for status, _, _ in results]
        assert set(statuses) <= {401, 429, 503}
        assert statuses.count(429) >= 300 - limit
        assert statuses.count(401) <= limit
        assert svc.stats.password_hashes == statuses.count(401) <= limit
        for status, body, headers in results:
            if status != 401:
                assert int(headers["Retry-After"]) >= 1
                assert body["error"] == ("rate_limited" if status == 429 else "service_busy")


async def test_password_hashing_is_bounded_and_excess_gets_503(
    http: aiohttp.ClientSession, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One hash at a time, two may wait: of 40 logins arriving while the first hash
    # is held, 37 are answered 503 at once, without hashing and without counting
    # against anyone's rate limit.
    running = 0
    most = 0
    lock = threading.Lock()
    held = threading.Event()
    verify = logins_module.verify_password

    def counting(record: UserRecord | None, password: str, dummy_n: int) -> bool:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            held.wait(timeout=30)
            return verify(record, password, dummy_n)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(logins_module, "verify_password", counting)
    results: list[tuple[int, Any, Any]] = []
    refused = anyio.Event()
    async with service(clock, hash_concurrency=1, hash_queue=2, ip_rate_limit=10**6) as svc:

        async def attempt(i: int) -> None:
            body = {"username": f"user{i}", "password": "guess"}
            results.append(await call(http, svc, "POST", "/v1/login", body))
            if len(results) == 37:
                refused.set()

        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(attempt, i)
            with anyio.fail_after(30):
                await refused.wait()
            held.set()
        statuses = [status for status, _, _ in results]
        assert sorted(statuses) == [401] * 3 + [503] * 37
        assert most == 1
        assert (svc.stats.password_hashes, svc.stats.busy) == (3, 37)
        for status, body, headers in results:
            if status == 503:
                assert (body["error"], headers["Retry-After"]) == ("service_busy", "1")
        # Busy answers counted against nobody's username: the owner still logs in.
        assert (await login(http, svc))["username"] == "alice"


async def test_a_flood_from_one_address_does_not_lock_the_owner_out(
    http: aiohttp.ClientSession, http2: aiohttp.ClientSession, clock: ManualClock
) -> None:
    async with service(clock, login_rate_limit=5) as svc:
        bad = {"username": "alice", "password": "guess"}
        for _ in range(5):
            status, _, _ = await call(http, svc, "POST", "/v1/login", bad)
            assert status == 401
        status, body, _ = await call(http, svc, "POST", "/v1/login", bad)
        assert (status, body["error"]) == (429, "rate_limited")
        # Alice, from another address, is not locked out by the attacker's failures.
        tokens = await login(http2, svc)
        assert tokens["username"] == "alice"
        # The attacker's address stays limited for alice.
        status, _, _ = await call(http, svc, "POST", "/v1/login", bad)
        assert status == 429


async def test_the_per_user_ceiling_holds_across_addresses(
    http: aiohttp.ClientSession, http2: aiohttp.ClientSession, clock: ManualClock
) -> None:
    # Guessing from many addresses stays slow: the documented price is that an
    # attacker with enough addresses can reach the ceiling and lock the owner out
    # for one window.
    async with service(clock, login_rate_limit=5, user_rate_limit=8) as svc:
        bad = {"username": "alice", "password": "guess"}
        for session, tries in ((http, 5), (http2, 3)):
            for _ in range(tries):
                status, _, _ = await call(session, svc, "POST", "/v1/login", bad)
                assert status == 401
        status, body, _ = await call(http2, svc, "POST", "/v1/login", bad)
        assert (status, body["error"]) == (429, "rate_limited")
        clock.advance(svc.config.login_rate_window)
        assert (await login(http2, svc))["username"] == "alice"


async def test_successful_logins_do_not_use_up_the_address_limit(
    http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    # Many people behind one address (an office) log in all the time: a success
    # gives back the attempt it counted.
    async with service(clock, login_rate_limit=2) as svc:
        for _ in range(30):
            await login(http, svc)
        assert len(svc.app[app_module.SERVICE_KEY].ip_limiter) == 0


# -- lengths, keys and challenges -------------------------------------------------------

_LONG = "x" * 60_000


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/login", {"username": _LONG, "password": "p"}),
        ("/v1/login", {"username": "alice", "password": _LONG}),
        ("/v1/login/one-time-key", {"username": _LONG}),
        ("/v1/login/with-one-time-key", {"username": _LONG, "hash": "00"}),
        ("/v1/login/with-one-time-key", {"username": "alice", "hash": _LONG}),
        ("/v1/login/with-token", {"username": "alice", "accessToken": _LONG}),
        ("/v1/refresh", {"username": _LONG, "refreshToken": "t"}),
        ("/v1/refresh", {"username": "alice", "refreshToken": _LONG}),
        ("/v1/assets/challenge", {"assetId": _LONG}),
        ("/v1/assets/validate", {"token": _LONG}),
        ("/v1/assets/revoke", {"token": _LONG}),
        (
            "/v1/assets/token",
            {"challenge": {"assetId": _LONG, "timestamp": "1", "nonce": "n"}, "signature": "0"},
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
async def test_long_strings_are_refused_before_anything_is_stored(
    http: aiohttp.ClientSession, clock: ManualClock, tmp_path: Path, path: str, body: Any
) -> None:
    async with service(clock, db=str(tmp_path / "s.db")) as svc:
        rows = _row_count(svc)
        status, answer, _ = await call(http, svc, "POST", path, body)
        assert (status, answer["error"]) == (400, "invalid_request")
        assert "longer than" in answer["message"]
        assert _row_count(svc) == rows
        assert svc.stats.password_hashes == 0


async def test_length_limits_are_exact(http: aiohttp.ClientSession, clock: ManualClock) -> None:
    async with service(clock) as svc:
        tokens = await login(http, svc)
        for name, limit in (("username", 256), ("password", 1024)):
            for length, expected in ((limit, 401), (limit + 1, 400)):
                body = {"username": "alice", "password": "p", name: "é" * length}
                status, _, _ = await call(http, svc, "POST", "/v1/login", body)
                assert status == expected, (name, length)
        for length, expected in ((256, 201), (257, 400)):
            body = {"assetId": "a" * length, "publicKey": PUB}
            status, _, _ = await call(
                http, svc, "POST", "/v1/assets/register", body, token=tokens["accessToken"]
            )
            assert status == expected


async def test_long_configured_names_are_refused_at_start(clock: ManualClock) -> None:
    with pytest.raises(ValueError, match="limited to 256"):
        app_module.create_app(ServiceConfig(users={"u" * 257: "p"}, clock=clock))
    with pytest.raises(ValueError, match="asset id longer than 256"):
        app_module.create_app(ServiceConfig(assets={"a" * 257: PUB}, clock=clock))


def _row_count(svc: RunningService) -> int:
    state = svc.state
    tables = (state.one_time_keys, state.challenges, state.families, state.access)
    return sum(len(table) for table in tables)


async def test_keys_for_unknown_users_store_nothing(
    http: aiohttp.ClientSession, clock: ManualClock, tmp_path: Path
) -> None:
    db = tmp_path / "s.db"
    async with service(clock, db=str(db), ip_rate_limit=10**6) as svc:

        async def ask(i: int) -> tuple[int, Any, Any]:
            return await call(
                http, svc, "POST", "/v1/login/one-time-key", {"username": f"nobody{i}"}
            )

        results = await _gather(1000, ask)
        _, real, _ = await call(http, svc, "POST", "/v1/login/one-time-key", {"username": "bob"})
        # Unknown or not, a key looks the same ...
        assert {status for status, _, _ in results} == {200}
        assert {len(body["key"]) for _, body, _ in results} == {len(real["key"])}
        # ... but only the real user's is stored.
        assert list(svc.state.one_time_keys) == ["bob"]
        # An unknown user's key is unanswerable, like a wrong answer for a real one.
        status, body, _ = await call(
            http, svc, "POST", "/v1/login/with-one-time-key", {"username": "nobody1", "hash": "0"}
        )
        assert (status, body["error"]) == (401, "invalid_credentials")
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT key FROM one_time_keys").fetchall() == [("bob",)]


async def test_key_and_challenge_requests_are_limited_per_address(
    http: aiohttp.ClientSession, http2: aiohttp.ClientSession, clock: ManualClock
) -> None:
    async with service(clock, ip_rate_limit=3, assets={"door": PUB}) as svc:
        for path, field, values in (
            ("/v1/login/one-time-key", "username", [f"u{i}" for i in range(4)]),
            ("/v1/assets/challenge", "assetId", ["door", "door", "nothing", "door"]),
        ):
            statuses = [
                (await call(http, svc, "POST", path, {field: value}))[0] for value in values
            ]
            assert statuses[:3] in ([200, 200, 200], [200, 200, 404])
            assert statuses[3] == 429
            # Another address is not affected.
            status, _, _ = await call(http2, svc, "POST", path, {field: values[0]})
            assert status == 200


async def test_challenges_per_asset_have_a_ceiling(
    http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    async with service(clock, user_rate_limit=4, assets={"door": PUB}) as svc:
        statuses = [
            (await call(http, svc, "POST", "/v1/assets/challenge", {"assetId": "door"}))[0]
            for _ in range(5)
        ]
        assert statuses == [200, 200, 200, 200, 429]
        assert len(svc.state.challenges) == 4


# -- headers and slow request heads -----------------------------------------------------


async def _open(svc: RunningService) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    url = URL(svc.url)
    assert url.host is not None
    assert url.port is not None
    return await asyncio.open_connection(url.host, url.port)


def _parse(raw: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


_STATUS = b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n"


async def test_a_slow_request_head_is_closed_after_the_header_timeout(
    clock: ManualClock,
) -> None:
    async with service(clock, header_timeout=0.3) as svc:
        reader, writer = await _open(svc)
        started = time.monotonic()
        writer.write(b"POST /v1/login HTTP/1.1\r\nHost: x\r\nContent-Ty")
        await writer.drain()
        with anyio.fail_after(10):  # a guard: aiohttp alone would wait 75 s
            assert await reader.read() == b""  # closed by the service, no answer
        assert time.monotonic() - started >= 0.25
        writer.close()

        # A connection that says nothing at all goes the same way.
        reader, writer = await _open(svc)
        with anyio.fail_after(10):
            assert await reader.read() == b""
        writer.close()


async def test_the_header_timeout_restarts_with_each_request_head(clock: ManualClock) -> None:
    async with service(clock, header_timeout=0.3) as svc:
        reader, writer = await _open(svc)
        # A head in pieces, complete in time: answered.
        writer.write(_STATUS[:10])
        await writer.drain()
        writer.write(_STATUS[10:])
        await writer.drain()
        with anyio.fail_after(10):
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            length = 0
            while length == 0:
                length = len(await reader.read(65536))  # the small JSON body
        # Idle between requests is the keep-alive timeout's business, not this one's:
        # waiting past the header timeout proves the connection is still open.
        await anyio.sleep(0.6)
        writer.write(_STATUS)
        await writer.drain()
        with anyio.fail_after(10):
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            await reader.read(65536)
        # The next head starts its own clock with its first byte.
        writer.write(b"GET /v1/status HTTP/1.1\r\nHo")
        await writer.drain()
        with anyio.fail_after(10):
            assert await reader.read() == b""
        writer.close()


async def test_oversized_headers_are_refused_with_json(clock: ManualClock) -> None:
    async with service(clock) as svc:
        # The first of 127 headers of 60 KB each is refused already: 400, closed.
        reader, writer = await _open(svc)
        writer.write(b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Pad-0: " + b"a" * 60_000 + b"\r\n")
        await writer.drain()
        with anyio.fail_after(10):
            raw = await reader.read()
        writer.close()
        status, body = _parse(raw)
        assert (status, body["error"]) == (400, "invalid_request")
        # Within aiohttp's 8190-byte limit a long MAC header reaches the handler (and
        # gets the contract's error); beyond it, the HTTP layer refuses it, in JSON.
        for length, expected in ((8_000, 401), (9_000, 400)):
            reader, writer = await _open(svc)
            header = b"X-PowerAuth-Token: PowerAuth " + b"x" * length
            writer.write(b"GET /v1/me/token HTTP/1.1\r\nHost: x\r\nConnection: close\r\n")
            writer.write(header + b"\r\n\r\n")
            await writer.drain()
            with anyio.fail_after(10):
                raw = await reader.read()
            writer.close()
            status, body = _parse(raw)
            assert status == expected
            assert set(body) >= {"error", "code", "message"}


def test_default_limits() -> None:
    config = ServiceConfig()
    assert config.header_timeout == 5.0
    assert config.scrypt_n == 2**17
    assert (config.hash_concurrency, config.hash_queue, config.user_rate_limit) == (
        None,
        None,
        None,
    )

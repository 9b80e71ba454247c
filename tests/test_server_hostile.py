"""The reference service under hostile input: raw HTTP garbage, bursts, odd text."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import anyio
import pytest
from _service import call, service
from yarl import URL

from tokensdk import ManualClock

pytestmark = pytest.mark.anyio


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _raw(url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    parsed = URL(url)
    assert parsed.host is not None
    assert parsed.port is not None
    async with await anyio.connect_tcp(parsed.host, parsed.port) as stream:
        await stream.send(request)
        chunks = []
        try:
            while True:
                chunks.append(await stream.receive())
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            pass
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /v1/status HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n",
        b"GET /v1/status HTTP/9.9\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
        b"GET /v1/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + b"a" * 100_000 + b"\r\n\r\n",
        b"POST /v1/login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /v1/login HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    ],
)
async def test_unparsable_requests_get_json_errors(
    clock: ManualClock, request_bytes: bytes
) -> None:
    async with service(clock) as svc:
        status, headers, body = await _raw(svc.url, request_bytes)
    assert 400 <= status < 500
    assert headers["content-type"].startswith("application/json")
    parsed = json.loads(body)
    assert set(parsed) == {"error", "code", "message"}
    assert parsed["code"] == status


async def test_concurrent_wrong_logins_engage_rate_limit(
    http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    statuses: list[int] = []
    async with service(clock, login_rate_limit=5) as svc:

        async def attempt() -> None:
            status, _, _ = await call(
                http, svc, "POST", "/v1/login", {"username": "alice", "password": "guess"}
            )
            statuses.append(status)

        async with anyio.create_task_group() as tg:
            for _ in range(40):
                tg.start_soon(attempt)
    assert statuses.count(401) == 5
    assert statuses.count(429) == 35


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/v1/login", b'{"username": "\\ud800", "password": "x"}'),
        ("/v1/login/one-time-key", b'{"username": "\\udfff"}'),
        ("/v1/assets/challenge", b'{"assetId": "\\ud800"}'),
        ("/v1/refresh", b'{"username": "a", "refreshToken": "\\ud800"}'),
        ("/v1/assets/validate", b'{"token": "\\ud800"}'),
    ],
)
async def test_lone_surrogates_rejected(
    http: aiohttp.ClientSession, clock: ManualClock, path: str, raw: bytes, tmp_path: object
) -> None:
    async with service(clock, db=str(tmp_path) + "/s.db") as svc:
        status, body, _ = await call(
            http, svc, "POST", path, data=raw, headers={"Content-Type": "application/json"}
        )
    assert (status, body["error"]) == (400, "invalid_request")


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "FOO", "OPTIONS"])
async def test_other_methods_get_json(
    http: aiohttp.ClientSession, clock: ManualClock, method: str
) -> None:
    async with service(clock) as svc:
        for path in ("/v1/login", "/v1/status", "/v1/keys", "/v1/assets/token", "/nothing"):
            status, body, _ = await call(http, svc, method, path)
            assert status in (400, 404, 405)  # llhttp refuses unknown methods: 400
            assert body["code"] == status


async def test_unicode_usernames_work_in_sqlite(
    http: aiohttp.ClientSession, clock: ManualClock, tmp_path: object
) -> None:
    async with service(clock, db=str(tmp_path) + "/s.db", users={"名前": "pässwörd"}) as svc:
        status, body, _ = await call(
            http, svc, "POST", "/v1/login", {"username": "名前", "password": "pässwörd"}
        )
        assert (status, body["username"]) == (200, "名前")


async def test_parse_errors_do_not_log_header_values(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    secret = b"s3cr3t-token-" * 8000
    caplog.set_level("DEBUG")
    async with service(clock) as svc:
        status, _, _ = await _raw(
            svc.url,
            b"GET /v1/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + secret + b"\r\n\r\n",
        )
    assert status == 400
    assert "s3cr3t" not in caplog.text

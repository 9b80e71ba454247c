"""The reference service under hostile input: raw HTTP garbage, bursts, odd text, and a
hypothesis fuzz of every endpoint with its own method (malformed bodies, with and
without valid authentication).

``TOKENSDK_ITERATIONS`` scales the fuzz (derandomized: the same examples every run).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio
import attrs
import pytest
from _service import PASSWORDS, call, login, service
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from yarl import URL

from tokensdk import ManualClock
from tokensdk.mac import build_header
from tokensdk.server import RunningService
from tokensdk.server._app import _ROUTES

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


# -- every endpoint, right method, malformed bodies, with and without authentication ---
#
# For each endpoint of the contract (docs/PROTOCOL.md), hypothesis sends many bodies with
# the endpoint's own method: JSON objects whose fields (the contract's names) hold
# the live valid value (a real token, a fresh challenge and its signature, the right
# one-time key answer), a near miss of it, or anything at all; plus non-objects, cut JSON,
# binary junk, oversized bodies and odd content types. "authenticated" sends a valid
# bearer token (and, for GET /v1/me/token, a valid MAC header), so the bodies of the
# endpoints behind authentication are parsed too; "anonymous" sends none or junk.
# Every answer must be a documented success of that endpoint or a contract error
# body {"error", "code", "message"} with a documented (status, error): never a 5xx.

ITERATIONS = int(os.environ.get("TOKENSDK_ITERATIONS", "300"))
FUZZ = settings(
    derandomize=True,  # the same examples on every run: no flaky CI
    database=None,
    deadline=None,
    max_examples=max(ITERATIONS // 5, 40),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
HOLDER = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
HOLDER_HEX = HOLDER.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()

_LOGIN_TOKENS = {
    "accessToken": str,
    "accessExpire": int,
    "refreshToken": str,
    "refreshExpire": int,
    "username": str,
}
_GENERIC = {(400, "invalid_request"), (413, "payload_too_large")}
_BEARER = {(401, "invalid_token")}
_MAC_ERRORS = {
    (401, name)
    for name in ("token_invalid", "timestamp_too_old", "timestamp_in_future", "replayed")
}


@attrs.frozen
class Endpoint:
    """An endpoint as docs/PROTOCOL.md states it.

    Attributes:
        method: Its method.
        successes: Documented success status -> the answer's fields and their types
            (None: no body).
        errors: Documented (status, error) pairs, besides the generic 400 and 413.
        auth: "bearer", "mac" or None.
        fields: The body's fields.
    """

    method: str
    successes: dict[int, dict[str, Any] | None]
    errors: set[tuple[int, str]] = attrs.field(factory=set)
    auth: str | None = None
    fields: tuple[str, ...] = ()


_LOGIN_ERRORS = {(401, "invalid_credentials"), (403, "account_frozen"), (429, "rate_limited")}
_TOKEN_ERRORS = {(401, "invalid_token"), (401, "token_expired")}
ENDPOINTS = {
    "/v1/status": Endpoint("GET", {200: {"serverTime": int, "realm": str, "version": str}}),
    "/v1/login": Endpoint(
        "POST", {200: _LOGIN_TOKENS}, _LOGIN_ERRORS, fields=("username", "password")
    ),
    "/v1/login/one-time-key": Endpoint(
        "POST", {200: {"key": str}}, {(429, "rate_limited")}, fields=("username",)
    ),
    "/v1/login/with-one-time-key": Endpoint(
        "POST", {200: _LOGIN_TOKENS}, _LOGIN_ERRORS, fields=("username", "hash")
    ),
    "/v1/login/with-token": Endpoint(
        "POST",
        {200: {"username": str, "accessExpire": int}},
        _TOKEN_ERRORS,
        fields=("username", "accessToken"),
    ),
    "/v1/refresh": Endpoint(
        "POST",
        {200: _LOGIN_TOKENS},
        _TOKEN_ERRORS | {(401, "refresh_token_reused")},
        fields=("username", "refreshToken", "idempotencyKey"),
    ),
    "/v1/logout": Endpoint("POST", {204: None}, _BEARER, auth="bearer"),
    "/v1/me": Endpoint("GET", {200: {"username": str}}, _BEARER, auth="bearer"),
    "/v1/tokens/create": Endpoint(
        "POST",
        {200: {"tokenId": str, "tokenSecret": str}},
        _BEARER | {(401, "invalid_credentials"), (429, "rate_limited")},
        auth="bearer",
        fields=("factors", "password"),
    ),
    "/v1/tokens/remove": Endpoint(
        "POST",
        {200: {"tokenId": str}},
        _BEARER | {(404, "unknown_token")},
        auth="bearer",
        fields=("tokenId",),
    ),
    "/v1/me/token": Endpoint(
        "GET", {200: {"username": str, "tokenId": str, "factors": list}}, _MAC_ERRORS, auth="mac"
    ),
    "/v1/assets/register": Endpoint(
        "POST",
        {201: {"assetId": str, "publicKey": str}},
        _BEARER | {(409, "asset_exists")},
        auth="bearer",
        fields=("assetId", "publicKey"),
    ),
    "/v1/assets/challenge": Endpoint(
        "POST",
        {200: {"assetId": str, "timestamp": str, "nonce": str}},
        {(404, "unknown_asset")},
        fields=("assetId",),
    ),
    "/v1/assets/token": Endpoint(
        "POST",
        {200: {"assetIds": list, "accessToken": str}},
        {
            (401, "invalid_signature"),
            (401, "challenge_expired"),
            (401, "challenge_used"),
            (404, "unknown_asset"),
        },
        fields=("challenge", "signature"),
    ),
    "/v1/assets/validate": Endpoint(
        "POST", {200: {"assetIds": list}}, _TOKEN_ERRORS, fields=("token",)
    ),
    "/v1/assets/revoke": Endpoint("POST", {204: None}, {(401, "invalid_token")}, fields=("token",)),
    "/v1/keys": Endpoint("GET", {200: {"keys": list}}),
}


def test_the_fuzz_covers_every_route_of_the_service() -> None:
    # A route added to the service without a line above would go unfuzzed.
    assert {(e.method, path) for path, e in ENDPOINTS.items()} == {
        (method, path) for method, path, _ in _ROUTES
    }


@attrs.frozen
class Live:
    """Stands for a field's currently valid value, resolved when the request is sent.

    ``variant`` -1 is the valid value itself; 0 and up are near misses of it (cut,
    extended, case-changed, the previous refresh token, ...).
    """

    name: str
    variant: int = -1


ABSENT = Live("absent")
_EXTREME = [0, -1, 2**63, 10**400, float("nan"), float("inf"), 1e308, True]
json_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.sampled_from(_EXTREME)
    | st.text(max_size=20)
    | st.sampled_from(["", "alice", "\x00", "\ud800", "\udfff", "é" * 3, "v4.public.AAAA"])
)
json_values = st.recursive(
    json_leaves,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=6,
)


def _field_values(name: str) -> st.SearchStrategy[Any]:
    live: st.SearchStrategy[Any] = st.just(Live(name))
    if name == "challenge":
        # The fresh challenge, or one with a part changed or missing.
        parts = {
            part: st.just(Live(part)) | st.builds(Live, st.just(part), st.integers(0, 5))
            for part in ("assetId", "timestamp", "nonce")
        }
        live = live | st.fixed_dictionaries({}, optional=parts)
    if name == "factors":
        live = st.sampled_from([["possession"], ["possession", "knowledge"]])
    near = st.builds(Live, st.just(name), st.integers(0, 5))
    # Mostly the valid value or a near miss, so that most bodies pass the shape checks
    # and reach the endpoint's own logic; else missing, or anything at all.
    return st.one_of(live, live, live, near, near, st.just(ABSENT), json_leaves, json_values)


def _near_miss(value: Any, variant: int) -> Any:
    if isinstance(value, list):  # factors
        return [
            [],
            ["possession", "possession"],
            ["POSSESSION"],
            ["knowledge", "possession"],
            "possession",
            [["possession"]],
        ][variant]
    if not isinstance(value, str):
        return value
    return [
        value[:-1],
        value + "A",
        value[1:],
        value.swapcase(),
        " " + value,
        "é" + value,
    ][variant]


def body_plans(endpoint: Endpoint) -> st.SearchStrategy[dict[str, Any]]:
    """The endpoint's fields (each valid, near, missing or anything) plus unknown ones."""
    fields = st.fixed_dictionaries({name: _field_values(name) for name in endpoint.fields})
    extra = st.dictionaries(st.text(max_size=10), json_values, max_size=2)
    return st.builds(
        lambda extra, fields: {
            **extra,
            **{name: value for name, value in fields.items() if value != ABSENT},
        },
        extra,
        fields,
    )


# How the body goes on the wire: mostly JSON (to reach the fields), else broken.
ENCODINGS = ["json"] * 6 + ["ascii", "cut", "not-object", "binary", "empty", "huge"]
CONTENT_TYPES = [None, "application/json", "text/plain", "application/x-www-form-urlencoded"]
ANONYMOUS = [
    None,
    "Bearer",
    "Bearer ",
    "Basic YWxpY2U6d29uZGVybGFuZA==",
    "Bearer " + "x" * 3000,
    "Bearer \t junk",
    "Token abc",
]
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80)
mac_value = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters='"\\'), max_size=40
)


@attrs.define
class World:
    """A running service, a client, and the live values bodies may refer to."""

    svc: RunningService
    http: aiohttp.ClientSession
    clock: ManualClock
    access: str = ""
    refresh: str = ""
    previous_refresh: str | None = None
    mac: tuple[str, bytes] | None = None
    asset_token: str = ""
    challenge: dict[str, str] | None = None

    async def login(self) -> None:
        tokens = await login(self.http, self.svc)
        self.access, self.refresh = tokens["accessToken"], tokens["refreshToken"]
        self.mac = None

    async def ensure_session(self) -> None:
        """Log in again when a fuzzed logout or refresh reuse killed the family."""
        status, _, _ = await call(self.http, self.svc, "GET", "/v1/me", token=self.access)
        if status != 200:
            await self.login()

    async def ensure_mac(self) -> tuple[str, bytes]:
        await self.ensure_session()  # a MAC token dies with its family
        if self.mac is None or self.svc.state.live_mac_token(self.mac[0], self.now()) is None:
            body = {"factors": ["possession"]}
            status, answer, _ = await call(
                self.http, self.svc, "POST", "/v1/tokens/create", body, token=self.access
            )
            assert status == 200, answer
            self.mac = (answer["tokenId"], base64.b64decode(answer["tokenSecret"]))
        return self.mac

    def now(self) -> float:
        return self.clock.time()

    async def fresh_challenge(self) -> dict[str, str]:
        if self.challenge is None:
            body = {"assetId": "door"}
            status, answer, _ = await call(
                self.http, self.svc, "POST", "/v1/assets/challenge", body
            )
            assert status == 200, answer
            self.challenge = answer
        return self.challenge

    async def valid(self, name: str, body: dict[str, Any]) -> Any:
        if name == "username":
            return "alice"
        if name == "password":
            return PASSWORDS["alice"]
        if name == "hash":
            _, answer, _ = await call(
                self.http, self.svc, "POST", "/v1/login/one-time-key", {"username": "alice"}
            )
            return _otk_answer(answer["key"], "alice", PASSWORDS["alice"])
        if name == "accessToken":
            return self.access
        if name == "refreshToken":
            return self.refresh
        if name == "idempotencyKey":
            return "fuzz-1"
        if name == "factors":
            return ["possession"]
        if name == "tokenId":
            return (await self.ensure_mac())[0]
        if name == "publicKey":
            return HOLDER_HEX
        if name == "challenge":
            return dict(await self.fresh_challenge())
        if name == "assetId":
            return "door"
        if name in ("timestamp", "nonce"):
            return (await self.fresh_challenge())[name]
        if name == "signature":
            challenge = body.get("challenge")
            if isinstance(challenge, dict) and all(isinstance(v, str) for v in challenge.values()):
                data = json.dumps(challenge, separators=(",", ":"), sort_keys=True).encode()
                return HOLDER.sign(data).hex()
            return "00" * 64
        if name == "token":
            return self.asset_token
        raise AssertionError(name)

    async def resolve(self, value: Any, body: dict[str, Any]) -> Any:
        if isinstance(value, Live):
            if value.name == "refreshToken" and value.variant == 0 and self.previous_refresh:
                return self.previous_refresh  # reuse: the service revokes the family
            valid = await self.valid(value.name, body)
            return valid if value.variant < 0 else _near_miss(valid, value.variant)
        if isinstance(value, dict):
            # The challenge before the signature: the signature signs the resolved one.
            out: dict[str, Any] = {}
            for key in sorted(value, key=lambda k: k == "signature"):
                out[key] = await self.resolve(value[key], out)
            return out
        if isinstance(value, list):
            return [await self.resolve(item, body) for item in value]
        return value

    def learn(self, path: str, status: int, answer: Any) -> None:
        """Keep the live values live after what a fuzzed request did."""
        if path == "/v1/refresh" and status == 200:
            self.previous_refresh = self.refresh
            self.access, self.refresh = answer["accessToken"], answer["refreshToken"]
        if path in ("/v1/assets/token", "/v1/assets/challenge"):
            self.challenge = None  # used, or replaced: fetch a fresh one next time


def _otk_answer(key: str, username: str, password: str) -> str:
    inner = hashlib.sha256(f"{username}:tokensdk:{password}".encode()).hexdigest()
    return hashlib.sha256(f"{key}|{inner}".encode()).hexdigest()


@pytest.fixture
async def world(clock: ManualClock) -> AsyncIterator[World]:
    # No rate limit in the way: the fuzz logs in again after every fuzzed logout.
    async with (
        service(clock, login_rate_limit=10**6, assets={"door": HOLDER_HEX}) as svc,
        aiohttp.ClientSession() as http,
    ):
        world = World(svc, http, clock)
        await world.login()
        challenge = await world.fresh_challenge()
        data = json.dumps(challenge, separators=(",", ":"), sort_keys=True).encode()
        status, answer, _ = await call(
            http,
            svc,
            "POST",
            "/v1/assets/token",
            {"challenge": challenge, "signature": HOLDER.sign(data).hex()},
        )
        assert status == 200, answer
        world.asset_token = answer["accessToken"]
        world.challenge = None
        yield world


def _encode(body: Any, encoding: str, cut: int, junk: bytes) -> bytes | None:
    if encoding == "empty":
        return None
    if encoding == "binary":
        return junk
    if encoding == "huge":  # over the 64 KiB body limit
        return json.dumps({**body, "pad": "x" * 70_000}).encode()
    if encoding == "not-object":
        body = list(body.values())
    text = json.dumps(body, allow_nan=True, ensure_ascii=encoding == "ascii")
    raw = text.encode("utf-8", "surrogatepass")  # lone surrogates: invalid UTF-8
    return raw[:cut] if encoding == "cut" else raw


async def _mac_header(world: World, offset_ms: int, nonce: bytes, version: str) -> str:
    token_id, secret = await world.ensure_mac()
    now_ms = int(world.clock.time() * 1000) + offset_ms
    return build_header(token_id, secret, now_ms, nonce=nonce, version=version)


def _replace_field(header: str, name: str, value: str) -> str:
    if name == "x":  # an unknown field
        return header + f', x="{value}"'
    return re.sub(f'{name}="[^"]*"', lambda _: f'{name}="{value}"', header)


def _check_answer(endpoint: Endpoint, status: int, headers: Any, raw: bytes, case: Any) -> Any:
    """Assert the answer is a documented success or a documented contract error."""
    assert status < 500, case
    if status in endpoint.successes:
        shape = endpoint.successes[status]
        if shape is None:
            assert raw == b"", case
            return None
        answer = json.loads(raw)
        for name, kind in shape.items():
            assert isinstance(answer[name], kind), case
        return answer
    assert status >= 400, case
    assert headers["Content-Type"].startswith("application/json"), case
    answer = json.loads(raw)
    assert set(answer) >= {"error", "code", "message"}, case
    assert isinstance(answer["message"], str), case
    assert (status, answer["error"]) in endpoint.errors | _GENERIC, case
    assert answer["code"] == (701 if answer["error"] == "token_expired" else status), case
    if status == 429:
        assert int(headers["Retry-After"]) >= 1, case
    if (status, answer["error"]) == (401, "invalid_token") and endpoint.auth == "bearer":
        assert headers["WWW-Authenticate"].startswith("Bearer "), case
    return answer


def _endpoint_fuzz(path: str) -> Any:
    """The fuzz test of one endpoint (one function each: the body strategy is its own)."""
    endpoint = ENDPOINTS[path]

    @pytest.mark.parametrize("auth", ["authenticated", "anonymous"])
    @FUZZ
    @given(
        body=body_plans(endpoint),
        encoding=st.sampled_from(ENCODINGS),
        cut=st.integers(0, 300),
        junk=st.binary(max_size=64),
        content_type=st.sampled_from(CONTENT_TYPES),
        bearer=st.sampled_from(["Bearer {}", "bearer {}", "Bearer   {}  "]),
        anonymous=st.sampled_from(ANONYMOUS) | header_text,
        mac_offset_ms=st.sampled_from([0, 0, 0, -1000, 1000, -601_000, 121_000]),
        mac_nonce=st.binary(min_size=16, max_size=16),
        mac_version=st.sampled_from(["3.3", "3.2", "3.1", "3.0"]),
        mac_junk=header_text,
        # Per field: kept (None), or its value replaced (mostly by what a quoted
        # string can hold, so that the parser gets to the field's own check).
        mac_near=st.fixed_dictionaries(
            {
                name: st.none() | mac_value | header_text
                for name in ("version", "token_id", "token_digest", "nonce", "timestamp", "x")
            }
        ),
        mac_mode=st.sampled_from(["junk", "near", "near"]),
    )
    async def test(
        world: World,
        auth: str,
        body: dict[str, Any],
        encoding: str,
        cut: int,
        junk: bytes,
        content_type: str | None,
        bearer: str,
        anonymous: str | None,
        mac_offset_ms: int,
        mac_nonce: bytes,
        mac_version: str,
        mac_junk: str,
        mac_near: dict[str, str | None],
        mac_mode: str,
    ) -> None:
        headers: dict[str, str] = {}
        if content_type is not None:
            headers["Content-Type"] = content_type
        if auth == "authenticated":
            await world.ensure_session()
            headers["Authorization"] = bearer.format(world.access)
            if endpoint.auth == "mac":
                headers["X-PowerAuth-Token"] = await _mac_header(
                    world, mac_offset_ms, mac_nonce, mac_version
                )
        else:
            if anonymous is not None:
                headers["Authorization"] = anonymous
            if endpoint.auth == "mac":
                # Junk, or a valid header with one field's value replaced by junk.
                valid = await _mac_header(world, mac_offset_ms, mac_nonce, mac_version)
                near = valid
                for name, value in mac_near.items():
                    near = near if value is None else _replace_field(near, name, value)
                headers["X-PowerAuth-Token"] = mac_junk if mac_mode == "junk" else near
        data = _encode(await world.resolve(body, {}), encoding, cut, junk)
        url = world.svc.url + path
        async with world.http.request(endpoint.method, url, data=data, headers=headers) as r:
            raw = await r.read()
            status, answer_headers = r.status, r.headers
        case = (path, auth, encoding, headers, (data or b"")[:200], raw[:300])
        answer = _check_answer(endpoint, status, answer_headers, raw, case)
        if status in endpoint.successes:
            world.learn(path, status, answer)
        # --hypothesis-show-statistics: how deep the bodies got (successes, which errors).
        event(f"{status} {'success' if status in endpoint.successes else answer['error']}")

    test.__name__ = test.__qualname__ = "test_fuzz_" + path[4:].replace("/", "_").replace("-", "_")
    return test


test_fuzz_status = _endpoint_fuzz("/v1/status")
test_fuzz_login = _endpoint_fuzz("/v1/login")
test_fuzz_login_one_time_key = _endpoint_fuzz("/v1/login/one-time-key")
test_fuzz_login_with_one_time_key = _endpoint_fuzz("/v1/login/with-one-time-key")
test_fuzz_login_with_token = _endpoint_fuzz("/v1/login/with-token")
test_fuzz_refresh = _endpoint_fuzz("/v1/refresh")
test_fuzz_logout = _endpoint_fuzz("/v1/logout")
test_fuzz_me = _endpoint_fuzz("/v1/me")
test_fuzz_tokens_create = _endpoint_fuzz("/v1/tokens/create")
test_fuzz_tokens_remove = _endpoint_fuzz("/v1/tokens/remove")
test_fuzz_me_token = _endpoint_fuzz("/v1/me/token")
test_fuzz_assets_register = _endpoint_fuzz("/v1/assets/register")
test_fuzz_assets_challenge = _endpoint_fuzz("/v1/assets/challenge")
test_fuzz_assets_token = _endpoint_fuzz("/v1/assets/token")
test_fuzz_assets_validate = _endpoint_fuzz("/v1/assets/validate")
test_fuzz_assets_revoke = _endpoint_fuzz("/v1/assets/revoke")
test_fuzz_keys = _endpoint_fuzz("/v1/keys")


def test_every_endpoint_is_fuzzed() -> None:
    # A route added to the service (or the contract) without a fuzz test fails here.
    fuzzed = {name for name in globals() if name.startswith("test_fuzz_")}
    assert fuzzed == {
        "test_fuzz_" + path[4:].replace("/", "_").replace("-", "_") for path in ENDPOINTS
    }


_FIELD_JUNK = [
    "",
    "abc",
    "-1",
    "1e3",
    "0x10",
    "+5",
    "01700000000000",
    "9" * 40,
    "3.4",
    "AAAA",
    "AAAAAAAAAAAAAAAAAAAAAA",  # 16 bytes, unpadded
    "AAAAAAAAAAAAAAAAAAAAAB==",  # non-zero trailing bits
    "2FFD8CC3-60AF-40A9-82DD-0071847D144E",
    "x" * 256,
]


@pytest.mark.parametrize("name", ["version", "token_id", "token_digest", "nonce", "timestamp"])
async def test_mac_header_with_one_field_wrong_gets_documented_errors(
    world: World, name: str
) -> None:
    # Every other field valid, so the parser reaches this field's own check (the
    # hypothesis fuzz above rarely keeps all the others intact).
    endpoint = ENDPOINTS["/v1/me/token"]
    for value in _FIELD_JUNK:
        nonce = hashlib.sha256(value.encode()).digest()[:16]  # fresh: no replay
        header = _replace_field(await _mac_header(world, 0, nonce, "3.3"), name, value)
        async with world.http.get(
            world.svc.url + "/v1/me/token", headers={"X-PowerAuth-Token": header}
        ) as r:
            raw = await r.read()
            answer = _check_answer(endpoint, r.status, r.headers, raw, (name, value))
        assert r.status == 401, (name, value)
        assert answer["error"] == "token_invalid", (name, value)

"""The reference service, named MAC tokens, over real loopback HTTP."""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import attrs
import pytest
from _service import call, login, service

from tokensdk import ManualClock
from tokensdk.server import RunningService

pytestmark = pytest.mark.anyio

NOW_MS = 1_700_000_000_000


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def header(
    token_id: str,
    secret_b64: str,
    timestamp_ms: int,
    *,
    version: str = "3.3",
    nonce: bytes = bytes(range(16)),
) -> str:
    """Build the header by hand from the contract text (independent of tokensdk.mac)."""
    data = nonce + b"&" + str(timestamp_ms).encode()
    if version in ("3.2", "3.3"):
        data += b"&" + version.encode()
    digest = hmac.new(base64.b64decode(secret_b64), data, hashlib.sha256).digest()
    return (
        f'PowerAuth version="{version}", token_id="{token_id}", '
        f'token_digest="{base64.b64encode(digest).decode()}", '
        f'nonce="{base64.b64encode(nonce).decode()}", timestamp="{timestamp_ms}"'
    )


def test_header_helper_matches_contract_check_values() -> None:
    secret = "VqAXEhziiT27lxoqREjtcQ=="
    expected = {
        "3.3": "GuLCnTklFG25WnjMiFI0k7dc4DJsP/1pW6ko/RY7BTI=",
        "3.2": "hIDgtR6M8kk4gSC2sBollOuJX/QE/K8z5l9F1j9vwbE=",
        "3.1": "AP1YyPm0tcsSTGiwyPSMeSmcGD+WXFM9eh0VvIqfx4w=",
        "3.0": "AP1YyPm0tcsSTGiwyPSMeSmcGD+WXFM9eh0VvIqfx4w=",
    }
    for version, digest in expected.items():
        assert f'token_digest="{digest}"' in header("x", secret, NOW_MS, version=version)


async def _create(
    http: aiohttp.ClientSession,
    svc: RunningService,
    access: str,
    factors: Any = ("possession",),
    password: str | None = None,
) -> tuple[int, Any]:
    body: dict[str, Any] = {"factors": list(factors)}
    if password is not None:
        body["password"] = password
    status, answer, _ = await call(http, svc, "POST", "/v1/tokens/create", body, token=access)
    return status, answer


async def _check(
    http: aiohttp.ClientSession, svc: RunningService, value: str | None
) -> tuple[int, Any]:
    headers = {} if value is None else {"X-PowerAuth-Token": value}
    status, body, _ = await call(http, svc, "GET", "/v1/me/token", headers=headers)
    return status, body


async def test_check_values_through_the_service(
    http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    digests = {
        "3.3": "GuLCnTklFG25WnjMiFI0k7dc4DJsP/1pW6ko/RY7BTI=",
        "3.2": "hIDgtR6M8kk4gSC2sBollOuJX/QE/K8z5l9F1j9vwbE=",
        "3.1": "AP1YyPm0tcsSTGiwyPSMeSmcGD+WXFM9eh0VvIqfx4w=",
        "3.0": "AP1YyPm0tcsSTGiwyPSMeSmcGD+WXFM9eh0VvIqfx4w=",
    }
    async with service(clock) as svc:
        tokens = await login(http, svc)
        for version, digest in digests.items():
            # One token per version: the check values share a nonce, which replay
            # protection would (rightly) refuse twice for the same token id.
            status, created = await _create(http, svc, tokens["accessToken"])
            assert status == 200
            token_id = created["tokenId"]
            assert uuid.UUID(token_id).version == 4
            assert len(base64.b64decode(created["tokenSecret"], validate=True)) == 16
            # Plant the contract's check-value secret on this token.
            record = svc.state.mac_tokens[token_id]
            planted = svc.state.vault.seal("mac_tokens", token_id, "VqAXEhziiT27lxoqREjtcQ==")
            svc.state.mac_tokens.put(token_id, attrs.evolve(record, secret=planted))
            value = (
                f'PowerAuth version="{version}", token_id="{token_id}", '
                f'token_digest="{digest}", nonce="AAECAwQFBgcICQoLDA0ODw==", '
                f'timestamp="{NOW_MS}"'
            )
            status, body = await _check(http, svc, value)
            assert (status, body) == (
                200,
                {"username": "alice", "tokenId": token_id, "factors": ["possession"]},
            ), version


async def test_header_replay_and_window(http: aiohttp.ClientSession, clock: ManualClock) -> None:
    async with service(clock) as svc:
        tokens = await login(http, svc, "bob")
        _, created = await _create(http, svc, tokens["accessToken"])
        tid, secret = created["tokenId"], created["tokenSecret"]
        value = header(tid, secret, NOW_MS)
        assert (await _check(http, svc, value))[0] == 200
        status, body = await _check(http, svc, value)
        assert (status, body["error"], body["code"]) == (401, "replayed", 401)
        # Still replayed near the end of the window; a new nonce is fine.
        clock.advance(599)
        assert (await _check(http, svc, value))[1]["error"] == "replayed"
        fresh = header(tid, secret, NOW_MS, nonce=b"\x01" * 16)
        assert (await _check(http, svc, fresh))[0] == 200
        clock.advance(1.001)
        status, body = await _check(http, svc, value)
        assert (status, body["error"]) == (401, "timestamp_too_old")
        now_ms = int(clock.time() * 1000)
        future = header(tid, secret, now_ms + 120_001, nonce=b"\x02" * 16)
        assert (await _check(http, svc, future))[1]["error"] == "timestamp_in_future"
        near_future = header(tid, secret, now_ms + 120_000, nonce=b"\x03" * 16)
        assert (await _check(http, svc, near_future))[0] == 200
        for version in ("3.0", "3.1", "3.2"):
            value = header(tid, secret, now_ms, version=version, nonce=version.encode() * 5 + b"x")
            assert (await _check(http, svc, value))[0] == 200
    assert svc.stats.mac_tokens_created == 1
    assert svc.stats.mac_headers_accepted == 6


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "PowerAuth",
        "Bearer abc",
        'PowerAuth version="3.3", token_id="x"',
        'PowerAuth version="9.9", token_id="{tid}", token_digest="AAAA", nonce="AAAA", '
        'timestamp="1"',
        "PowerAuth " + "x" * 8_000,  # long, within the 8190-byte header limit (longer: 400)
        'PowerAuth version="3.3", token_id="{tid}", token_digest="!!!", '
        'nonce="AAECAwQFBgcICQoLDA0ODw==", timestamp="1700000000000"',
        'PowerAuth version="3.3", token_id="{tid}", token_digest="'
        + base64.b64encode(b"x" * 32).decode()
        + '", nonce="AAECAwQFBgcICQoLDA0ODw==", timestamp="1700000000000"',
    ],
)
async def test_malformed_headers_get_token_invalid(
    http: aiohttp.ClientSession, clock: ManualClock, value: str | None
) -> None:
    async with service(clock) as svc:
        tokens = await login(http, svc)
        _, created = await _create(http, svc, tokens["accessToken"])
        if value is not None:
            value = value.replace("{tid}", created["tokenId"])
        status, body = await _check(http, svc, value)
    assert status == 401
    assert body["error"] == "token_invalid"
    assert body["code"] == 401


async def test_unknown_token_id_and_wrong_secret(
    http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    async with service(clock) as svc:
        tokens = await login(http, svc)
        _, created = await _create(http, svc, tokens["accessToken"])
        other = base64.b64encode(b"\x00" * 16).decode()
        for value in (
            header(str(uuid.uuid4()), created["tokenSecret"], NOW_MS),
            header(created["tokenId"], other, NOW_MS),
        ):
            assert (await _check(http, svc, value))[1]["error"] == "token_invalid"


async def test_knowledge_factor_needs_password(
    http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    async with service(clock) as svc:
        tokens = await login(http, svc)
        access = tokens["accessToken"]
        status, body = await _create(http, svc, access, ("possession", "knowledge"), "wrong")
        assert (status, body["error"]) == (401, "invalid_credentials")
        status, body = await _create(http, svc, access, ("possession", "knowledge"))
        assert (status, body["error"]) == (400, "invalid_request")
        status, created = await _create(
            http, svc, access, ("possession", "knowledge"), "wonderland"
        )
        assert status == 200
        value = header(created["tokenId"], created["tokenSecret"], NOW_MS)
        _, body = await _check(http, svc, value)
        assert body["factors"] == ["possession", "knowledge"]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"factors": []},
        {"factors": ["knowledge"]},
        {"factors": ["knowledge", "possession"]},
        {"factors": ["possession", "possession"]},
        {"factors": "possession"},
        {"factors": [1]},
        {"factors": ["possession", "biometry"]},
    ],
)
async def test_create_rejects_bad_factors(
    http: aiohttp.ClientSession, clock: ManualClock, body: Any
) -> None:
    async with service(clock) as svc:
        tokens = await login(http, svc)
        status, answer, _ = await call(
            http, svc, "POST", "/v1/tokens/create", body, token=tokens["accessToken"]
        )
    assert status == 400
    assert answer["error"] == "invalid_request"


async def test_create_and_remove_need_a_bearer(
    http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    async with service(clock) as svc:
        for path, body in [
            ("/v1/tokens/create", {"factors": ["possession"]}),
            ("/v1/tokens/remove", {"tokenId": str(uuid.uuid4())}),
        ]:
            for token in (None, "forged"):
                status, answer, headers = await call(http, svc, "POST", path, body, token=token)
                assert (status, answer["error"]) == (401, "invalid_token")
                assert headers["WWW-Authenticate"].startswith("Bearer")


async def test_remove_own_tokens_only(http: aiohttp.ClientSession, clock: ManualClock) -> None:
    async with service(clock) as svc:
        alice = (await login(http, svc))["accessToken"]
        bob = (await login(http, svc, "bob"))["accessToken"]
        _, created = await _create(http, svc, alice)
        tid = created["tokenId"]
        status, body, _ = await call(
            http, svc, "POST", "/v1/tokens/remove", {"tokenId": tid}, token=bob
        )
        assert (status, body["error"], body["code"]) == (404, "unknown_token", 404)
        status, body, _ = await call(
            http, svc, "POST", "/v1/tokens/remove", {"tokenId": tid}, token=alice
        )
        assert (status, body) == (200, {"tokenId": tid})
        status, body, _ = await call(
            http, svc, "POST", "/v1/tokens/remove", {"tokenId": tid}, token=alice
        )
        assert (status, body["error"]) == (404, "unknown_token")
        value = header(tid, created["tokenSecret"], NOW_MS)
        assert (await _check(http, svc, value))[1]["error"] == "token_invalid"


async def test_mac_tokens_die_with_family(http: aiohttp.ClientSession, clock: ManualClock) -> None:
    async with service(clock, refresh_ttl=1000) as svc:
        tokens = await login(http, svc)
        _, created = await _create(http, svc, tokens["accessToken"])
        tid, secret = created["tokenId"], created["tokenSecret"]
        status, _, _ = await call(http, svc, "POST", "/v1/logout", token=tokens["accessToken"])
        assert status == 204
        assert (await _check(http, svc, header(tid, secret, NOW_MS)))[1]["error"] == (
            "token_invalid"
        )
        # Refresh-token reuse kills them too.
        tokens = await login(http, svc)
        _, created = await _create(http, svc, tokens["accessToken"])
        for _ in range(2):
            await call(
                http,
                svc,
                "POST",
                "/v1/refresh",
                {"username": "alice", "refreshToken": tokens["refreshToken"]},
            )
        value = header(created["tokenId"], created["tokenSecret"], NOW_MS, nonce=b"\x05" * 16)
        assert (await _check(http, svc, value))[1]["error"] == "token_invalid"
        # And so does the family's expiry.
        tokens = await login(http, svc)
        _, created = await _create(http, svc, tokens["accessToken"])
        clock.advance(1000)
        now_ms = int(clock.time() * 1000)
        value = header(created["tokenId"], created["tokenSecret"], now_ms, nonce=b"\x06" * 16)
        assert (await _check(http, svc, value))[1]["error"] == "token_invalid"


async def test_mac_tokens_persist(
    http: aiohttp.ClientSession, clock: ManualClock, tmp_path: Any
) -> None:
    db = str(tmp_path / "s.db")
    async with service(clock, db=db) as svc:
        tokens = await login(http, svc)
        _, created = await _create(http, svc, tokens["accessToken"])
    async with service(clock, db=db) as svc:
        value = header(created["tokenId"], created["tokenSecret"], NOW_MS)
        status, body = await _check(http, svc, value)
        assert (status, body["username"]) == (200, "alice")

"""Hostile input, end to end: random requests to every service endpoint, random
answers to the SDK, tampered and revoked tokens through the SDK's own validator, and
property-based tests (hypothesis) of every parser the SDK runs on what it receives:
JSON answers, LoginTokens, the stored session state (codec and decoder), keyring
entries, and, through a fault proxy, each SDK call's answer.

Seeded: ``TOKENSDK_SEED`` and ``TOKENSDK_ITERATIONS`` make the runs longer (the
hypothesis tests are derandomized; the iteration count scales their examples).
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import random
import string
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import _proxy
import aiohttp
import anyio
import attrs
import pytest
from _proxy import FaultProxy
from _service import PASSWORDS, service
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from keyrings.alt.file import PlaintextKeyring

from tokensdk import (
    Authentication,
    Credentials,
    ManualClock,
    MemoryStore,
    NativeBackend,
    ProtocolError,
    RateLimited,
    RetryConfig,
    ServiceError,
    ServiceUnavailable,
    Session,
    SessionStatus,
    StoreCorrupt,
    StoreError,
    TokenInvalid,
    TokenRevoked,
    TokenSDKError,
    one_time_key_answer,
)
from tokensdk._assets import Ed25519Signer
from tokensdk._models import document_to_snapshot
from tokensdk._paseto import SigningKey, b64url_decode, encode_v4_public
from tokensdk._transport import _decode_json, _error_from
from tokensdk.server import ServiceConfig
from tokensdk.server._app import _ROUTES
from tokensdk.stores import KeyringStore
from tokensdk.stores import _codec as codec

pytestmark = pytest.mark.anyio

SEED = int(os.environ.get("TOKENSDK_SEED", "20240601"))
ITERATIONS = int(os.environ.get("TOKENSDK_ITERATIONS", "300"))
NO_RETRY = RetryConfig(max_attempts=1)
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "BREW"]


def random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 2**63, -(2**70), 10**400, 60, 3600])
    if kind == 3:
        return rng.choice([0.5, -0.0, 1e308, 1e-300, 59.999])
    if kind == 4:
        return rng.choice(["", "alice", "\u0000", "\ud800x", "v4.public." + "A" * 50, "é" * 3])
    if kind == 5:
        return "".join(rng.choice(string.printable) for _ in range(rng.randrange(20)))
    if kind == 6:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["username", "password", "refreshToken", "accessToken", "assetId", "challenge"]
    keys += ["signature", "token", "factors", "tokenId", "hash", "publicKey", "accessExpire"]
    return {rng.choice(keys): random_json(rng, depth + 1) for _ in range(rng.randrange(5))}


def random_body(rng: random.Random) -> bytes:
    kind = rng.randrange(5)
    if kind == 0:
        return b""
    if kind == 1:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
    if kind == 2:
        text = json.dumps(random_json(rng), ensure_ascii=rng.random() < 0.5)
        return text.encode("utf-8", "surrogatepass")
    if kind == 3:
        return b"[" * rng.randrange(1, 5000)
    text = json.dumps(random_json(rng))
    return text[: rng.randrange(len(text) + 1)].encode("utf-8", "surrogatepass")


def random_headers(rng: random.Random) -> dict[str, str]:
    headers: dict[str, str] = {}
    if rng.random() < 0.5:
        headers["Content-Type"] = rng.choice(
            ["application/json", "text/plain", "application/x-www-form-urlencoded", "a/b; c=d"]
        )
    if rng.random() < 0.4:
        headers["Authorization"] = rng.choice(
            [
                "Bearer",
                "Bearer ",
                "Basic YWxpY2U6d29uZGVybGFuZA==",
                "Bearer " + "x" * 3000,
                "bearer v4.public.AAAA",
                "Bearer \t junk",
            ]
        )
    if rng.random() < 0.3:
        headers["X-PowerAuth-Token"] = rng.choice(
            [
                'PowerAuth version="3.3"',
                "PowerAuth",
                'PowerAuth token_id="' + "A" * 500 + '"',
                'PowerAuth version="3.3", token_id="x", token_digest="!!", nonce="", timestamp=""',
            ]
        )
    return headers


async def test_random_requests_to_every_endpoint_get_contract_errors(clock: ManualClock) -> None:
    rng = random.Random(SEED)
    paths = [*sorted({path for _, path, _ in _ROUTES}), "/v1/nope", "/", "/v1//login"]
    async with service(clock, login_rate_limit=10**6) as svc, aiohttp.ClientSession() as http:
        for _ in range(ITERATIONS):
            method = rng.choice(METHODS)
            path = rng.choice(paths)
            body = random_body(rng)
            headers = random_headers(rng)
            async with http.request(method, svc.url + path, data=body, headers=headers) as resp:
                raw = await resp.read()
                case = (method, path, body[:80], headers)
                assert resp.status < 500, case
                if resp.status < 400 or method == "HEAD":
                    continue
                answer = json.loads(raw)
                assert set(answer) >= {"error", "code", "message"}, case
                assert isinstance(answer["error"], str), case
                assert isinstance(answer["code"], int), case
                assert isinstance(answer["message"], str), case
        assert svc.stats.logins == 0


def random_answer(rng: random.Random) -> tuple[int, bytes]:
    valid = {
        "accessToken": "a",
        "accessExpire": 60,
        "refreshToken": "r",
        "refreshExpire": 3600,
        "username": "alice",
    }
    kind = rng.randrange(4)
    if kind == 0:  # a valid answer with one field replaced or dropped
        body = dict(valid)
        key = rng.choice(sorted(body))
        if rng.random() < 0.3:
            del body[key]
        else:
            body[key] = random_json(rng)
        payload = json.dumps(body).encode("utf-8", "surrogatepass")
    elif kind == 1:
        payload = json.dumps(random_json(rng)).encode("utf-8", "surrogatepass")
    else:
        payload = random_body(rng)
        while payload.startswith(b"[["):  # deep nesting: see test_deeply_nested_answer
            payload = random_body(rng)
    status = rng.choice([200, 200, 200, 201, 204, 400, 401, 403, 409, 429, 491, 500, 503, 701])
    return status, payload


@pytest.mark.parametrize("path", ["/v1/login", "/v1/refresh"])
async def test_random_answers_raise_only_typed_errors(clock: ManualClock, path: str) -> None:
    rng = random.Random(SEED + len(path))
    async with service(clock) as svc:
        proxy = FaultProxy(svc.url)
        proxy.only_paths = {path}
        async with proxy.running():
            errors: list[TokenSDKError] = []
            for _ in range(max(ITERATIONS // 5, 20)):
                status, payload = random_answer(rng)
                ctype = rng.choice(["application/json", "text/html", ""])
                async with Session(proxy.url, clock=clock, retry=NO_RETRY) as session:
                    if path == "/v1/refresh":
                        await session.login("alice", PASSWORDS["alice"])
                    proxy.fail_next(1, _proxy.json_body(payload, status, ctype or "x/y"))
                    with anyio.fail_after(10):
                        try:
                            if path == "/v1/login":
                                await session.login("alice", PASSWORDS["alice"])
                            else:
                                await session.token_refresh()
                        except TokenSDKError as exc:
                            errors.append(exc)
                    proxy.faults.clear()
                    for error in errors:
                        assert str(error)
                        assert PASSWORDS["alice"] not in str(error)
                    if session.status is SessionStatus.ACTIVE:
                        creds = session.credentials
                        assert creds is not None
                        assert creds.access_token
                        assert creds.lifetime >= 0


@pytest.mark.parametrize("status", [200, 401, 503])
async def test_deeply_nested_answer_is_a_protocol_error(clock: ManualClock, status: int) -> None:
    async with service(clock) as svc:
        proxy = FaultProxy(svc.url)
        proxy.fail_next(1, _proxy.json_body(b"[" * 100_000, status))
        async with proxy.running(), Session(proxy.url, clock=clock, retry=NO_RETRY) as session:
            with pytest.raises(TokenSDKError):
                await session.login("alice", PASSWORDS["alice"])


async def test_tampered_asset_tokens_rejected_locally_and_by_the_service(
    clock: ManualClock,
) -> None:
    signer = Ed25519Signer.generate()
    config = {"assets": {"door": signer.public_key_hex}}
    async with service(clock, **config) as svc, Session(svc.url, clock=clock) as session:
        await session.login("alice", PASSWORDS["alice"])
        good = (await session.access_tokens.request("door", signer)).token
        info = await session.access_tokens.validate(good, remote=True)
        assert "door" in info.asset_ids
        variants = set()
        for i in range(len(good)):
            variants.add(good[:i])
            flipped = chr(ord(good[i]) ^ 1) if good[i].isalnum() else "A"
            variants.add(good[:i] + flipped + good[i + 1 :])
        for junk in ["=", "==", " ", "\n", "+", "/", "%3D", "\u00e9", "."]:
            variants.add(good + junk)
            variants.add(junk + good)
        variants.add(good.replace("-", "+").replace("_", "/"))
        variants.add(good.replace("v4.public.", "v4.local."))
        variants.add(good.replace("v4.public.", "V4.PUBLIC."))
        variants.add(good + "A" * 100_000)
        # Same claims and footer (the service's kid), signed by a stranger's key.
        message, footer = _message_and_footer(good)
        variants.add(encode_v4_public(SigningKey.generate(), message, footer))
        variants.discard(good)
        # Every variant, not a sample: all of them go over one keep-alive connection.
        async with aiohttp.ClientSession() as http:
            for token in sorted(variants):
                with pytest.raises(TokenInvalid):
                    await session.access_tokens.validate(token)
                for path in ("/v1/assets/validate", "/v1/assets/revoke"):
                    async with http.post(svc.url + path, json={"token": token}) as r:
                        answer = await r.json()
                        if len(token) > 60_000:  # over the service's body limit
                            assert r.status == 413, token[:80]
                        else:
                            assert (r.status, answer["error"]) == (401, "invalid_token"), (
                                path,
                                token,
                            )
                        assert set(answer) >= {"error", "code", "message"}
            # No variant revoked the real token on the way.
            assert (await session.access_tokens.validate(good, remote=True)).asset_ids == ("door",)

            # revoked stays revoked through the SDK's remote validation
            async with http.post(svc.url + "/v1/assets/revoke", json={"token": good}) as r:
                assert r.status == 204
        with pytest.raises(TokenRevoked):
            await session.access_tokens.validate(good, remote=True)


def _message_and_footer(token: str) -> tuple[bytes, bytes]:
    _, _, body, footer = token.split(".")
    return b64url_decode(body)[:-64], b64url_decode(footer)


def test_service_config_assets_key_is_hex() -> None:
    signer = Ed25519Signer.generate()
    assert ServiceConfig(assets={"a": signer.public_key_hex}).assets["a"] == signer.public_key_hex


# -- every parser of the SDK, property-based ------------------------------------------
#
# Arbitrary input may only be refused with the parser's documented typed error (a
# TokenSDKError subclass, or the codec's CorruptState/NewerFormat); a KeyError,
# TypeError, AttributeError or OverflowError escaping is a bug. Derandomized, so the
# examples are the same on every run; TOKENSDK_ITERATIONS scales them up.

EXAMPLES = max(ITERATIONS // 2, 50)
FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=EXAMPLES,
    # One service per test serves every example; speed varies with the machine.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# The end-to-end ones run a session per example: fewer of them, and no shrinking (a
# failing example is reported as drawn; shrinking would replay hundreds of sessions).
FUZZ_E2E = settings(
    FUZZ,
    max_examples=max(ITERATIONS // 4, 25),
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)

_FINITE_EXTREME = [0, -1, 2**63, -(2**70), 10**400, 1e308]
_EXTREME = [*_FINITE_EXTREME, float("nan"), float("inf"), -float("inf")]
json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.sampled_from(_EXTREME),
    st.text(max_size=20),
    st.sampled_from(["", "alice", "\u0000", "\ud800", "v4.public.AAAA", "é" * 3]),
)
json_values = st.recursive(
    json_leaves,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
# What a store can hold: JSON without NaN or infinities (the codec refuses those).
finite_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    # Every place in a JSON document, the root included.
    found = [prefix]
    if isinstance(node, dict):
        for key in sorted(node):
            found += _paths(node[key], (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found += _paths(child, (*prefix, index))
    return found


@st.composite
def mutated(
    draw: st.DrawFn,
    template: Any,
    values: st.SearchStrategy[Any] = json_values,
    extremes: list[Any] = _EXTREME,
) -> Any:
    """``template`` (a JSON document) with one place replaced, removed or added to."""
    doc = json.loads(json.dumps(template))
    # Extreme numbers (NaN, infinities, 400 digits) are half the replacements: they
    # are what breaks arithmetic on parsed fields.
    values = st.sampled_from(extremes) | values
    path = draw(st.sampled_from(_paths(doc)))
    if not path:
        return draw(values)
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    how = draw(st.integers(0, 4))
    if how == 0:
        del parent[path[-1]]
    elif how == 1 and isinstance(parent[path[-1]], dict):
        parent[path[-1]][draw(st.text(max_size=12))] = draw(values)
    else:
        parent[path[-1]] = draw(values)
    return doc


def _dumps(value: Any) -> bytes:
    # NaN and Infinity spelled as Python's json module writes and reads them.
    return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")


def answer_bodies(template: Any) -> st.SearchStrategy[bytes]:
    """Bodies a hostile or broken service could send instead of ``template``."""
    return st.one_of(
        mutated(template).map(_dumps),
        json_values.map(_dumps),
        st.binary(max_size=64),
        st.builds(lambda d, n: _dumps(d)[:n], mutated(template), st.integers(0, 200)),
        st.sampled_from([b"", b"[" * 5000, b"{" * 3000, b"\xff\xfe{}", b"null", b"{}"]),
    )


LOGIN_TOKENS = {
    "accessToken": "a" * 43,
    "accessExpire": 60,
    "refreshToken": "r" * 43,
    "refreshExpire": 3600,
    "username": "alice",
}
ERROR_BODY = {"error": "invalid_token", "code": 401, "message": "no", "reason": "revoked"}


@FUZZ
@given(answer_bodies(LOGIN_TOKENS) | answer_bodies(ERROR_BODY), st.sampled_from(["", "text/html"]))
def test_answer_decoding_raises_only_protocol_error(raw: bytes, content_type: str) -> None:
    with contextlib.suppress(ProtocolError):
        _decode_json(raw, content_type, "POST", "/login")


@FUZZ
@given(
    st.integers(400, 599) | st.sampled_from([401, 429, 701, 999]),
    mutated(ERROR_BODY),
    st.none() | st.text(max_size=12) | st.sampled_from(["nan", "inf", "-5", "1e400", "7"]),
)
def test_error_answers_become_service_errors(status: int, body: Any, retry_after: Any) -> None:
    details = NativeBackend("http://127.0.0.1:1").error_details(status, body)
    error = _error_from(status, details, retry_after, "POST", "/login")
    assert isinstance(error, ServiceError)
    assert error.status == status
    assert isinstance(error.code, int)
    assert str(error)
    if status == 429:
        assert isinstance(error, RateLimited)
        assert 0 <= error.retry_after <= 3600
    elif status >= 500:
        assert isinstance(error, ServiceUnavailable)


@FUZZ
@given(mutated(LOGIN_TOKENS))
def test_login_tokens_parser_raises_only_protocol_error(body: Any) -> None:
    try:
        creds = Credentials.from_response(body, wall=1_700_000_000.0, monotonic=1000.0)
    except ProtocolError:
        return
    assert creds.access_token
    assert creds.refresh_token
    assert isinstance(creds.username, str)
    for value in (creds.access_expires_at, creds.refresh_expires_at, creds.lifetime):
        assert math.isfinite(value)
    assert creds.lifetime >= 0


def _parsed(body: Any) -> Credentials | str:
    try:
        return Credentials.from_response(body, wall=1_700_000_000.0, monotonic=1000.0)
    except ProtocolError as exc:
        return f"ProtocolError: {exc}"


_EDGE_VALUES = st.one_of(
    st.integers(-3, 3),
    st.sampled_from([10 * 365 * 86400, 10 * 365 * 86400 + 1, 2**63]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.sampled_from(["", "x", "alice"]),
    st.none(),
)
_LOGIN_MEMBERS = ("username", "accessToken", "refreshToken", "accessExpire", "refreshExpire")


_MISSING = object()


@st.composite
def _login_answer_variants(draw: st.DrawFn) -> dict[str, Any]:
    """The usual answer with one or two members changed to edge values, or removed."""
    body: dict[str, Any] = dict(LOGIN_TOKENS)
    for name in draw(st.lists(st.sampled_from(_LOGIN_MEMBERS), min_size=0, max_size=2)):
        value = draw(st.one_of(_EDGE_VALUES, st.just(_MISSING)))
        if value is _MISSING:
            body.pop(name, None)
        else:
            body[name] = value
    return body


@given(_login_answer_variants())
def test_login_tokens_fast_path_agrees_with_the_field_by_field_path(body: Any) -> None:
    """The one-go check of the usual answer accepts exactly what the full check accepts.

    A dict takes the fast path first; the same members behind a read-only mapping take
    only the field-by-field path, whose errors say what is wrong.
    """
    fast, slow = _parsed(body), _parsed(MappingProxyType(body))
    if isinstance(slow, str):
        assert isinstance(fast, str), body  # the fast path let through a bad answer
    else:
        assert isinstance(fast, Credentials), body
        assert attrs.asdict(fast, recurse=False) == attrs.asdict(slow, recurse=False), body


_STATE = {
    "version": 1,
    "status": "active",
    "credentials": {
        "username": "alice",
        "accessToken": "a" * 43,
        "refreshToken": "r" * 43,
        "accessExpiresAt": 1_700_000_060.0,
        "refreshExpiresAt": 1_700_003_600.0,
        "lifetime": 60.0,
    },
    "accessTokens": [{"assetId": "door", "token": "v4.public.AAAA", "expiresAt": 1_700_000_900.0}],
    "macTokens": {
        "main": {
            "tokenId": "0b5a5b1e-8f5e-4c4b-9d0e-6a0f3c1d2e3f",
            "tokenSecret": base64.b64encode(bytes(range(16))).decode(),
            "factors": ["possession"],
        }
    },
}


def state_documents(
    values: st.SearchStrategy[Any], extremes: list[Any] = _EXTREME
) -> st.SearchStrategy[dict[str, Any]]:
    # Stores hand over objects only (the codec refuses anything else).
    return mutated(_STATE, values, extremes).filter(lambda doc: isinstance(doc, dict))


@FUZZ
@given(
    state_documents(json_values) | st.dictionaries(st.text(max_size=12), json_values, max_size=5)
)
def test_session_state_decoding_raises_only_store_corrupt(document: dict[str, Any]) -> None:
    try:
        snapshot = document_to_snapshot(document, wall=1_700_000_000.0, monotonic=1000.0)
    except StoreCorrupt:
        return
    if snapshot.status is SessionStatus.ACTIVE:
        assert snapshot.credentials is not None
    for mac in snapshot.mac_tokens.values():
        assert len(mac.secret) == 16


def _envelope(state: Any, version: Any = 1, fmt: Any = "tokensdk.state") -> Any:
    return {"format": fmt, "version": version, "state": state}


stored_texts = st.one_of(
    mutated(_envelope(_STATE)).map(_dumps),
    state_documents(json_values).map(_envelope).map(_dumps),
    # Any state (an object or not) in an envelope of the current, a newer or a bad version.
    st.builds(
        _envelope,
        finite_json,
        st.sampled_from([1, 1, 1, 2, 0, True]) | json_values,
        st.sampled_from(["tokensdk.state", "tokensdk.state", "x"]),
    ).map(_dumps),
    st.builds(lambda d, n: _dumps(d)[:n], mutated(_envelope(_STATE)), st.integers(0, 400)),
    st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.binary(max_size=100),
)


def _newer(source: bytes | str) -> bool:
    # The contract, independent of the codec: an envelope of a version above 1 is
    # "newer", never "corrupt" (a newer tokensdk's file must be left alone).
    try:
        envelope = json.loads(source)
    except (ValueError, RecursionError):
        return False
    return (
        isinstance(envelope, dict)
        and envelope.get("format") == "tokensdk.state"
        and type(envelope.get("version")) is int
        and envelope["version"] > 1
    )


def _as_source(data: bytes, as_text: bool) -> bytes | str:
    try:
        return data.decode("utf-8") if as_text else data
    except UnicodeDecodeError:
        return data


@FUZZ
@given(stored_texts, st.booleans())
def test_stored_bytes_decode_or_raise_codec_errors(data: bytes, as_text: bool) -> None:
    source = _as_source(data, as_text)
    try:
        document = codec.decode_state(source)
    except codec.NewerFormat:
        assert _newer(source)
        return
    except codec.CorruptState:
        assert not _newer(source)
        return
    assert isinstance(document, dict)
    assert json.loads(source)["state"] == document


@FUZZ
@given(stored_texts, st.booleans())
def test_stored_bytes_decode_to_a_state_or_a_typed_error(data: bytes, as_text: bool) -> None:
    # What a store hands the session: the codec, then the state decoder, end to end.
    try:
        document = codec.decode_state(_as_source(data, as_text))
    except (codec.CorruptState, codec.NewerFormat):
        return
    with contextlib.suppress(StoreCorrupt):
        document_to_snapshot(document, wall=1_700_000_000.0, monotonic=1000.0)


@pytest.fixture
def keyring_backend(tmp_path: Path) -> Any:
    backend = PlaintextKeyring()
    backend.file_path = str(tmp_path / "keyring.cfg")
    return backend


@FUZZ
@given(
    stored_texts.map(lambda b: b.decode("utf-8", "replace"))
    | st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=100)
)
async def test_keyring_entries_load_or_raise_store_errors(keyring_backend: Any, entry: str) -> None:
    keyring_backend.set_password("tokensdk", "fuzz", entry)
    store = KeyringStore("fuzz", backend=keyring_backend)
    try:
        document = await store.load()
    except StoreCorrupt:
        # A corrupt entry is deleted...
        assert not _newer(entry)
        assert keyring_backend.get_password("tokensdk", "fuzz") is None
        return
    except StoreError:
        # ... one of a newer format (a plain StoreError) is left alone.
        assert _newer(entry)
        assert keyring_backend.get_password("tokensdk", "fuzz") == entry
        return
    assert json.loads(entry)["state"] == document


@pytest.fixture
async def live(clock: ManualClock) -> AsyncIterator[Any]:
    async with service(clock) as svc:
        yield svc


@FUZZ
@given(state_documents(finite_json, _FINITE_EXTREME))
async def test_a_session_opens_over_any_stored_state(
    live: Any, clock: ManualClock, document: dict[str, Any]
) -> None:
    # A store holding garbage must not keep the application from starting: the
    # session starts empty (and reports it) instead of raising from its __aenter__.
    store = MemoryStore(document)
    with anyio.fail_after(10):
        async with Session(live.url, clock=clock, store=store, retry=NO_RETRY) as session:
            snapshot = session.snapshot
            if snapshot.status is SessionStatus.ACTIVE:
                assert snapshot.credentials is not None


# -- the SDK against any answer, end to end ----------------------------------------------
#
# One real service behind a FaultProxy; for each SDK call, the answer to one of its
# requests is replaced by hypothesis' choice (status, body, content type). The
# calls before it are real. Only TokenSDKError may reach the caller, nothing may
# hang, no background task may die (the session's task group would re-raise it at
# close), and whatever the session accepted must be usable.

HOLDER = Ed25519Signer.from_seed(bytes(range(32)))


async def _login(session: Session) -> None:
    await session.login("alice", PASSWORDS["alice"])


async def _with_asset(session: Session) -> None:
    await _login(session)
    await session.access_tokens.request("door", HOLDER)


async def _with_mac(session: Session) -> None:
    await _login(session)
    await session.token_store.request_access_token("m", Authentication.possession())


def _answer_otk(session: Session) -> Any:
    def answer(key: str) -> str:
        return one_time_key_answer(key, "bob", "tokensdk", PASSWORDS["bob"])

    return session.login_with_one_time_key("bob", answer)


async def _sync_and_sign(session: Session) -> None:
    # The offset learned from /status goes into every MAC header's timestamp.
    try:
        await session.sync_clock()
    finally:
        assert math.isfinite(session.clock_offset)
        session.token_store.generate_header_for_token("m")


async def _validate_remote(session: Session) -> None:
    item = session.access_tokens.find("door")
    assert item is not None
    await session.access_tokens.validate(item.token, remote=True)


async def _noop(session: Session) -> None:
    pass


_CHALLENGE = {"assetId": "door", "timestamp": "1700000000", "nonce": str(uuid.UUID(int=7))}
_MAC_ANSWER = {
    "tokenId": str(uuid.UUID(int=9)),
    "tokenSecret": base64.b64encode(bytes(16)).decode(),
}
_Scenario = tuple[str, Any, Any, Any]
SCENARIOS: dict[str, _Scenario] = {
    # name: (path whose answer is replaced, set-up, the call, template answer)
    "login": ("/v1/login", _noop, _login, LOGIN_TOKENS),
    "refresh": ("/v1/refresh", _login, lambda s: s.token_refresh(), LOGIN_TOKENS),
    "one-time-key": ("/v1/login/one-time-key", _noop, _answer_otk, {"key": "k" * 32}),
    "with-one-time-key": ("/v1/login/with-one-time-key", _noop, _answer_otk, LOGIN_TOKENS),
    "with-token": (
        "/v1/login/with-token",
        _login,
        lambda s: s.login_with_token(),
        {"username": "alice", "accessExpire": 60},
    ),
    "status": (
        "/v1/status",
        _with_mac,
        _sync_and_sign,
        {"serverTime": 1_700_000_000_000, "realm": "tokensdk", "version": "1"},
    ),
    "keys": (
        "/v1/keys",
        _login,
        lambda s: s.access_tokens.validator.refresh_keys(),
        {"keys": [{"kid": "k4.pid.x", "paserk": "k4.public.x"}]},
    ),
    "challenge": (
        "/v1/assets/challenge",
        _login,
        lambda s: s.access_tokens.request("door", HOLDER),
        _CHALLENGE,
    ),
    "asset-token": (
        "/v1/assets/token",
        _login,
        lambda s: s.access_tokens.request("door", HOLDER),
        {"assetIds": ["door"], "accessToken": "v4.public.AAAA"},
    ),
    "validate": ("/v1/assets/validate", _with_asset, _validate_remote, {"assetIds": ["door"]}),
    "revoke": ("/v1/assets/revoke", _with_asset, lambda s: s.access_tokens.revoke("door"), {}),
    "mac-create": (
        "/v1/tokens/create",
        _login,
        lambda s: s.token_store.request_access_token("m", Authentication.possession()),
        _MAC_ANSWER,
    ),
    "mac-remove": (
        "/v1/tokens/remove",
        _with_mac,
        lambda s: s.token_store.remove_access_token("m"),
        {"tokenId": _MAC_ANSWER["tokenId"]},
    ),
    "logout": ("/v1/logout", _login, lambda s: s.logout(), {}),
}
# Weighted to the successes: their bodies are the ones the SDK parses field by field.
STATUSES = [200, 200, 200, 200, 201, 204, 204, 400, 401, 403, 404, 409, 429, 491, 500, 503, 701]


@pytest.fixture
async def proxied(clock: ManualClock) -> AsyncIterator[FaultProxy]:
    # Every example asks for a challenge from one address on a clock that stands
    # still: lift the per-address and per-asset request limits.
    limits = {"ip_rate_limit": 10**6, "user_rate_limit": 10**6}
    async with service(clock, assets={"door": HOLDER.public_key_hex}, **limits) as svc:
        proxy = FaultProxy(svc.url)
        async with proxy.running():
            yield proxy


def _answer_fuzz(name: str) -> Any:
    """The test for one scenario (a function per scenario: its strategy is the scenario's)."""
    path, setup, action, template = SCENARIOS[name]

    # Drawn by @given before the coroutine starts: a draw inside it (st.data()) may
    # abort the example with hypothesis' StopTest, which breaks anyio's test runner.
    @FUZZ_E2E
    @given(
        status=st.sampled_from(STATUSES),
        body=answer_bodies(template) | answer_bodies(ERROR_BODY),
        content_type=st.sampled_from(["application/json", "text/html", "x/y"]),
    )
    async def test(
        proxied: FaultProxy, clock: ManualClock, status: int, body: bytes, content_type: str
    ) -> None:
        proxy = proxied
        proxy.faults.clear()
        proxy.only_paths = None
        with anyio.fail_after(20):
            async with Session(proxy.url, clock=clock, retry=NO_RETRY) as session:
                await setup(session)
                await session.changes_delivered()
                proxy.only_paths = {path}
                proxy.fail_next(1, _proxy.json_body(body, status, content_type))
                with contextlib.suppress(TokenSDKError):
                    await action(session)
                proxy.only_paths = None
                proxy.faults.clear()
                _check_usable(session, clock)

    test.__name__ = test.__qualname__ = f"test_any_{name.replace('-', '_')}_answer"
    return test


def _check_usable(session: Session, clock: ManualClock) -> None:
    # Whatever the session accepted from the answer, it can still work with.
    assert math.isfinite(session.clock_offset)
    creds = session.credentials
    if session.status is SessionStatus.ACTIVE:
        assert creds is not None
        assert creds.access_token
        assert creds.refresh_token
        assert math.isfinite(creds.access_left(clock.time(), clock.monotonic()))
        assert creds.lifetime >= 0
    for item in session.access_tokens:
        assert item.token.startswith("v4.public.")
    for mac in session.snapshot.mac_tokens.values():
        assert len(mac.secret) == 16


test_any_login_answer = _answer_fuzz("login")
test_any_refresh_answer = _answer_fuzz("refresh")
test_any_one_time_key_answer = _answer_fuzz("one-time-key")
test_any_with_one_time_key_answer = _answer_fuzz("with-one-time-key")
test_any_with_token_answer = _answer_fuzz("with-token")
test_any_status_answer = _answer_fuzz("status")
test_any_keys_answer = _answer_fuzz("keys")
test_any_challenge_answer = _answer_fuzz("challenge")
test_any_asset_token_answer = _answer_fuzz("asset-token")
test_any_validate_answer = _answer_fuzz("validate")
test_any_revoke_answer = _answer_fuzz("revoke")
test_any_mac_create_answer = _answer_fuzz("mac-create")
test_any_mac_remove_answer = _answer_fuzz("mac-remove")
test_any_logout_answer = _answer_fuzz("logout")


# -- the bugs the properties found, one deterministic reproduction each -------------


async def _one_answer(
    proxy: FaultProxy, clock: ManualClock, name: str, status: int, body: bytes
) -> None:
    path, setup, action, _ = SCENARIOS[name]
    proxy.faults.clear()
    proxy.only_paths = None
    with anyio.fail_after(20):
        async with Session(proxy.url, clock=clock, retry=NO_RETRY) as session:
            await setup(session)
            await session.changes_delivered()
            proxy.only_paths = {path}
            proxy.fail_next(1, _proxy.json_body(body, status))
            with contextlib.suppress(TokenSDKError):
                await action(session)
            proxy.only_paths = None
            _check_usable(session, clock)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
async def test_no_content_answer_is_a_typed_error(
    proxied: FaultProxy, clock: ManualClock, name: str
) -> None:
    await _one_answer(proxied, clock, name, 204, b"")


@pytest.mark.parametrize("server_time", [b"NaN", b"Infinity", b"-Infinity", b"9" * 400])
async def test_non_finite_server_time_is_a_typed_error(
    proxied: FaultProxy, clock: ManualClock, server_time: bytes
) -> None:
    body = b'{"serverTime": ' + server_time + b', "realm": "tokensdk", "version": "1"}'
    await _one_answer(proxied, clock, "status", 200, body)


async def test_huge_with_token_lifetime_is_a_typed_error(
    proxied: FaultProxy, clock: ManualClock
) -> None:
    body = b'{"username": "alice", "accessExpire": ' + b"9" * 400 + b"}"
    await _one_answer(proxied, clock, "with-token", 200, body)


@pytest.mark.parametrize(
    "changes",
    [
        {"accessTokens": [None]},
        {"accessTokens": ["v4.public.AAAA"]},
        {"macTokens": True},
        {"macTokens": ["main"]},
        {"accessTokens": [{"assetId": "door", "token": "v4.public.A", "expiresAt": 10**400}]},
        {"credentials": {**_STATE["credentials"], "refreshExpiresAt": -(10**400)}},
        {"accessTokens": 5},
        {"macTokens": {"main": None}},
        {"credentials": ["alice"]},
    ],
)
async def test_a_session_opens_over_ill_shaped_state(
    live: Any, clock: ManualClock, changes: dict[str, Any]
) -> None:
    store = MemoryStore({**_STATE, **changes})
    with anyio.fail_after(10):
        async with Session(live.url, clock=clock, store=store) as session:
            assert session.status is SessionStatus.LOGGED_OUT
    assert store.document is None  # quarantined: a memory store forgets it

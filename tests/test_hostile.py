"""Hostile input, end to end: random requests to every service endpoint, random
answers to the SDK, tampered and revoked tokens through the SDK's own validator.

Seeded: ``TOKENSDK_SEED`` and ``TOKENSDK_ITERATIONS`` make the runs longer.
"""

from __future__ import annotations

import json
import os
import random
import string
from typing import Any

import _proxy
import aiohttp
import anyio
import pytest
from _proxy import FaultProxy
from _service import PASSWORDS, service

from tokensdk import (
    ManualClock,
    RetryConfig,
    Session,
    SessionStatus,
    TokenInvalid,
    TokenSDKError,
)
from tokensdk._assets import Ed25519Signer
from tokensdk.server import ServiceConfig
from tokensdk.server._app import _ROUTES

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
    rng = random.Random(SEED)
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
        variants.discard(good)
        sample = sorted(variants)
        rng.shuffle(sample)
        async with aiohttp.ClientSession() as http:
            for token in sample[: max(ITERATIONS, 100)]:
                with pytest.raises(TokenInvalid):
                    await session.access_tokens.validate(token)
                async with http.post(svc.url + "/v1/assets/validate", json={"token": token}) as r:
                    assert r.status in {400, 401, 413}, token[:80]
                    answer = await r.json()
                    assert set(answer) >= {"error", "code", "message"}

        # revoked stays revoked through the SDK's remote validation
        async with (
            aiohttp.ClientSession() as http,
            http.post(svc.url + "/v1/assets/revoke", json={"token": good}) as r,
        ):
            assert r.status == 204
        with pytest.raises(TokenInvalid):
            await session.access_tokens.validate(good, remote=True)


def test_service_config_assets_key_is_hex() -> None:
    signer = Ed25519Signer.generate()
    assert ServiceConfig(assets={"a": signer.public_key_hex}).assets["a"] == signer.public_key_hex

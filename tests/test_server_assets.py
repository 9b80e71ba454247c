"""The reference service, asset access tokens (proof of key, PASETO v4.public), over loopback."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio
import pyseto
import pytest
from _service import call, login, service
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tokensdk import ManualClock
from tokensdk._paseto import (
    KeySet,
    PublicKey,
    SigningKey,
    encode_v4_public,
    format_timestamp,
    sign_asset_token,
    verify_access_token,
)
from tokensdk.server import RunningService

pytestmark = pytest.mark.anyio


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _keypair() -> tuple[Ed25519PrivateKey, str]:
    private = Ed25519PrivateKey.generate()
    return private, private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def _sign(private: Ed25519PrivateKey, challenge: dict[str, str]) -> str:
    data = json.dumps(challenge, separators=(",", ":"), sort_keys=True).encode()
    return private.sign(data).hex()


KEY, PUB = _keypair()


async def _challenge(
    http: aiohttp.ClientSession, svc: RunningService, asset_id: str = "door-1"
) -> dict[str, str]:
    status, body, _ = await call(http, svc, "POST", "/v1/assets/challenge", {"assetId": asset_id})
    assert status == 200, body
    return dict(body)


async def _token(
    http: aiohttp.ClientSession, svc: RunningService, challenge: Any, signature: Any
) -> tuple[int, Any]:
    status, body, _ = await call(
        http, svc, "POST", "/v1/assets/token", {"challenge": challenge, "signature": signature}
    )
    return status, body


async def _issue(http: aiohttp.ClientSession, svc: RunningService, asset_id: str = "door-1") -> str:
    challenge = await _challenge(http, svc, asset_id)
    status, body = await _token(http, svc, challenge, _sign(KEY, challenge))
    assert status == 200, body
    assert body["assetIds"] == [asset_id]
    return str(body["accessToken"])


async def _validate(
    http: aiohttp.ClientSession, svc: RunningService, token: str
) -> tuple[int, Any]:
    status, body, _ = await call(http, svc, "POST", "/v1/assets/validate", {"token": token})
    return status, body


async def _keys(http: aiohttp.ClientSession, svc: RunningService) -> KeySet:
    status, body, _ = await call(http, svc, "GET", "/v1/keys")
    assert status == 200
    return KeySet.from_json(body)


async def test_proof_of_key_flow(http: aiohttp.ClientSession, clock: ManualClock) -> None:
    async with service(clock, assets={"door-1": PUB}) as svc:
        challenge = await _challenge(http, svc)
        assert set(challenge) == {"assetId", "timestamp", "nonce"}
        assert challenge["timestamp"] == "1700000000"
        assert len(challenge["nonce"]) == 36
        token = await _issue(http, svc)
        assert token.startswith("v4.public.")
        footer = json.loads(base64.urlsafe_b64decode(token.split(".")[3] + "=="))
        keys = await _keys(http, svc)
        assert list(keys) == [footer["kid"]]
        info = verify_access_token(token, keys, clock.time())
        assert info.asset_ids == ("door-1",)
        assert info.expires_at - info.issued_at == 900
        payload = base64.urlsafe_b64decode(token.split(".")[2] + "==")[:-64]
        claims = json.loads(payload)
        assert claims == {
            "assetId": "door-1",
            "iat": "2023-11-14T22:13:20.000Z",
            "exp": "2023-11-14T22:28:20.000Z",
        }
        assert await _validate(http, svc, token) == (200, {"assetIds": ["door-1"]})
        clock.advance(899)
        assert (await _validate(http, svc, token))[0] == 200
        clock.advance(1)
        status, body = await _validate(http, svc, token)
        assert (status, body["error"], body["code"]) == (401, "token_expired", 701)
    assert svc.stats.asset_tokens_issued == 1


async def test_challenge_errors(http: aiohttp.ClientSession, clock: ManualClock) -> None:
    other_key, _ = _keypair()
    async with service(clock, assets={"door-1": PUB}) as svc:
        status, body, _ = await call(http, svc, "POST", "/v1/assets/challenge", {"assetId": "nope"})
        assert (status, body["error"], body["code"]) == (404, "unknown_asset", 404)
        challenge = await _challenge(http, svc)
        # Forged: wrong key, altered challenge, invented challenge, junk signature.
        for bad_challenge, signature in [
            (challenge, _sign(other_key, challenge)),
            ({**challenge, "timestamp": "1700000001"}, _sign(KEY, challenge)),
            (
                {**challenge, "timestamp": "1700000001"},
                _sign(KEY, {**challenge, "timestamp": "1700000001"}),
            ),
            (
                {**challenge, "nonce": "00000000-0000-4000-8000-000000000000"},
                _sign(KEY, {**challenge, "nonce": "00000000-0000-4000-8000-000000000000"}),
            ),
            (challenge, "zz" * 64),
            (challenge, _sign(KEY, challenge).upper()),
            (challenge, ""),
        ]:
            status, body = await _token(http, svc, bad_challenge, signature)
            assert (status, body["error"], body["code"]) == (401, "invalid_signature", 401)
        # Forgeries did not use it up.
        assert (await _token(http, svc, challenge, _sign(KEY, challenge)))[0] == 200
        status, body = await _token(http, svc, challenge, _sign(KEY, challenge))
        assert (status, body["error"]) == (401, "challenge_used")
        challenge = await _challenge(http, svc)
        clock.advance(300)
        status, body = await _token(http, svc, challenge, _sign(KEY, challenge))
        assert (status, body["error"]) == (401, "challenge_expired")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"challenge": "x", "signature": "00"},
        {"challenge": {"assetId": "door-1"}, "signature": "00"},
        {"challenge": {"assetId": 1, "timestamp": "1", "nonce": "n"}, "signature": "00"},
        {"challenge": {"assetId": "door-1", "timestamp": "1", "nonce": "n"}},
        {"challenge": {"assetId": "door-1", "timestamp": "1", "nonce": "n"}, "signature": 5},
    ],
)
async def test_token_bad_bodies(http: aiohttp.ClientSession, clock: ManualClock, body: Any) -> None:
    async with service(clock, assets={"door-1": PUB}) as svc:
        status, answer, _ = await call(http, svc, "POST", "/v1/assets/token", body)
    assert (status, answer["error"]) == (400, "invalid_request")


async def test_challenge_single_use_under_concurrency(
    http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    async with service(clock, assets={"door-1": PUB}) as svc:
        challenge = await _challenge(http, svc)
        signature = _sign(KEY, challenge)
        results: list[int] = []

        async def use() -> None:
            results.append((await _token(http, svc, challenge, signature))[0])

        # 100 concurrent uses, as the issue asks; aiohttp's pool holds 100 connections.
        async with anyio.create_task_group() as tg:
            for _ in range(100):
                tg.start_soon(use)
    assert sorted(results) == [200] + [401] * 99
    assert svc.stats.asset_tokens_issued == 1


async def test_register_asset(http: aiohttp.ClientSession, clock: ManualClock) -> None:
    async with service(clock) as svc:
        access = (await login(http, svc))["accessToken"]
        body = {"assetId": "car-7", "publicKey": PUB}
        status, answer, _ = await call(http, svc, "POST", "/v1/assets/register", body)
        assert (status, answer["error"]) == (401, "invalid_token")
        status, answer, _ = await call(http, svc, "POST", "/v1/assets/register", body, token=access)
        assert status == 201
        status, answer, _ = await call(http, svc, "POST", "/v1/assets/register", body, token=access)
        assert (status, answer["error"], answer["code"]) == (409, "asset_exists", 409)
        for bad in ("00" * 31, PUB.upper(), "x" * 64, ""):
            status, answer, _ = await call(
                http,
                svc,
                "POST",
                "/v1/assets/register",
                {"assetId": "car-8", "publicKey": bad},
                token=access,
            )
            assert (status, answer["error"]) == (400, "invalid_request")
        assert await _validate(http, svc, await _issue(http, svc, "car-7")) == (
            200,
            {"assetIds": ["car-7"]},
        )


def _reencodings(token: str) -> list[str]:
    head, body = token.rsplit(".", 2)[0], token.split(".")[2]
    footer = token.split(".")[3]
    raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    std = base64.b64encode(raw).decode()
    spellings = [
        f"{head}.{body}==.{footer}",
        f"{head}.{body}=.{footer}",
        f"{head}.{std}.{footer}",
        f"{head}.{body[:10]} {body[10:]}.{footer}",
        f"{head}.{body}\n.{footer}",
        f"{head}.{body}",
        token + ".",
        token + "x",
        token[:-1],
        " " + token,
    ]
    # When the signature happens to hold no '-' or '_' (about 7% of random keys), the
    # standard alphabet spells the very same token: that one is not a re-encoding.
    return [s for s in spellings if s != token]


async def test_revoke_holds_for_every_spelling(
    http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    async with service(clock, assets={"door-1": PUB}) as svc:
        token = await _issue(http, svc)
        status, _, _ = await call(http, svc, "POST", "/v1/assets/revoke", {"token": token})
        assert status == 204
        status, body = await _validate(http, svc, token)
        assert (status, body["error"], body["reason"]) == (401, "invalid_token", "revoked")
        for spelling in _reencodings(token):
            status, body = await _validate(http, svc, spelling)
            assert status == 401, spelling
        # Revoking again is fine; a forged token cannot be revoked.
        status, _, _ = await call(http, svc, "POST", "/v1/assets/revoke", {"token": token})
        assert status == 204
        for bad in ("garbage", token[:-2] + "AA", "v4.local.abc"):
            status, body, _ = await call(http, svc, "POST", "/v1/assets/revoke", {"token": bad})
            assert (status, body["error"]) == (401, "invalid_token")
        # Another token of the same asset is unaffected. (Issued in the same
        # millisecond it would be the same token: Ed25519 signatures are deterministic.)
        clock.advance(0.001)
        other = await _issue(http, svc)
        assert (await _validate(http, svc, other))[0] == 200


_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _flip(token: str, i: int) -> str:
    # Another character of the token's alphabet (the header's letters included).
    c = token[i]
    replacement = _ALPHABET[(_ALPHABET.index(c) + 1) % 64] if c in _ALPHABET else "A"
    return token[:i] + replacement + token[i + 1 :]


async def test_tampered_tokens_rejected(http: aiohttp.ClientSession, clock: ManualClock) -> None:
    async with service(clock, assets={"door-1": PUB}) as svc:
        token = await _issue(http, svc)
        # Every position, header and separators included, over one keep-alive connection.
        for i in range(len(token)):
            flipped = _flip(token, i)
            assert flipped != token
            status, body = await _validate(http, svc, flipped)
            assert (status, body["error"]) == (401, "invalid_token"), i
            status, body, _ = await call(http, svc, "POST", "/v1/assets/revoke", {"token": flipped})
            assert (status, body["error"]) == (401, "invalid_token"), i
        # None of the tampered tokens revoked the real one.
        assert await _validate(http, svc, token) == (200, {"assetIds": ["door-1"]})
        for bad in [*_reencodings(token), "", "v4.public.", "v3.public.abc", "x" * 70_000]:
            status, body = await _validate(http, svc, bad)
            assert status in (401, 413), bad[:40]


# A token the service never signed (or will not honour yet), by kind. Sent to validate
# and to revoke, each must be refused as invalid_token: revoke must not answer 204 to
# a token it did not revoke.


def _foreign_token(svc: RunningService, now: float, kind: str) -> str:
    our_kid = next(iter(svc.state.key_set))
    stranger = SigningKey.from_bytes(bytes(range(100, 132)))
    claims = {
        "assetId": "door-1",
        "iat": format_timestamp(now),
        "exp": format_timestamp(now + 900),
    }
    message = json.dumps(claims, separators=(",", ":")).encode()
    if kind == "foreign-key":  # a stranger's key, and the stranger's kid
        return sign_asset_token(stranger, "door-1", now)
    if kind == "foreign-key-our-kid":  # a stranger's signature under our kid
        return encode_v4_public(stranger, message, json.dumps({"kid": our_kid}).encode())
    if kind == "v4-local":  # a real v4.local token (wrong purpose), our kid in the footer
        key = pyseto.Key.new(version=4, purpose="local", key=bytes(32))
        footer = json.dumps({"kid": our_kid}).encode()
        return str(pyseto.encode(key, message, footer=footer).decode())
    raise AssertionError(kind)


@pytest.mark.parametrize("path", ["/v1/assets/validate", "/v1/assets/revoke"])
@pytest.mark.parametrize("kind", ["foreign-key", "foreign-key-our-kid", "v4-local"])
async def test_tokens_the_service_did_not_sign_are_refused(
    http: aiohttp.ClientSession, clock: ManualClock, kind: str, path: str
) -> None:
    async with service(clock, assets={"door-1": PUB}) as svc:
        token = _foreign_token(svc, clock.time(), kind)
        status, body, headers = await call(http, svc, "POST", path, {"token": token})
        assert (status, body["error"], body["code"]) == (401, "invalid_token", 401)
        assert headers["Content-Type"].startswith("application/json")
        # And a refused revoke revoked nothing: our own tokens still validate.
        assert (await _validate(http, svc, await _issue(http, svc)))[0] == 200


async def test_not_yet_valid_token_is_refused_and_can_be_revoked(
    http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    # A token whose iat lies ahead of the service's clock (another instance's clock
    # ran ahead): not "expired" (701 would send clients to refresh), not valid yet;
    # and revocable, for it turns valid once its iat comes.
    async with service(clock, assets={"door-1": PUB}) as svc:
        token = await _issue(http, svc)
        clock.jump_wall(-120)  # the service's clock now reads 2 minutes before iat
        status, body = await _validate(http, svc, token)
        assert (status, body["error"], body["code"], body["reason"]) == (
            401,
            "invalid_token",
            401,
            "not_yet_valid",
        )
        status, _, _ = await call(http, svc, "POST", "/v1/assets/revoke", {"token": token})
        assert status == 204


async def test_a_token_revoked_before_it_is_valid_stays_revoked(
    http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    async with service(clock, assets={"door-1": PUB}) as svc:
        token = await _issue(http, svc)
        clock.jump_wall(-120)
        await call(http, svc, "POST", "/v1/assets/revoke", {"token": token})
        clock.jump_wall(120)  # its iat has come: it must not turn valid now
        status, body = await _validate(http, svc, token)
        assert (status, body["error"], body["reason"]) == (401, "invalid_token", "revoked")


async def test_key_rotation(http: aiohttp.ClientSession, clock: ManualClock) -> None:
    async with service(clock, assets={"door-1": PUB}) as svc:
        old_token = await _issue(http, svc)
        old_kid = next(iter(await _keys(http, svc)))
        new_kid = svc.rotate_key()
        keys = await _keys(http, svc)
        assert list(keys) == [old_kid, new_kid]
        assert all(k.startswith("k4.pid.") for k in keys)
        _, body, _ = await call(http, svc, "GET", "/v1/keys")
        assert all(entry["paserk"].startswith("k4.public.") for entry in body["keys"])
        assert PublicKey.from_paserk(body["keys"][1]["paserk"]).pid == new_kid
        new_token = await _issue(http, svc)
        assert verify_access_token(new_token, keys, clock.time()).kid == new_kid
        assert (await _validate(http, svc, old_token))[0] == 200
        assert svc.drop_key(old_kid)
        status, body = await _validate(http, svc, old_token)
        assert (status, body["error"], body["reason"]) == (401, "invalid_token", "unknown_key")
        assert (await _validate(http, svc, new_token))[0] == 200
        # Dropping the last key makes a new one: the service can always sign.
        svc.drop_key(new_kid)
        assert len(await _keys(http, svc)) == 1
        await _issue(http, svc)


async def test_keys_assets_and_revocations_persist(
    http: aiohttp.ClientSession, clock: ManualClock, tmp_path: Any
) -> None:
    db = str(tmp_path / "s.db")
    async with service(clock, db=db) as svc:
        access = (await login(http, svc))["accessToken"]
        status, _, _ = await call(
            http,
            svc,
            "POST",
            "/v1/assets/register",
            {"assetId": "gate", "publicKey": PUB},
            token=access,
        )
        assert status == 201
        kept = await _issue(http, svc, "gate")
        clock.advance(1)
        revoked = await _issue(http, svc, "gate")
        await call(http, svc, "POST", "/v1/assets/revoke", {"token": revoked})
        keys_before = await _keys(http, svc)
    async with service(clock, db=db) as svc:
        assert await _keys(http, svc) == keys_before
        assert (await _validate(http, svc, kept))[0] == 200
        assert (await _validate(http, svc, revoked))[1]["reason"] == "revoked"
        await _issue(http, svc, "gate")
    async with service(clock, db=db, rotate_key=True) as svc:
        keys = await _keys(http, svc)
        assert len(keys) == 2
        assert (await _validate(http, svc, kept))[0] == 200
    async with service(clock, db=db, drop_keys=tuple(keys_before)) as svc:
        assert len(await _keys(http, svc)) == 1
        assert (await _validate(http, svc, kept))[1]["reason"] == "unknown_key"


def test_bad_configured_asset_key_fails_fast(clock: ManualClock) -> None:
    from tokensdk.server import ServiceConfig, create_app

    with pytest.raises(ValueError, match="door"):
        create_app(ServiceConfig(assets={"door": "beef"}, clock=clock))

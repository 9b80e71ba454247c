"""The real OAuth 2.0 / OIDC provider harness (tests/oidc) works, capability by capability.

Raw aiohttp against panva's oidc-provider, no tokensdk code: these tests pin the provider
behaviour the OAuth2 backend is built and tested against (endpoints, error bodies, rotation
and reuse detection, DPoP nonces, the scripted interactive flows).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest
from _oidc import (
    OIDCProvider,
    browser_approve_device,
    browser_authorize,
    dpop_proof,
    jwk_thumbprint,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

pytestmark = pytest.mark.anyio

APP = {"Authorization": aiohttp.encode_basic_auth("app", "app-secret")}  # client_secret_basic
APP_POST = {"client_id": "app-post", "client_secret": "app-post-secret"}  # client_secret_post
CLI = {"client_id": "cli"}  # public client, token_endpoint_auth_method none
USER = {"username": "alice", "password": "wonderland"}
OFFLINE = "openid offline_access api:read"
REDIRECT_URI = "http://127.0.0.1:53682/callback"  # native client: any loopback port matches
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"

Factory = Callable[..., OIDCProvider]


@pytest.fixture(scope="module")
def provider(oidc_provider: Factory) -> OIDCProvider:
    return oidc_provider()  # defaults: rotation on, opaque access tokens, DPoP without nonces


@pytest.fixture(scope="module")
def no_rotation(oidc_provider: Factory) -> OIDCProvider:
    return oidc_provider({"rotateRefreshToken": False})


@pytest.fixture(scope="module")
def strict(oidc_provider: Factory) -> OIDCProvider:
    """JWT access tokens, DPoP nonces required, device polling with slow_down, short TTLs.

    Private (its clock moves), and one process for all of these to keep start-up cheap.
    """
    return oidc_provider(
        {
            "accessTokenFormat": "jwt",
            "accessTokenTTL": 60,
            "refreshTokenTTL": 600,
            "dpop": {"nonce": "required"},
            "device": {"interval": 5, "slowDown": True},
        },
        shared=False,
    )


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(
    http: aiohttp.ClientSession,
    url: str,
    data: dict[str, str],
    *,
    auth: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, Any]:
    """POST a form (``auth``: an Authorization header); return (status, JSON or None, headers)."""
    async with http.post(url, data=data, headers={**(auth or {}), **(headers or {})}) as response:
        raw = await response.read()
        body = json.loads(raw) if raw else None
        return response.status, body, response.headers


async def password_login(
    http: aiohttp.ClientSession, provider: OIDCProvider, scope: str = OFFLINE
) -> dict[str, Any]:
    status, body, _ = await post(
        http, provider.token_endpoint, {"grant_type": "password", "scope": scope, **USER}, auth=APP
    )
    assert status == 200, body
    return dict(body)


async def refresh(
    http: aiohttp.ClientSession, provider: OIDCProvider, refresh_token: str
) -> tuple[int, Any]:
    status, body, _ = await post(
        http,
        provider.token_endpoint,
        {"grant_type": "refresh_token", "refresh_token": refresh_token},
        auth=APP,
    )
    return status, body


async def introspect(http: aiohttp.ClientSession, provider: OIDCProvider, token: str) -> Any:
    status, body, _ = await post(http, provider.introspection_endpoint, {"token": token}, auth=APP)
    assert status == 200, body
    return body


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


# --- discovery, client authentication ------------------------------------------------


async def test_discovery_document(http: aiohttp.ClientSession, provider: OIDCProvider) -> None:
    async with http.get(provider.discovery_url) as response:
        assert response.status == 200
        doc = await response.json()
    issuer = provider.issuer
    assert doc["issuer"] == issuer
    assert doc["token_endpoint"] == issuer + "/token"
    assert doc["revocation_endpoint"] == issuer + "/token/revocation"
    assert doc["introspection_endpoint"] == issuer + "/token/introspection"
    assert doc["device_authorization_endpoint"] == issuer + "/device/auth"
    assert doc["authorization_endpoint"] == issuer + "/auth"
    assert "EdDSA" in doc["dpop_signing_alg_values_supported"]
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert {"client_secret_basic", "client_secret_post", "none"} <= set(
        doc["token_endpoint_auth_methods_supported"]
    )
    assert {
        "authorization_code",
        "client_credentials",
        "password",
        "refresh_token",
        DEVICE_GRANT,
    } <= set(doc["grant_types_supported"])
    # RFC 8414's location serves the same document.
    async with http.get(issuer + "/.well-known/oauth-authorization-server") as response:
        assert response.status == 200
        assert (await response.json())["token_endpoint"] == doc["token_endpoint"]


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
async def test_client_credentials(
    http: aiohttp.ClientSession, provider: OIDCProvider, method: str
) -> None:
    form = {"grant_type": "client_credentials", "scope": "api:read"}
    auth = APP if method == "client_secret_basic" else None
    if method == "client_secret_post":
        form |= APP_POST
    status, body, _ = await post(http, provider.token_endpoint, form, auth=auth)
    assert status == 200, body
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "api:read"
    assert body["expires_in"] == 3600
    assert "refresh_token" not in body
    assert (await introspect(http, provider, body["access_token"]))["active"] is True

    # A wrong secret: 401 invalid_client. Both mechanisms at once: 400 invalid_request.
    # (oidc-provider accepts a secret either way, whichever of the two was registered.)
    bad = APP_POST | {"client_secret": "wrong"}
    status, body, _ = await post(http, provider.token_endpoint, form | bad)
    assert (status, body) == (
        401,
        {"error": "invalid_client", "error_description": "client authentication failed"},
    )
    status, body, _ = await post(http, provider.token_endpoint, form | APP_POST, auth=APP)
    assert (status, body["error"]) == (400, "invalid_request")


# --- password grant, refresh, rotation, reuse ----------------------------------------


async def test_password_grant(http: aiohttp.ClientSession, provider: OIDCProvider) -> None:
    body = await password_login(http, provider)
    assert body["token_type"] == "Bearer"
    assert body["refresh_token"]
    assert set(body["scope"].split()) == {"openid", "offline_access", "api:read"}

    # No offline_access, no refresh token.
    body = await password_login(http, provider, scope="api:read")
    assert "refresh_token" not in body

    status, body, _ = await post(
        http,
        provider.token_endpoint,
        {"grant_type": "password", "username": "alice", "password": "nope"},
        auth=APP,
    )
    assert (status, body) == (
        400,
        {"error": "invalid_grant", "error_description": "grant request is invalid"},
    )
    status, body, _ = await post(
        http,
        provider.token_endpoint,
        {"grant_type": "password", "scope": "not-a-scope", **USER},
        auth=APP,
    )
    assert (status, body["error"]) == (400, "invalid_scope")


async def test_refresh_rotates_and_reuse_revokes_the_grant(
    http: aiohttp.ClientSession, oidc_provider: Factory
) -> None:
    provider = oidc_provider(shared=False)  # reads its own stats
    first = await password_login(http, provider)

    status, second = await refresh(http, provider, first["refresh_token"])
    assert status == 200, second
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]

    # Replaying the rotated token: invalid_grant, and the whole grant is revoked...
    status, body = await refresh(http, provider, first["refresh_token"])
    assert (status, body) == (
        400,
        {"error": "invalid_grant", "error_description": "grant request is invalid"},
    )
    # ...so the legitimate holder's new refresh token and access token die with it.
    status, body = await refresh(http, provider, second["refresh_token"])
    assert (status, body["error"]) == (400, "invalid_grant")
    assert (await introspect(http, provider, second["access_token"]))["active"] is False

    stats = await provider.stats()
    assert stats["grants"]["refresh_token"] == {"200": 1, "400": 2}
    assert stats["grants_revoked"] == 1
    details = [e["error_detail"] for e in stats["errors"] if e["grant_type"] == "refresh_token"]
    assert details == ["refresh token already used", "refresh token not found"]


async def test_refresh_without_rotation(
    http: aiohttp.ClientSession, no_rotation: OIDCProvider
) -> None:
    first = await password_login(http, no_rotation)
    for _ in range(2):
        status, body = await refresh(http, no_rotation, first["refresh_token"])
        assert status == 200, body
        # The library echoes the same refresh token (RFC 6749 §6 also allows omitting it).
        assert body.get("refresh_token", first["refresh_token"]) == first["refresh_token"]
        assert body["access_token"] != first["access_token"]


# --- revocation, introspection, the protected resource -------------------------------


async def test_revocation(http: aiohttp.ClientSession, provider: OIDCProvider) -> None:
    # Revoking the refresh token ends the grant.
    tokens = await password_login(http, provider)
    status, body, _ = await post(
        http,
        provider.revocation_endpoint,
        {"token": tokens["refresh_token"], "token_type_hint": "refresh_token"},
        auth=APP,
    )
    assert (status, body) == (200, None)
    status, body = await refresh(http, provider, tokens["refresh_token"])
    assert (status, body["error"]) == (400, "invalid_grant")
    assert (await introspect(http, provider, tokens["access_token"]))["active"] is False

    # Revoking an opaque access token revokes its grant's refresh tokens too.
    tokens = await password_login(http, provider)
    status, _, _ = await post(
        http, provider.revocation_endpoint, {"token": tokens["access_token"]}, auth=APP
    )
    assert status == 200
    status, body = await refresh(http, provider, tokens["refresh_token"])
    assert (status, body["error"]) == (400, "invalid_grant")

    # Unknown tokens: 200 as RFC 7009 §2.2 says.
    status, _, _ = await post(http, provider.revocation_endpoint, {"token": "nope"}, auth=APP)
    assert status == 200

    # The protected resource answers a revoked token the way the middleware expects.
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    async with http.get(provider.resource_url, headers=headers) as response:
        assert response.status == 401
        assert 'Bearer realm="' in response.headers["WWW-Authenticate"]
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


async def test_introspection(http: aiohttp.ClientSession, provider: OIDCProvider) -> None:
    tokens = await password_login(http, provider)
    body = await introspect(http, provider, tokens["access_token"])
    assert body["active"] is True
    assert body["sub"] == "alice"
    assert body["client_id"] == "app"
    assert body["token_type"] == "Bearer"
    assert body["iss"] == provider.issuer
    assert set(body["scope"].split()) == {"openid", "offline_access", "api:read"}
    assert body["exp"] - body["iat"] == 3600
    assert (await introspect(http, provider, "not-a-token")) == {"active": False}

    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    async with http.get(provider.resource_url, headers=headers) as response:
        assert response.status == 200
        assert (await response.json())["sub"] == "alice"


# --- interactive flows, scripted -----------------------------------------------------


async def test_authorization_code_with_pkce(
    http: aiohttp.ClientSession, provider: OIDCProvider
) -> None:
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(16)
    query = {
        "client_id": "cli",
        "response_type": "code",
        "redirect_uri": REDIRECT_URI,
        "scope": OFFLINE,
        "state": state,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        # offline_access is only honoured together with prompt=consent (OIDC Core §11).
        "prompt": "consent",
    }
    callback = await browser_authorize(
        provider.authorization_endpoint + "?" + urlencode(query), REDIRECT_URI
    )
    params = {k: v[0] for k, v in parse_qs(urlsplit(callback).query).items()}
    assert params["state"] == state
    assert params["iss"] == provider.issuer  # RFC 9207

    exchange = {
        "grant_type": "authorization_code",
        "code": params["code"],
        "redirect_uri": REDIRECT_URI,
        **CLI,
    }
    status, body, _ = await post(
        http, provider.token_endpoint, exchange | {"code_verifier": "x" * 43}
    )
    assert (status, body["error"]) == (400, "invalid_grant")  # wrong PKCE verifier
    callback = await browser_authorize(
        provider.authorization_endpoint + "?" + urlencode(query), REDIRECT_URI
    )
    exchange["code"] = parse_qs(urlsplit(callback).query)["code"][0]
    status, body, _ = await post(
        http, provider.token_endpoint, exchange | {"code_verifier": verifier}
    )
    assert status == 200, body
    assert {"access_token", "refresh_token", "id_token"} <= body.keys()
    # A public client's refresh token rotates on each use.
    status, again, _ = await post(
        http,
        provider.token_endpoint,
        {"grant_type": "refresh_token", "refresh_token": body["refresh_token"], **CLI},
    )
    assert status == 200, again
    assert again["refresh_token"] != body["refresh_token"]


async def test_device_flow(http: aiohttp.ClientSession, provider: OIDCProvider) -> None:
    status, device, _ = await post(
        http, provider.device_authorization_endpoint, {"scope": OFFLINE, **CLI}
    )
    assert status == 200, device
    assert device["verification_uri"] == provider.issuer + "/device"
    assert device["verification_uri_complete"].startswith(device["verification_uri"] + "?")
    assert "interval" not in device  # RFC 8628's default of 5 s applies
    poll = {"grant_type": DEVICE_GRANT, "device_code": device["device_code"], **CLI}

    status, body, _ = await post(http, provider.token_endpoint, poll)
    assert (status, body["error"]) == (400, "authorization_pending")

    # The user types the code in at verification_uri, logs in, confirms.
    await browser_approve_device(device["verification_uri"], device["user_code"], login="bob")
    status, body, _ = await post(http, provider.token_endpoint, poll)
    assert status == 200, body
    assert body["refresh_token"]
    assert (await introspect(http, provider, body["access_token"]))["sub"] == "bob"

    status, body, _ = await post(http, provider.token_endpoint, poll)
    assert (status, body["error"]) == (400, "invalid_grant")  # a device code works once


async def test_device_flow_interval_and_slow_down(
    http: aiohttp.ClientSession, strict: OIDCProvider
) -> None:
    status, device, _ = await post(
        http, strict.device_authorization_endpoint, {"scope": OFFLINE, **CLI}
    )
    assert status == 200, device
    assert device["interval"] == 5
    poll = {"grant_type": DEVICE_GRANT, "device_code": device["device_code"], **CLI}
    status, body, _ = await post(http, strict.token_endpoint, poll)
    assert (status, body["error"]) == (400, "authorization_pending")
    status, body, _ = await post(http, strict.token_endpoint, poll)
    assert (status, body["error"]) == (400, "slow_down")
    await strict.advance_clock(5)
    await browser_approve_device(device["verification_uri_complete"])
    status, body, _ = await post(http, strict.token_endpoint, poll)
    assert status == 200, body


# --- DPoP ----------------------------------------------------------------------------


async def test_dpop_bound_tokens(http: aiohttp.ClientSession, provider: OIDCProvider) -> None:
    key = Ed25519PrivateKey.generate()
    proof = dpop_proof(key, "POST", provider.token_endpoint)
    status, body, _ = await post(
        http,
        provider.token_endpoint,
        {"grant_type": "client_credentials", "scope": "api:read"},
        auth=APP,
        headers={"DPoP": proof},
    )
    assert status == 200, body
    assert body["token_type"] == "DPoP"
    token = body["access_token"]
    assert (await introspect(http, provider, token))["cnf"] == {"jkt": jwk_thumbprint(key)}

    # A replayed proof is refused.
    status, body, _ = await post(
        http,
        provider.token_endpoint,
        {"grant_type": "client_credentials"},
        auth=APP,
        headers={"DPoP": proof},
    )
    assert (status, body["error"]) == (400, "invalid_grant")

    url = provider.resource_url
    fresh = dpop_proof(key, "GET", url, access_token=token)
    async with http.get(url, headers={"Authorization": f"DPoP {token}", "DPoP": fresh}) as r:
        assert r.status == 200
        assert (await r.json())["token_type"] == "DPoP"
    async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status == 401  # a bound token presented as a bearer token
    no_ath = dpop_proof(key, "GET", url)
    async with http.get(url, headers={"Authorization": f"DPoP {token}", "DPoP": no_ath}) as r:
        assert r.status == 401
        assert 'error="invalid_dpop_proof"' in r.headers["WWW-Authenticate"]

    # Password grant for a public client: the refresh token is bound to the key as well.
    proof = dpop_proof(key, "POST", provider.token_endpoint)
    status, body, _ = await post(
        http,
        provider.token_endpoint,
        {"grant_type": "password", "scope": OFFLINE, **USER, **CLI},
        headers={"DPoP": proof},
    )
    assert (status, body["token_type"]) == (200, "DPoP"), body
    rt = {"grant_type": "refresh_token", "refresh_token": body["refresh_token"], **CLI}
    status, body, _ = await post(http, provider.token_endpoint, rt)
    assert (status, body["error"]) == (400, "invalid_grant")  # no proof: refused
    proof = dpop_proof(key, "POST", provider.token_endpoint)
    status, body, _ = await post(http, provider.token_endpoint, rt, headers={"DPoP": proof})
    assert (status, body["token_type"]) == (200, "DPoP"), body


async def test_dpop_nonce_challenge(http: aiohttp.ClientSession, strict: OIDCProvider) -> None:
    key = Ed25519PrivateKey.generate()
    form = {"grant_type": "password", "scope": OFFLINE, **USER}
    proof = dpop_proof(key, "POST", strict.token_endpoint)
    status, body, headers = await post(
        http, strict.token_endpoint, form, auth=APP, headers={"DPoP": proof}
    )
    assert (status, body) == (
        400,
        {"error": "use_dpop_nonce", "error_description": "nonce is required in the DPoP proof"},
    )
    nonce = headers["DPoP-Nonce"]
    proof = dpop_proof(key, "POST", strict.token_endpoint, nonce=nonce)
    status, body, headers = await post(
        http, strict.token_endpoint, form, auth=APP, headers={"DPoP": proof}
    )
    assert (status, body["token_type"]) == (200, "DPoP"), body
    token = body["access_token"]

    # The resource demands its own nonce: 401 with WWW-Authenticate DPoP error=use_dpop_nonce.
    url = strict.resource_url
    proof = dpop_proof(key, "GET", url, access_token=token)
    async with http.get(url, headers={"Authorization": f"DPoP {token}", "DPoP": proof}) as r:
        assert r.status == 401
        assert 'DPoP realm="' in r.headers["WWW-Authenticate"]
        assert 'error="use_dpop_nonce"' in r.headers["WWW-Authenticate"]
        resource_nonce = r.headers["DPoP-Nonce"]
    proof = dpop_proof(key, "GET", url, access_token=token, nonce=resource_nonce)
    async with http.get(url, headers={"Authorization": f"DPoP {token}", "DPoP": proof}) as r:
        assert r.status == 200


# --- JWT access tokens, the provider's clock -----------------------------------------


async def test_jwt_access_tokens_and_clock(
    http: aiohttp.ClientSession, strict: OIDCProvider
) -> None:
    status, body, _ = await post(
        http,
        strict.token_endpoint,
        {"grant_type": "password", "scope": OFFLINE, **USER, **CLI},
    )
    assert status == 200, body
    header, claims = (
        json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        for part in body["access_token"].split(".")[:2]
    )
    assert header["typ"] == "at+jwt"
    assert claims["aud"] == "urn:tokensdk:api"
    assert claims["sub"] == "alice"
    assert claims["scope"] == "api:read"
    assert body["expires_in"] == 60
    # Structured tokens cannot be introspected.
    status, error, _ = await post(
        http, strict.introspection_endpoint, {"token": body["access_token"]}, auth=APP
    )
    assert status == 400, error

    headers = {"Authorization": f"Bearer {body['access_token']}"}
    async with http.get(strict.resource_url, headers=headers) as r:
        assert (r.status, (await r.json())["format"]) == (200, "jwt")
    await strict.advance_clock(61)
    async with http.get(strict.resource_url, headers=headers) as r:
        assert r.status == 401  # expired on the provider's clock
    rt = {"grant_type": "refresh_token", "refresh_token": body["refresh_token"], **CLI}
    status, renewed, _ = await post(http, strict.token_endpoint, rt)
    assert status == 200, renewed
    await strict.advance_clock(601)
    status, expired, _ = await post(
        http,
        strict.token_endpoint,
        rt | {"refresh_token": renewed["refresh_token"]},
    )
    assert (status, expired["error"]) == (400, "invalid_grant")

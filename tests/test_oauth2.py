"""The OAuth2 backend: pure request building and classification, and the whole session
against a real OAuth 2.0 / OpenID Connect provider (panva's oidc-provider, tests/oidc).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import anyio
import pytest
from _oidc import OIDCProvider, browser_approve_device, browser_authorize, jwk_thumbprint
from _proxy import FaultProxy, html_ok, json_body, rate_limited, unavailable
from conftest import autojump
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import tokensdk
from tokensdk import (
    Credentials,
    DeviceCode,
    Ed25519Signer,
    EventType,
    FileStore,
    IntrospectionCache,
    InvalidClient,
    InvalidCredentials,
    InvalidInput,
    ManualClock,
    OAuth2,
    ProtocolError,
    RateLimited,
    RetryConfig,
    ServiceError,
    ServiceUnavailable,
    Session,
    SessionLost,
    SessionStatus,
    TokenInfo,
    introspect,
)
from tokensdk._backend import AuthBackend, CallerError, GrantBackend, Lost, Transient
from tokensdk._dpop import jwk, signing_input
from tokensdk._models import SessionSnapshot, document_to_snapshot, snapshot_to_document
from tokensdk._oauth2 import DEVICE_GRANT

pytestmark = pytest.mark.anyio

Factory = Callable[..., OIDCProvider]
SCOPE = "openid offline_access api:read"
FAST = RetryConfig(initial=0.001, maximum=0.005, jitter=0.0, max_attempts=4)


@pytest.fixture(scope="module")
def provider(oidc_provider: Factory) -> OIDCProvider:
    return oidc_provider()  # rotation on, opaque access tokens


@pytest.fixture(scope="module")
def no_rotation(oidc_provider: Factory) -> OIDCProvider:
    return oidc_provider({"rotateRefreshToken": False})


@pytest.fixture
async def private(oidc_provider: Factory) -> OIDCProvider:
    """A provider of the test's own: its stats are exact, its clock may move."""
    return oidc_provider(shared=False)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def app(provider: OIDCProvider, **kwargs: Any) -> OAuth2:
    """The confidential client ``app`` (client_secret_basic), discovering its endpoints."""
    options: dict[str, Any] = {"client_id": "app", "client_secret": "app-secret", "scope": SCOPE}
    options.update(kwargs)
    return OAuth2(provider.issuer, **options)


async def resource(http: aiohttp.ClientSession, provider: OIDCProvider, token: str) -> int:
    async with http.get(
        provider.resource_url, headers={"Authorization": f"Bearer {token}"}
    ) as response:
        return response.status


async def raw_password_grant(http: aiohttp.ClientSession, provider: OIDCProvider) -> dict[str, Any]:
    async with http.post(
        provider.token_endpoint,
        data={
            "grant_type": "password",
            "username": "alice",
            "password": "wonderland",
            "scope": SCOPE,
        },
        headers={"Authorization": aiohttp.encode_basic_auth("app", "app-secret")},
    ) as response:
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body


async def metadata(provider: OIDCProvider, path: str) -> bytes:
    async with aiohttp.ClientSession() as http, http.get(provider.issuer + path) as response:
        assert response.status == 200
        return await response.read()


def grants(stats: dict[str, Any], grant_type: str, status: str = "200") -> int:
    return int(stats["grants"].get(grant_type, {}).get(status, 0))


# -- pure: no network -------------------------------------------------------------------

BACKEND = OAuth2(
    "https://id.example.com/realms/main/",
    client_id="bot client",
    client_secret="s3cr:t/+",
    scope="api:read",
    token_endpoint="https://id.example.com/token",
    revocation_endpoint="https://id.example.com/revoke",
)


def test_oauth2_is_a_grant_backend_with_the_issuer_as_root() -> None:
    assert isinstance(BACKEND, AuthBackend)
    assert isinstance(BACKEND, GrantBackend)
    assert (BACKEND.base_url, BACKEND.api_path) == ("https://id.example.com/realms/main", "")
    assert BACKEND.discovery() == ()  # explicit endpoints: never discovered


def test_client_secret_basic_form_encodes_before_base64() -> None:
    call = BACKEND.password_login("alice", "wonderland")
    assert (call.method, call.path) == ("POST", "https://id.example.com/token")
    assert call.form == {
        "grant_type": "password",
        "username": "alice",
        "password": "wonderland",
        "scope": "api:read",
    }
    assert call.headers is not None
    basic = base64.b64decode(call.headers["Authorization"].removeprefix("Basic ")).decode()
    assert basic == "bot+client:s3cr%3At%2F%2B"  # RFC 6749 §2.3.1


def test_client_secret_post_and_public_clients_send_the_id_in_the_form() -> None:
    post = OAuth2(
        "https://id.example.com",
        client_id="c",
        client_secret="s",
        auth_method="client_secret_post",
        token_endpoint="https://id.example.com/token",
    )
    call = post.client_credentials()
    assert call.form == {"grant_type": "client_credentials", "client_id": "c", "client_secret": "s"}
    assert call.headers == {}
    public = OAuth2("https://id.example.com", client_id="cli", token_endpoint="https://x/token")
    assert public.auth_method == "none"
    assert public.refresh_token_login("R").form == {
        "grant_type": "refresh_token",
        "refresh_token": "R",
        "client_id": "cli",
    }


@pytest.mark.parametrize(
    "kwargs",
    [
        {"client_id": ""},
        {"client_id": "c", "auth_method": "client_secret_jwt", "client_secret": "s"},
        {"client_id": "c", "auth_method": "client_secret_basic"},  # no secret
        {"client_id": "c", "auth_method": "none", "client_secret": "s"},
        {"client_id": "c", "token_endpoint": "ftp://x/token"},
        {"client_id": "c", "default_lifetime": 0},
    ],
)
def test_bad_configuration_is_invalid_input(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput):
        OAuth2("https://id.example.com", **kwargs)


def test_discovery_tries_openid_connect_then_rfc_8414() -> None:
    backend = OAuth2("https://id.example.com/realms/main", client_id="c")
    assert [call.path for call in backend.discovery()] == [
        "https://id.example.com/realms/main/.well-known/openid-configuration",
        "https://id.example.com/.well-known/oauth-authorization-server/realms/main",
    ]
    found = backend.discovered(
        {
            "issuer": "https://id.example.com/realms/main",
            "token_endpoint": "https://id.example.com/t",
            "revocation_endpoint": "https://id.example.com/r",
        }
    )
    assert (found.token_endpoint, found.revocation_endpoint) == (
        "https://id.example.com/t",
        "https://id.example.com/r",
    )
    assert found.discovery() == ()
    with pytest.raises(ProtocolError):  # RFC 8414 §3.3: another issuer's document
        backend.discovered({"issuer": "https://evil.example", "token_endpoint": "https://e/t"})
    with pytest.raises(ProtocolError):
        backend.discovered({"issuer": "https://id.example.com/realms/main"})


def test_grant_parses_a_token_answer_and_defaults_a_missing_lifetime() -> None:
    creds = BACKEND.grant(
        {"access_token": "A", "token_type": "bearer", "scope": "api:read", "id_token": "I"},
        wall=100.0,
        monotonic=10.0,
    )
    assert creds.refresh_token is None
    assert (creds.refresh_expires_at, creds.refresh_deadline) == (None, None)
    assert creds.lifetime == tokensdk._oauth2.DEFAULT_LIFETIME
    assert (creds.access_expires_at, creds.access_deadline) == (400.0, 310.0)
    assert dict(creds.extra) == {"scope": "api:read", "id_token": "I", "token_type": "bearer"}
    assert creds.refresh_left(1e12, 1e12) == float("inf")
    keycloak = BACKEND.grant(
        {"access_token": "A", "expires_in": 60, "refresh_token": "R", "refresh_expires_in": 1800},
        wall=100.0,
        monotonic=10.0,
    )
    assert (keycloak.refresh_expires_at, keycloak.refresh_deadline) == (1900.0, 1810.0)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"access_token": ""},
        {"access_token": "A", "token_type": "mac"},
        {"access_token": "A", "expires_in": -1},
        {"access_token": "A", "expires_in": True},
        {"access_token": "A", "expires_in": "soon"},
        {"access_token": "A", "refresh_token": 5},
    ],
)
def test_grant_rejects_answers_off_the_rfc(body: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        BACKEND.grant(body, wall=0.0, monotonic=0.0)


def test_a_refresh_answer_without_a_refresh_token_keeps_the_old_one() -> None:
    old = BACKEND.grant(
        {"access_token": "A1", "expires_in": 60, "refresh_token": "R1", "scope": "api:read"},
        wall=0.0,
        monotonic=0.0,
    )
    old = old.renewed_from(Credentials("alice", "x", None, 0.0, None, 0.0, None, 1.0))
    new = BACKEND.grant({"access_token": "A2", "expires_in": 60}, wall=50.0, monotonic=50.0)
    kept = new.renewed_from(old)
    assert (kept.username, kept.access_token, kept.refresh_token) == ("alice", "A2", "R1")
    assert kept.extra["scope"] == "api:read"
    rotated = BACKEND.grant(
        {"access_token": "A3", "expires_in": 60, "refresh_token": "R2"}, wall=0.0, monotonic=0.0
    ).renewed_from(old)
    assert rotated.refresh_token == "R2"


def test_refresh_runs_client_credentials_again_and_gives_up_without_a_grant() -> None:
    token = BACKEND.grant({"access_token": "A"}, wall=0.0, monotonic=0.0)
    assert BACKEND.refresh(token, "unused") is None  # nothing to renew with
    client = Credentials(
        "c", "A", None, 0.0, None, 0.0, None, 1.0, extra={"grant_type": "client_credentials"}
    )
    call = BACKEND.refresh(client, "unused")
    assert call is not None
    assert call.form is not None
    assert call.form["grant_type"] == "client_credentials"


def test_errors_are_classified_by_rfc_6749_section_5_2() -> None:
    def refined(status: int, error: str) -> tokensdk.TokenSDKError:
        cls = InvalidCredentials if status == 401 else ServiceError
        return BACKEND.refine(cls("x", status=status, error=error, code=status))

    grant = refined(400, "invalid_grant")
    assert isinstance(grant, InvalidCredentials)
    assert BACKEND.classify(grant) == Lost("invalid_grant")
    for status, error in [(401, "invalid_client"), (400, "unauthorized_client")]:
        err = refined(status, error)
        assert isinstance(err, InvalidClient)
        assert BACKEND.classify(err) == CallerError(error)
    assert BACKEND.classify(refined(400, "invalid_scope")) == CallerError("invalid_scope")
    assert BACKEND.classify(RateLimited("x", retry_after=7.0)) == Transient(7.0)
    assert BACKEND.classify(ServiceUnavailable("x", status=503)) == Transient()
    assert BACKEND.classify(ProtocolError("x")) == Transient()


def test_credentials_without_a_refresh_token_persist_and_old_documents_load() -> None:
    creds = Credentials(
        "app", "A", None, 160.0, None, 60.0, None, 60.0, extra={"grant_type": "client_credentials"}
    )
    snapshot = SessionSnapshot(status=SessionStatus.ACTIVE, credentials=creds)
    document = snapshot_to_document(snapshot)
    assert document["credentials"]["refreshToken"] is None
    back = document_to_snapshot(document, wall=100.0, monotonic=0.0)
    assert back.credentials == creds
    assert back.credentials is not None
    assert back.credentials.refresh_deadline is None
    old = dict(document, credentials={k: v for k, v in document["credentials"].items()})
    old["credentials"].update(refreshToken="R", refreshExpiresAt=1000.0)
    del old["credentials"]["extra"]
    restored = document_to_snapshot(old, wall=100.0, monotonic=0.0).credentials
    assert restored is not None
    assert (restored.refresh_token, restored.refresh_deadline, dict(restored.extra)) == (
        "R",
        900.0,
        {},
    )


def test_secrets_are_not_in_reprs() -> None:
    creds = Credentials(
        "alice", "ACCESS", "REFRESH", 1.0, 2.0, 1.0, 2.0, 1.0, extra={"id_token": "IDTOKEN"}
    )
    text = repr(BACKEND) + repr(creds) + repr(BACKEND.password_login("alice", "PASSWORD"))
    text += repr(BACKEND.revocation(creds))
    for secret in ("s3cr", "ACCESS", "REFRESH", "IDTOKEN", "PASSWORD", "Basic"):
        assert secret not in text


# -- against the real provider ----------------------------------------------------------


async def test_password_grant_with_discovery_and_rotation(
    provider: OIDCProvider, http: aiohttp.ClientSession
) -> None:
    async with Session(app(provider)) as session:
        await session.login("alice", "wonderland")
        first = session.credentials
        assert first is not None
        assert first.refresh_token is not None
        assert (session.username, first.extra["scope"]) == ("alice", SCOPE)
        assert await resource(http, provider, await session.access_token()) == 200
        second = await session.token_refresh()
        assert second.refresh_token not in (None, first.refresh_token)  # rotated
        assert second.access_token != first.access_token
        assert second.username == "alice"
        assert await resource(http, provider, await session.access_token()) == 200


async def test_refresh_without_rotation_keeps_the_refresh_token(
    no_rotation: OIDCProvider, http: aiohttp.ClientSession
) -> None:
    async with Session(app(no_rotation)) as session:
        await session.login("alice", "wonderland")
        first = session.credentials
        assert first is not None
        second = await session.token_refresh()
        third = await session.token_refresh()
        assert first.refresh_token == second.refresh_token == third.refresh_token
        assert len({first.access_token, second.access_token, third.access_token}) == 3
        assert await resource(http, no_rotation, third.access_token) == 200


async def test_reuse_of_a_rotated_refresh_token_loses_the_session(private: OIDCProvider) -> None:
    async with Session(app(private)) as session:
        await session.login("alice", "wonderland")
        spent = session.credentials
        assert spent is not None
        assert spent.refresh_token is not None
        await session.token_refresh()
        # Someone replays the spent refresh token: the provider revokes the whole grant.
        async with Session(app(private)) as thief:
            with pytest.raises(InvalidCredentials):
                await thief.login_with_refresh_token(spent.refresh_token)
        with pytest.raises(SessionLost) as lost:
            await session.token_refresh()
        assert lost.value.reason == "invalid_grant"
        assert session.status is SessionStatus.NEEDS_LOGIN
    stats = await private.stats()
    assert stats["grants_revoked"] == 1
    assert grants(stats, "refresh_token", "400") == 2  # the replay, then ours: never retried


async def test_client_credentials_runs_the_grant_again_instead_of_refreshing(
    private: OIDCProvider, http: aiohttp.ClientSession
) -> None:
    clock = ManualClock()
    async with Session(app(private, scope="api:read"), clock=clock) as session:
        await session.login_client_credentials()
        creds = session.credentials
        assert creds is not None
        assert (creds.refresh_token, session.username) == (None, "app")
        assert session.next_refresh is not None  # renewed in the background
        events = session.events()
        clock.advance(creds.lifetime)  # the background renewal comes due
        async for event in events:
            if event.type is EventType.REFRESHED:
                break
        renewed = session.credentials
        assert renewed is not None
        assert renewed.access_token != creds.access_token
        assert await resource(http, private, renewed.access_token) == 200
    stats = await private.stats()
    assert grants(stats, "client_credentials") == 2
    assert grants(stats, "refresh_token") == 0


async def test_a_refresh_token_obtained_elsewhere_is_imported(
    provider: OIDCProvider, http: aiohttp.ClientSession
) -> None:
    outside = await raw_password_grant(http, provider)
    async with Session(app(provider)) as session:
        await session.login_with_refresh_token(outside["refresh_token"], username="alice")
        creds = session.credentials
        assert creds is not None
        assert session.status is SessionStatus.ACTIVE
        assert creds.refresh_token not in (None, outside["refresh_token"])  # redeemed, rotated
        assert await resource(http, provider, creds.access_token) == 200


async def test_logout_revokes_the_grant(
    provider: OIDCProvider, http: aiohttp.ClientSession
) -> None:
    async with Session(app(provider)) as session:
        await session.login("alice", "wonderland")
        creds = session.credentials
        assert creds is not None
        assert creds.refresh_token is not None
        assert await session.logout() is True
        assert session.status is SessionStatus.LOGGED_OUT
    assert await resource(http, provider, creds.access_token) == 401
    async with Session(app(provider)) as again:
        with pytest.raises(InvalidCredentials):
            await again.login_with_refresh_token(creds.refresh_token)


async def test_wrong_password_and_wrong_client_are_typed_and_not_retried(
    private: OIDCProvider,
) -> None:
    async with Session(app(private)) as session:
        with pytest.raises(InvalidCredentials):
            await session.login("alice", "not-the-password")
    wrong = app(private, client_secret="not-the-secret")
    async with Session(wrong) as session:
        with pytest.raises(InvalidClient) as refused:
            await session.login("alice", "wonderland")
        with pytest.raises(InvalidClient):
            await session.login_client_credentials()
    assert "not-the-secret" not in str(refused.value)
    stats = await private.stats()
    assert grants(stats, "password", "400") == 1
    assert grants(stats, "password", "401") == 1
    assert grants(stats, "client_credentials", "401") == 1


async def test_explicit_endpoints_client_secret_post_and_no_discovery(
    provider: OIDCProvider, http: aiohttp.ClientSession
) -> None:
    async with FaultProxy(provider.issuer).running() as proxy:
        backend = OAuth2(
            provider.issuer,
            client_id="app-post",
            client_secret="app-post-secret",
            auth_method="client_secret_post",
            scope=SCOPE,
            token_endpoint=proxy.url + "/token",
            revocation_endpoint=proxy.url + "/token/revocation",
        )
        async with Session(backend) as session:
            await session.login("alice", "wonderland")
            await session.token_refresh()
            assert await resource(http, provider, await session.access_token()) == 200
            assert await session.logout() is True
        assert set(proxy.seen) == {"/token", "/token/revocation"}
        assert all(b"client_secret=app-post-secret" in hit.body for hit in proxy.hits)


async def test_discovery_is_fetched_once(provider: OIDCProvider) -> None:
    # The issuer is the proxy's URL, so the provider's document (naming its own issuer)
    # must be refused, and rewriting it through a fault shows the fetch count.
    async with FaultProxy(provider.issuer).running() as proxy:
        raw = await metadata(provider, "/.well-known/openid-configuration")
        document = raw.replace(provider.issuer.encode(), proxy.url.encode())
        proxy.only_paths = {"/.well-known/openid-configuration"}
        proxy.sticky = json_body(document)
        backend = OAuth2(proxy.url, client_id="app", client_secret="app-secret", scope=SCOPE)
        async with Session(backend) as session:
            async with anyio.create_task_group() as tg:
                for _ in range(5):
                    tg.start_soon(session.login, "alice", "wonderland")
            await session.token_refresh()
            await session.logout()
        assert proxy.seen["/.well-known/openid-configuration"] == 1
        assert proxy.seen["/token"] == 6
        assert proxy.seen["/token/revocation"] == 1


async def test_rfc_8414_metadata_when_there_is_no_openid_configuration(
    provider: OIDCProvider,
) -> None:
    async with FaultProxy(provider.issuer).running() as proxy:
        raw = await metadata(provider, "/.well-known/oauth-authorization-server")
        document = raw.replace(provider.issuer.encode(), proxy.url.encode())
        not_found = json_body(b'{"error":"not_found"}', status=404)
        proxy.fail_next(1, not_found)  # the OIDC document
        proxy.fail_next(1, json_body(document))  # the RFC 8414 one
        backend = OAuth2(proxy.url, client_id="app", client_secret="app-secret", scope=SCOPE)
        async with Session(backend) as session:
            await session.login("alice", "wonderland")
        assert [hit.path for hit in proxy.hits[:3]] == [
            "/.well-known/openid-configuration",
            "/.well-known/oauth-authorization-server",
            "/token",
        ]


async def test_discovery_of_another_issuer_is_a_protocol_error(provider: OIDCProvider) -> None:
    async with FaultProxy(provider.issuer).running() as proxy:
        backend = OAuth2(proxy.url, client_id="app", client_secret="app-secret")
        async with Session(backend) as session:
            with pytest.raises(ProtocolError):
                await session.login("alice", "wonderland")


async def test_transient_faults_are_retried_and_garbage_is_a_protocol_error(
    provider: OIDCProvider,
) -> None:
    async with FaultProxy(provider.issuer).running() as proxy:
        backend = app(provider, token_endpoint=proxy.url + "/token")
        async with Session(backend, retry=FAST) as session:
            proxy.fail_next(1, unavailable)
            proxy.fail_next(1, rate_limited(0))
            await session.login("alice", "wonderland")
            assert proxy.faulted["/token"] == 2
            assert proxy.seen["/token"] == 3
            proxy.sticky = html_ok
            with pytest.raises(ProtocolError):
                await session.token_refresh()
            proxy.sticky = None
            await proxy.refuse()
            with pytest.raises(ServiceUnavailable):
                await session.token_refresh()
            await proxy.accept()
            assert session.status is SessionStatus.ACTIVE  # transient: still logged in
            await session.token_refresh()


async def test_middleware_refreshes_once_on_invalid_token(private: OIDCProvider) -> None:
    clock = ManualClock()  # the session's clock stands still: it thinks its token is fresh
    async with Session(app(private), clock=clock) as session:
        await session.login("alice", "wonderland")
        stale = await session.access_token()
        await private.advance_clock(3601)  # the provider's access tokens expire
        async with (
            aiohttp.ClientSession(middlewares=(session.middleware(),)) as http,
            http.get(private.resource_url) as response,
        ):
            assert response.status == 200
            assert (await response.json())["sub"] == "alice"
        assert await session.access_token() != stale
    stats = await private.stats()
    assert grants(stats, "refresh_token") == 1


async def test_a_storm_of_10000_callers_causes_one_refresh(private: OIDCProvider) -> None:
    clock = ManualClock()
    async with Session(app(private), clock=clock) as session:
        await session.login("alice", "wonderland")
        creds = session.credentials
        assert creds is not None
        clock.advance(creds.lifetime)  # expired: every caller needs a refresh
        tokens: list[str] = []

        async def caller() -> None:
            tokens.append(await session.access_token())

        async with anyio.create_task_group() as tg:
            for _ in range(10_000):
                tg.start_soon(caller)
        assert len(tokens) == 10_000
        assert set(tokens) != {creds.access_token}
        assert len(set(tokens)) == 1
    stats = await private.stats()
    assert grants(stats, "refresh_token") == 1
    assert stats["grants_revoked"] == 0  # a double refresh would have tripped reuse detection


async def test_state_persists_and_resumes_in_the_next_process(
    provider: OIDCProvider, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    path = tmp_path / "state.json"
    async with Session(app(provider), store=FileStore(path)) as session:
        await session.login("alice", "wonderland")
        saved = session.credentials
    async with Session(app(provider), store=FileStore(path)) as resumed:
        assert resumed.status is SessionStatus.ACTIVE
        assert resumed.credentials == saved
        assert resumed.username == "alice"
        assert await resource(http, provider, await resumed.access_token()) == 200
        await resumed.login_with_token()  # checked with the provider: a refresh
        assert resumed.credentials is not None
        assert resumed.credentials != saved
    client = tmp_path / "client.json"
    async with Session(app(provider, scope="api:read"), store=FileStore(client)) as session:
        await session.login_client_credentials()
    async with Session(app(provider, scope="api:read"), store=FileStore(client)) as resumed:
        renewed = await resumed.token_refresh()  # the client credentials grant, again
        assert renewed.refresh_token is None
        assert renewed.extra["grant_type"] == "client_credentials"
        assert await resource(http, provider, renewed.access_token) == 200


async def test_relogin_hook_after_the_grant_is_revoked(
    provider: OIDCProvider, http: aiohttp.ClientSession
) -> None:
    calls: list[str] = []

    async def relogin(session: Session) -> tuple[str, str]:
        calls.append(session.snapshot.status.value)
        return ("alice", "wonderland")

    async with Session(app(provider), relogin=relogin) as session:
        await session.login("alice", "wonderland")
        creds = session.credentials
        assert creds is not None
        assert creds.refresh_token is not None
        async with http.post(  # revoked behind the session's back (an admin, another device)
            provider.revocation_endpoint,
            data={"token": creds.refresh_token},
            headers={"Authorization": aiohttp.encode_basic_auth("app", "app-secret")},
        ) as response:
            assert response.status == 200
        again = await session.token_refresh()
        assert calls == ["needs_login"]
        assert session.status is SessionStatus.ACTIVE
        assert again.access_token != creds.access_token
        assert await resource(http, provider, again.access_token) == 200


async def test_secrets_never_reach_logs_reprs_or_errors(
    provider: OIDCProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    async with FaultProxy(provider.issuer).running() as proxy:
        backend = app(provider, token_endpoint=proxy.url + "/token")
        async with Session(backend, retry=FAST) as session:
            proxy.fail_next(1, unavailable)
            await session.login("alice", "wonderland")
            creds = session.credentials
            assert creds is not None
            texts += [repr(session), repr(creds), repr(backend), repr(session.snapshot)]
            proxy.sticky = unavailable
            with pytest.raises(ServiceUnavailable) as down:
                await session.token_refresh()
            texts.append(str(down.value))
            proxy.sticky = None
            refreshed = await session.token_refresh()  # with openid: an id_token too
            texts += [repr(refreshed), repr(session.snapshot)]
        async with Session(app(provider, client_secret="wrong-secret")) as bad:
            with pytest.raises(InvalidClient) as refused:
                await bad.login("alice", "wonderland")
            texts.append(str(refused.value))
    text = "\n".join(texts) + caplog.text
    for secret in (
        "app-secret",
        "wrong-secret",
        "wonderland",
        creds.access_token,
        creds.refresh_token or "",
        refreshed.access_token,
        refreshed.extra["id_token"],
    ):
        assert secret
        assert secret not in text


# -- introspection (RFC 7662) -----------------------------------------------------------


def test_introspection_cache_is_bounded_and_honours_exp() -> None:
    cache = IntrospectionCache(max_entries=2, max_age=60.0)
    short = TokenInfo(True, subject="alice", expires_at=110.0)
    cache.put(b"a", short, now=100.0)
    cache.put(b"b", TokenInfo(True), now=100.0)
    assert cache.get(b"a", now=109.0) == short
    assert cache.get(b"a", now=110.0) is None  # its exp, before max_age
    cache.put(b"c", TokenInfo(True), now=100.0)
    cache.put(b"d", TokenInfo(True), now=100.0)
    assert len(cache) == 2
    assert cache.get(b"b", now=100.0) is None
    assert cache.get(b"c", now=159.0) is not None
    assert cache.get(b"c", now=160.0) is None
    with pytest.raises(ProtocolError):
        TokenInfo.from_response({"active": "yes"})


async def test_introspect_asks_once_until_the_cache_entry_ends(provider: OIDCProvider) -> None:
    async with Session(app(provider)) as session:
        await session.login("alice", "wonderland")
        token = await session.access_token()
    clock = ManualClock(wall=time.time())
    cache = IntrospectionCache(max_age=30.0)
    async with FaultProxy(provider.issuer).running() as proxy:
        resource_server = app(
            provider,
            token_endpoint=provider.token_endpoint,
            introspection_endpoint=proxy.url + "/token/introspection",
        )
        info = await introspect(token, resource_server, cache=cache, clock=clock)
        assert (info.active, info.subject, info.client_id) == (True, "alice", "app")
        assert info.scope == SCOPE
        assert info.expires_at is not None
        again = await introspect(token, resource_server, cache=cache, clock=clock)
        assert again == info
        assert proxy.seen["/token/introspection"] == 1
        clock.advance(30.0)
        await introspect(token, resource_server, cache=cache, clock=clock)
        assert proxy.seen["/token/introspection"] == 2
        unknown = await introspect("not-a-token", resource_server, cache=cache, clock=clock)
        assert unknown == TokenInfo(False)
    assert token not in repr(info)
    wrong = app(provider, client_secret="wrong-secret")  # discovers its endpoints
    with pytest.raises(InvalidClient):
        await introspect(token, wrong, cache=IntrospectionCache())


# -- interactive flows ------------------------------------------------------------------


async def test_device_flow_polls_until_the_user_approves(
    oidc_provider: Factory, http: aiohttp.ClientSession
) -> None:
    provider = oidc_provider({"device": {"interval": 1, "slowDown": True}}, shared=False)
    shown: list[DeviceCode] = []
    async with FaultProxy(provider.issuer).running() as proxy:
        backend = OAuth2(
            provider.issuer,
            client_id="cli",  # a public client: the usual device-flow client
            scope=SCOPE,
            token_endpoint=proxy.url + "/token",
            device_authorization_endpoint=provider.device_authorization_endpoint,
        )

        async def approve_after_the_first_poll(code: DeviceCode) -> None:
            await proxy.wait_for("/token")
            await browser_approve_device(code.verification_uri, code.user_code)

        async with Session(backend) as session, anyio.create_task_group() as tg:

            def on_code(code: DeviceCode) -> None:
                shown.append(code)
                tg.start_soon(approve_after_the_first_poll, code)

            await session.login_device(on_code, username="alice")
            creds = session.credentials
            assert creds is not None
            assert creds.refresh_token is not None
            assert await resource(http, provider, creds.access_token) == 200
            assert (await session.token_refresh()).refresh_token != creds.refresh_token
    assert shown[0].verification_uri == provider.issuer + "/device"
    assert shown[0].interval == 1.0
    assert "device_code" not in repr(shown[0])
    assert shown[0].device_code not in repr(shown[0])
    stats = await provider.stats()
    assert grants(stats, DEVICE_GRANT, "400") >= 1  # authorization_pending at least once
    assert grants(stats, DEVICE_GRANT, "200") == 1


async def test_device_flow_slows_down_and_reports_a_refusal(provider: OIDCProvider) -> None:
    clock = ManualClock()
    async with FaultProxy(provider.issuer, clock=clock).running() as proxy:
        backend = app(
            provider,
            token_endpoint=proxy.url + "/token",
            device_authorization_endpoint=provider.device_authorization_endpoint,
        )
        slow_down = json_body(b'{"error":"slow_down"}', status=400)
        proxy.fail_next(1, slow_down)

        async def approve(code: DeviceCode) -> None:
            assert code.verification_uri_complete is not None
            await browser_approve_device(code.verification_uri_complete)

        async with Session(backend, clock=clock) as session, anyio.create_task_group() as tg:
            tg.start_soon(autojump, clock)
            await session.login_device(approve)
            polls = [hit.at for hit in proxy.hits if hit.path == "/token"]
            assert len(polls) == 2
            assert polls[1] - polls[0] == 5 + 5  # the default interval, plus five
            denied = json_body(b'{"error":"access_denied"}', status=400)
            proxy.fail_next(1, denied)
            with pytest.raises(InvalidCredentials) as refused:
                await session.login_device(lambda code: None)
            assert refused.value.error == "access_denied"
            tg.cancel_scope.cancel()


async def test_authorization_code_with_pkce_and_a_loopback_redirect(
    provider: OIDCProvider, http: aiohttp.ClientSession
) -> None:
    seen: list[str] = []

    async def browser(url: str) -> None:
        seen.append(url)
        redirect_uri = dict(parse_qsl(urlsplit(url).query))["redirect_uri"]
        redirect = await browser_authorize(url, redirect_uri)
        async with http.get(redirect) as response:  # the browser lands on our listener
            assert response.status == 200

    backend = OAuth2(provider.issuer, client_id="cli", scope=SCOPE)
    async with Session(backend) as session:
        await session.login_authorization_code(browser, prompt="consent", username="alice")
        creds = session.credentials
        assert creds is not None
        assert creds.refresh_token is not None
        assert await resource(http, provider, creds.access_token) == 200
        await session.token_refresh()
    query = dict(parse_qsl(urlsplit(seen[0]).query))
    assert query["code_challenge_method"] == "S256"
    assert len(query["code_challenge"]) == 43
    assert query["redirect_uri"].startswith("http://127.0.0.1:")
    assert query["client_id"] == "cli"


def test_authorization_response_checks_state_issuer_and_errors() -> None:
    ok = {"state": "S", "code": "C", "iss": "https://id.example.com/realms/main"}
    assert BACKEND.authorization_response(ok, "S") == "C"
    with pytest.raises(ProtocolError):
        BACKEND.authorization_response(ok, "other-state")
    with pytest.raises(ProtocolError):  # RFC 9207: a mix-up attack
        BACKEND.authorization_response(dict(ok, iss="https://evil.example"), "S")
    with pytest.raises(InvalidCredentials):
        BACKEND.authorization_response({"state": "S", "error": "access_denied"}, "S")


# -- DPoP (RFC 9449) --------------------------------------------------------------------


def test_dpop_proofs_are_eddsa_jwts_naming_the_request() -> None:
    signer = Ed25519Signer.from_seed(bytes(range(32)))
    message = signing_input(
        signer.public_key_hex,
        "get",
        "https://api.example.com/x?q=1#f",
        iat=1700000000,
        jti="J",
        nonce="N",
        access_token="T",
    )
    header_b64, claims_b64 = message.decode().split(".")
    header = json.loads(base64.urlsafe_b64decode(header_b64 + "=="))
    claims = json.loads(base64.urlsafe_b64decode(claims_b64 + "=="))
    assert header == {"typ": "dpop+jwt", "alg": "EdDSA", "jwk": jwk(signer.public_key_hex)}
    assert header["jwk"]["kty"] == "OKP"
    assert header["jwk"]["crv"] == "Ed25519"
    assert claims == {
        "htm": "GET",
        "htu": "https://api.example.com/x",
        "iat": 1700000000,
        "jti": "J",
        "nonce": "N",
        "ath": base64.urlsafe_b64encode(hashlib.sha256(b"T").digest()).rstrip(b"=").decode(),
    }
    with pytest.raises(InvalidInput):
        OAuth2("https://id.example.com", client_id="c", dpop=object())  # type: ignore[arg-type]


@pytest.mark.parametrize("nonce", ["off", "required"])
async def test_dpop_bound_tokens_with_the_provider_and_the_middleware(
    oidc_provider: Factory, nonce: str
) -> None:
    provider = oidc_provider({"dpop": {"nonce": nonce}}, shared=False)
    key = Ed25519PrivateKey.generate()
    signer = Ed25519Signer(key)
    backend = OAuth2(provider.issuer, client_id="cli", scope=SCOPE, dpop=signer)
    async with Session(backend) as session:
        await session.login("alice", "wonderland")
        creds = session.credentials
        assert creds is not None
        assert creds.extra["token_type"] == "DPoP"
        async with aiohttp.ClientSession(middlewares=(session.middleware(),)) as http:
            for _ in range(2):
                async with http.get(provider.resource_url) as response:
                    assert response.status == 200, await response.text()
                    body = await response.json()
                    assert (body["sub"], body["token_type"]) == ("alice", "DPoP")
            if nonce == "required":
                await provider.rotate_resource_nonce()
                async with http.get(provider.resource_url) as response:
                    assert response.status == 200  # the stale nonce: one retry with the new
            # A bearer-style use of the bound token is refused: the key is needed.
            async with http.get(
                provider.resource_url, headers={"Authorization": f"Bearer {creds.access_token}"}
            ) as response:
                assert response.status == 401
        refreshed = await session.token_refresh()  # the public client's refresh token is bound
        assert refreshed.refresh_token != creds.refresh_token
    introspected = await introspect(
        refreshed.access_token,
        OAuth2(provider.issuer, client_id="app", client_secret="app-secret"),
        cache=IntrospectionCache(),
    )
    assert introspected.claims["cnf"] == {"jkt": jwk_thumbprint(key)}
    stats = await provider.stats()
    expected_nonce_errors = 1 if nonce == "required" else 0
    assert grants(stats, "password", "400") == expected_nonce_errors
    assert grants(stats, "password", "200") == 1


async def test_an_access_token_alone_is_served_until_it_expires_then_relogin(
    private: OIDCProvider,
) -> None:
    clock = ManualClock()
    relogins: list[str] = []

    async def relogin(session: Session) -> tuple[str, str]:
        relogins.append(session.snapshot.status.value)
        return ("alice", "wonderland")

    backend = app(private, scope="openid api:read")  # no offline_access: no refresh token
    async with Session(backend, clock=clock, relogin=relogin) as session:
        await session.login("alice", "wonderland")
        creds = session.credentials
        assert creds is not None
        assert creds.refresh_token is None
        clock.advance(creds.lifetime * 0.95)  # deep in the mandatory window
        assert await session.access_token() == creds.access_token  # nothing to renew with
        assert session.status is SessionStatus.ACTIVE
        assert relogins == []
        clock.advance(creds.lifetime * 0.05)  # expired: lost, and the hook logs in again
        fresh = await session.access_token()
        assert fresh != creds.access_token
        assert relogins == ["needs_login"]
    stats = await private.stats()
    assert grants(stats, "password") == 2
    assert grants(stats, "refresh_token") == 0

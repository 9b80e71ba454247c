"""The reference service's OAuth 2.0 token endpoint (RFC 6749), revocation (RFC 7009)
and discovery (RFC 8414), with raw aiohttp over loopback HTTP."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote_plus, urlencode

import aiohttp
import pytest
from _service import PASSWORDS, call, service
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokensdk import ManualClock
from tokensdk.server import RunningService
from tokensdk.server._app import _OAUTH_ROUTES

pytestmark = pytest.mark.anyio

CLIENTS: dict[str, str | None] = {"bot": "s3cr:et+/=", "app": "app-secret", "cli": None}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def svc(clock: ManualClock) -> AsyncIterator[RunningService]:
    async with service(clock, clients=dict(CLIENTS), access_ttl=60) as running:
        yield running


def _basic(client_id: str, secret: str) -> dict[str, str]:
    # RFC 6749 section 2.3.1: id and secret form-urlencoded before Base64.
    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


async def post_form(
    http: aiohttp.ClientSession,
    svc: RunningService,
    path: str,
    form: dict[str, str],
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, Any]:
    async with http.post(svc.url + path, data=form, headers=headers or {}) as response:
        raw = await response.read()
        body = await response.json(content_type=None) if raw else None
        return response.status, body, response.headers


async def password_grant(
    http: aiohttp.ClientSession, svc: RunningService, *, method: str = "post"
) -> dict[str, Any]:
    form = {"grant_type": "password", "username": "alice", "password": PASSWORDS["alice"]}
    headers = None
    if method == "basic":
        headers = _basic("app", "app-secret")
    else:
        form |= {"client_id": "app", "client_secret": "app-secret"}
    status, body, response_headers = await post_form(http, svc, "/oauth2/token", form, headers)
    assert status == 200, body
    assert response_headers["Cache-Control"] == "no-store"
    return dict(body)


@pytest.mark.parametrize("method", ["basic", "post"])
async def test_password_grant_with_either_client_authentication(
    http: aiohttp.ClientSession, svc: RunningService, method: str
) -> None:
    body = await password_grant(http, svc, method=method)
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 60
    assert body["refresh_token"]
    status, me, _ = await call(http, svc, "GET", "/v1/me", token=body["access_token"])
    assert (status, me) == (200, {"username": "alice"})


async def test_basic_credentials_are_form_urlencoded(
    http: aiohttp.ClientSession, svc: RunningService
) -> None:
    form = {"grant_type": "client_credentials"}
    status, body, _ = await post_form(http, svc, "/oauth2/token", form, _basic("bot", "s3cr:et+/="))
    assert status == 200, body
    assert "refresh_token" not in body
    status, me, _ = await call(http, svc, "GET", "/v1/me", token=body["access_token"])
    assert (status, me) == (200, {"username": "bot"})


async def test_client_credentials_is_for_confidential_clients(
    http: aiohttp.ClientSession, svc: RunningService
) -> None:
    form = {"grant_type": "client_credentials", "client_id": "cli"}
    status, body, _ = await post_form(http, svc, "/oauth2/token", form)
    assert (status, body["error"]) == (400, "unauthorized_client")
    assert set(body) == {"error", "error_description"}


async def test_public_client_uses_password_and_refresh_grants(
    http: aiohttp.ClientSession, svc: RunningService
) -> None:
    form = {"grant_type": "password", "username": "bob", "password": "builder", "client_id": "cli"}
    status, body, _ = await post_form(http, svc, "/oauth2/token", form)
    assert status == 200, body
    form = {"grant_type": "refresh_token", "refresh_token": body["refresh_token"]}
    status, again, _ = await post_form(http, svc, "/oauth2/token", form | {"client_id": "cli"})
    assert status == 200, again
    assert again["refresh_token"] != body["refresh_token"]


async def test_refresh_rotates_and_reuse_revokes_the_family(
    http: aiohttp.ClientSession, svc: RunningService
) -> None:
    first = await password_grant(http, svc)
    client = {"client_id": "app", "client_secret": "app-secret"}
    form = {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]} | client
    status, second, _ = await post_form(http, svc, "/oauth2/token", form)
    assert status == 200, second
    assert second["refresh_token"] != first["refresh_token"]
    assert (await call(http, svc, "GET", "/v1/me", token=second["access_token"]))[0] == 200

    # The spent refresh token again: theft. 400 invalid_grant, the family revoked.
    status, body, _ = await post_form(http, svc, "/oauth2/token", form)
    assert (status, body["error"]) == (400, "invalid_grant")
    assert set(body) == {"error", "error_description"}
    assert svc.stats.refresh_reuses == 1
    assert (await call(http, svc, "GET", "/v1/me", token=second["access_token"]))[0] == 401
    form2 = {"grant_type": "refresh_token", "refresh_token": second["refresh_token"]} | client
    status, body, _ = await post_form(http, svc, "/oauth2/token", form2)
    assert (status, body["error"]) == (400, "invalid_grant")


async def test_a_refresh_token_works_only_for_its_client(
    http: aiohttp.ClientSession, svc: RunningService
) -> None:
    first = await password_grant(http, svc)  # issued to "app"
    form = {
        "grant_type": "refresh_token",
        "refresh_token": first["refresh_token"],
        "client_id": "bot",
        "client_secret": "s3cr:et+/=",
    }
    status, body, _ = await post_form(http, svc, "/oauth2/token", form)
    assert (status, body["error"]) == (400, "invalid_grant")
    # Not spent by that: the right client still refreshes it.
    form |= {"client_id": "app", "client_secret": "app-secret"}
    status, body, _ = await post_form(http, svc, "/oauth2/token", form)
    assert status == 200, body


async def test_native_refresh_tokens_are_not_oauth_grants(
    http: aiohttp.ClientSession, svc: RunningService
) -> None:
    status, native, _ = await call(
        http, svc, "POST", "/v1/login", {"username": "alice", "password": "wonderland"}
    )
    assert status == 200
    form = {
        "grant_type": "refresh_token",
        "refresh_token": native["refreshToken"],
        "client_id": "cli",
    }
    status, body, _ = await post_form(http, svc, "/oauth2/token", form)
    assert (status, body["error"]) == (400, "invalid_grant")


async def test_bad_password_is_invalid_grant(
    http: aiohttp.ClientSession, svc: RunningService
) -> None:
    form = {
        "grant_type": "password",
        "username": "alice",
        "password": "nope",
        "client_id": "cli",
    }
    status, body, _ = await post_form(http, svc, "/oauth2/token", form)
    assert (status, body["error"]) == (400, "invalid_grant")


@pytest.mark.parametrize(
    ("form", "headers", "www_authenticate"),
    [
        ({"client_id": "nobody"}, None, False),
        ({"client_id": "app", "client_secret": "wrong"}, None, False),
        ({"client_id": "app"}, None, False),  # a confidential client without its secret
        ({"client_id": "cli", "client_secret": "x"}, None, False),
        ({}, _basic("app", "wrong"), True),
        ({}, _basic("nobody", "x"), True),
        ({}, {"Authorization": "Basic !!!"}, True),
        ({}, {}, False),  # no client at all
    ],
    ids=[
        "unknown",
        "wrong-secret",
        "no-secret",
        "public-with-secret",
        "basic-wrong",
        "basic-unknown",
        "basic-garbled",
        "none",
    ],
)
async def test_bad_client_is_401_invalid_client(
    http: aiohttp.ClientSession,
    svc: RunningService,
    form: dict[str, str],
    headers: dict[str, str] | None,
    www_authenticate: bool,
) -> None:
    form = {"grant_type": "client_credentials"} | form
    status, body, response_headers = await post_form(http, svc, "/oauth2/token", form, headers)
    assert (status, body["error"]) == (401, "invalid_client")
    assert set(body) == {"error", "error_description"}
    assert ("WWW-Authenticate" in response_headers) == www_authenticate


@pytest.mark.parametrize(
    ("form", "error"),
    [
        ({"grant_type": "authorization_code"}, "unsupported_grant_type"),
        ({}, "invalid_request"),
        ({"grant_type": "refresh_token"}, "invalid_request"),
        ({"grant_type": "password", "username": "alice"}, "invalid_request"),
    ],
)
async def test_malformed_requests_are_400(
    http: aiohttp.ClientSession, svc: RunningService, form: dict[str, str], error: str
) -> None:
    status, body, _ = await post_form(
        http, svc, "/oauth2/token", form | {"client_id": "app", "client_secret": "app-secret"}
    )
    assert (status, body["error"]) == (400, error)


async def test_requests_must_be_form_encoded_with_single_parameters(
    http: aiohttp.ClientSession, svc: RunningService
) -> None:
    status, body, _ = await call(
        http, svc, "POST", "/oauth2/token", {"grant_type": "client_credentials"}
    )
    assert (status, body["error"]) == (400, "invalid_request")
    raw = b"grant_type=client_credentials&grant_type=password&client_id=cli"
    async with http.post(
        svc.url + "/oauth2/token",
        data=raw,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ) as response:
        assert response.status == 400
        assert (await response.json())["error"] == "invalid_request"


@pytest.mark.parametrize("which", ["access_token", "refresh_token"])
async def test_revocation_revokes_the_family(
    http: aiohttp.ClientSession, svc: RunningService, which: str
) -> None:
    tokens = await password_grant(http, svc)
    status, body, _ = await post_form(
        http,
        svc,
        "/oauth2/revoke",
        {"token": tokens[which], "token_type_hint": which},
        _basic("app", "app-secret"),
    )
    assert (status, body) == (200, None)
    assert (await call(http, svc, "GET", "/v1/me", token=tokens["access_token"]))[0] == 401
    form = {
        "grant_type": "refresh_token",
        "refresh_token": tokens["refresh_token"],
        "client_id": "app",
        "client_secret": "app-secret",
    }
    status, body, _ = await post_form(http, svc, "/oauth2/token", form)
    assert (status, body["error"]) == (400, "invalid_grant")


async def test_revocation_of_unknown_or_foreign_tokens_answers_200_and_keeps_them(
    http: aiohttp.ClientSession, svc: RunningService
) -> None:
    tokens = await password_grant(http, svc)  # issued to "app"
    for token in ("never-issued", tokens["access_token"]):
        status, _, _ = await post_form(
            http, svc, "/oauth2/revoke", {"token": token}, _basic("bot", "s3cr:et+/=")
        )
        assert status == 200
    assert (await call(http, svc, "GET", "/v1/me", token=tokens["access_token"]))[0] == 200
    status, body, _ = await post_form(
        http, svc, "/oauth2/revoke", {"token": tokens["access_token"]}, _basic("bot", "bad")
    )
    assert (status, body["error"]) == (401, "invalid_client")


@pytest.mark.parametrize(
    "path", ["/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"]
)
async def test_discovery_document(
    http: aiohttp.ClientSession, svc: RunningService, path: str
) -> None:
    status, body, _ = await call(http, svc, "GET", path)
    assert status == 200
    assert body["issuer"] == svc.url
    assert body["token_endpoint"] == svc.url + "/oauth2/token"
    assert body["revocation_endpoint"] == svc.url + "/oauth2/revoke"
    assert set(body["grant_types_supported"]) == {
        "password",
        "refresh_token",
        "client_credentials",
    }
    assert {"client_secret_basic", "client_secret_post"} <= set(
        body["token_endpoint_auth_methods_supported"]
    )


async def test_client_credentials_token_expires_with_its_family(
    http: aiohttp.ClientSession, svc: RunningService, clock: ManualClock
) -> None:
    form = {"grant_type": "client_credentials", "client_id": "bot", "client_secret": "s3cr:et+/="}
    status, body, _ = await post_form(http, svc, "/oauth2/token", form)
    assert status == 200
    clock.advance(61)
    assert (await call(http, svc, "GET", "/v1/me", token=body["access_token"]))[0] == 401


# -- fuzz: every answer is a success or an RFC 6749 error body, never a 5xx ----------

_PRINTABLE = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
_NAMES = (
    "grant_type",
    "client_id",
    "client_secret",
    "username",
    "password",
    "refresh_token",
    "scope",
    "token",
    "token_type_hint",
    "x",
)
_VALUES = st.sampled_from(
    [
        *("password", "refresh_token", "client_credentials", "app", "app-secret", "cli"),
        *("bot", "s3cr:et+/=", "alice", "wonderland", "", "x" * 2000),
    ]
) | st.text(max_size=40)
_ERRORS = {
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "temporarily_unavailable",
}
FUZZED = ("/oauth2/token", "/oauth2/revoke")


def test_the_fuzz_and_the_discovery_tests_cover_every_oauth_route() -> None:
    discovery = {"/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"}
    assert {path for _, path, _ in _OAUTH_ROUTES} == set(FUZZED) | discovery


@pytest.mark.parametrize("path", FUZZED)
@settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    form=st.lists(st.tuples(st.sampled_from(_NAMES), _VALUES), max_size=8),
    authorization=st.none()
    | st.sampled_from(
        [
            _basic("app", "app-secret")["Authorization"],
            _basic("app", "x")["Authorization"],
            *("Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode(), "Bearer x"),
        ]
    )
    | _PRINTABLE,
    content_type=st.sampled_from(
        ["application/x-www-form-urlencoded", "application/json", "multipart/form-data", None]
    ),
)
async def test_fuzz_oauth_endpoints(
    http: aiohttp.ClientSession,
    svc: RunningService,
    path: str,
    form: list[tuple[str, str]],
    authorization: str | None,
    content_type: str | None,
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    if content_type is not None:
        headers["Content-Type"] = content_type
    data = urlencode(form).encode()
    async with http.post(svc.url + path, data=data, headers=headers) as response:
        raw = await response.read()
        status = response.status
    case = (path, form, authorization, content_type, status, raw[:300])
    assert status in (200, 400, 401, 429), case
    if status == 200:
        if path == "/oauth2/revoke":
            assert raw == b"", case
        else:
            body = json.loads(raw)
            assert body["token_type"] == "Bearer", case
        return
    body = json.loads(raw)
    assert set(body) == {"error", "error_description"}, case
    assert body["error"] in _ERRORS, case
    assert (status == 401) == (body["error"] == "invalid_client"), case

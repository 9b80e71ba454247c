"""Handlers: an OAuth 2.0 token endpoint over the service's own token families.

RFC 6749 (grants ``password``, ``refresh_token``, ``client_credentials``; client
authentication ``client_secret_basic``, ``client_secret_post`` or ``none`` for a
public client; form-encoded requests; errors as ``{"error", "error_description"}``
per section 5.2), RFC 7009 revocation and an RFC 8414 discovery document. The
tokens are the native ones: an access token from here works at ``/v1/me``, and a
refresh token rotates and trips reuse detection exactly as at ``/v1/refresh``
(a reused one revokes its family and answers 400 ``invalid_grant``).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
from typing import Any
from urllib.parse import unquote_plus

from aiohttp import web
from multidict import MultiDictProxy

from tokensdk.server._api_errors import ApiError
from tokensdk.server._logins import check_password, login_failed, reserve_attempt, start_session
from tokensdk.server._passwords import token_digest
from tokensdk.server._requests import string_field
from tokensdk.server._service import SERVICE_KEY, Service

__all__ = [
    "GRANT_TYPES",
    "REVOKE_PATH",
    "TOKEN_PATH",
    "discovery",
    "revoke",
    "token",
]

TOKEN_PATH = "/oauth2/token"  # noqa: S105 - a path, not a secret
REVOKE_PATH = "/oauth2/revoke"
GRANT_TYPES = ("password", "refresh_token", "client_credentials")
AUTH_METHODS = ("client_secret_basic", "client_secret_post", "none")

#: Answers with tokens are never cached (RFC 6749 section 5.1).
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_FORM = "application/x-www-form-urlencoded"
_DUMMY_SECRET = secrets.token_urlsafe(32)


class OAuthError(Exception):
    """An RFC 6749 section 5.2 error: ``{"error", "error_description"}`` with ``status``."""

    def __init__(
        self,
        error: str,
        description: str,
        status: int = 400,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        """The JSON error answer."""
        return web.json_response(
            {"error": self.error, "error_description": self.description},
            status=self.status,
            headers={**_NO_STORE, **self.headers},
        )


def _from_api_error(exc: ApiError) -> OAuthError:
    """Say a contract error in RFC 6749's words."""
    if exc.status in (429, 503):
        # Transient: the client retries after Retry-After (no RFC 6749 code fits;
        # "temporarily_unavailable" is the authorization endpoint's).
        retry = {"Retry-After": exc.headers["Retry-After"]} if "Retry-After" in exc.headers else {}
        return OAuthError("temporarily_unavailable", exc.message, exc.status, retry)
    if exc.status == 400:
        return OAuthError("invalid_request", exc.message)
    # A bad password, an unknown, expired, revoked or reused refresh token, a frozen
    # account: the grant is invalid (section 5.2).
    return OAuthError("invalid_grant", exc.message)


async def _form(request: web.Request) -> dict[str, str]:
    """The form parameters; each at most once (RFC 6749 section 3.2), each bounded."""
    if request.content_type != _FORM:
        raise OAuthError("invalid_request", f"the body must be {_FORM}")
    form: MultiDictProxy[Any] = await request.post()
    params: dict[str, str] = {}
    for name in form:
        values = form.getall(name)
        if len(values) != 1 or not isinstance(values[0], str):
            raise OAuthError("invalid_request", f"parameter {name!r} must appear once, as text")
        params[name] = values[0]
    try:
        return {name: string_field(params, name) for name in params}
    except ApiError as exc:
        raise OAuthError("invalid_request", exc.message) from None


def _authenticate_client(service: Service, request: web.Request, params: dict[str, str]) -> str:
    """Return the id of the authenticated client (RFC 6749 section 2.3).

    ``client_secret_basic`` (the ``Authorization: Basic`` header, form-urlencoded id
    and secret), ``client_secret_post`` (``client_id`` and ``client_secret`` in the
    body) or, for a public client (configured without a secret), ``client_id`` alone.
    Using two methods at once is refused.

    Raises:
        OAuthError: 401 ``invalid_client`` (with ``WWW-Authenticate: Basic`` when the
            header was used), 400 ``invalid_request``.
    """
    clients = service.config.clients
    header = request.headers.get("Authorization")
    basic = False
    if header is not None:
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "basic":
            raise _bad_client("only the Basic scheme authenticates a client", basic=True)
        if "client_secret" in params:
            raise OAuthError("invalid_request", "use one client authentication method")
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise _bad_client("malformed Basic credentials", basic=True) from None
        raw_id, colon, raw_secret = decoded.partition(":")
        if not colon:
            raise _bad_client("malformed Basic credentials", basic=True)
        client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
        if params.get("client_id", client_id) != client_id:
            raise OAuthError("invalid_request", "client_id differs from the authenticated one")
        basic = True
    else:
        client_id = params.get("client_id", "")
        secret = params.get("client_secret", "")
    if client_id not in clients:
        hmac.compare_digest(secret.encode(), _DUMMY_SECRET.encode())  # same work either way
        raise _bad_client("unknown client or wrong secret", basic=basic)
    expected = clients[client_id]
    if expected is None:  # a public client: it has no secret to present
        if secret:
            raise _bad_client("a public client has no secret", basic=basic)
        return client_id
    if not hmac.compare_digest(secret.encode("utf-8"), expected.encode("utf-8")):
        raise _bad_client("unknown client or wrong secret", basic=basic)
    return client_id


def _bad_client(description: str, *, basic: bool) -> OAuthError:
    headers = {"WWW-Authenticate": 'Basic realm="tokensdk"'} if basic else {}
    return OAuthError("invalid_client", description, 401, headers)


def _required(params: dict[str, str], name: str) -> str:
    value = params.get(name)
    if not value:
        raise OAuthError("invalid_request", f"parameter {name!r} is required")
    return value


def _token_answer(
    access: str, expires_in: int, refresh: str | None, scope: str | None
) -> web.Response:
    body: dict[str, Any] = {
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": expires_in,
    }
    if refresh is not None:
        body["refresh_token"] = refresh
    if scope:
        body["scope"] = scope
    return web.json_response(body, headers=_NO_STORE)


async def token(request: web.Request) -> web.Response:
    """``POST /oauth2/token``: the RFC 6749 token endpoint."""
    service = request.app[SERVICE_KEY]
    try:
        params = await _form(request)
        client_id = _authenticate_client(service, request, params)
        grant = _required(params, "grant_type")
        scope = params.get("scope")
        if grant == "password":
            return await _password_grant(service, request, params, client_id, scope)
        if grant == "refresh_token":
            return _refresh_grant(service, params, client_id, scope)
        if grant == "client_credentials":
            if service.config.clients[client_id] is None:
                raise OAuthError(
                    "unauthorized_client", "a public client cannot use client_credentials"
                )
            issued = service.state.client_token(client_id, service.now())
            service.stats.logins += 1
            return _token_answer(issued.access_token, issued.access_expire, None, scope)
        raise OAuthError("unsupported_grant_type", f"grant_type {grant!r} is not supported")
    except OAuthError as exc:
        return exc.response()
    except ApiError as exc:
        return _from_api_error(exc).response()


async def _password_grant(
    service: Service,
    request: web.Request,
    params: dict[str, str],
    client_id: str,
    scope: str | None,
) -> web.Response:
    username, password = _required(params, "username"), _required(params, "password")
    await reserve_attempt(service, request, username, hashing=True)
    record = await check_password(service, username, password)
    if record is None:
        raise login_failed(service)
    tokens = await start_session(service, request, username, record, client=client_id)
    return _token_answer(tokens.access_token, tokens.access_expire, tokens.refresh_token, scope)


def _refresh_grant(
    service: Service, params: dict[str, str], client_id: str, scope: str | None
) -> web.Response:
    refresh_token = _required(params, "refresh_token")
    state = service.state
    record = state.refresh_tokens.get(token_digest(refresh_token))
    family = state.families.get(record.family) if record is not None else None
    if record is None or family is None or family.client != client_id:
        # Unknown, or issued to another client (RFC 6749 section 6): not revealed.
        raise OAuthError("invalid_grant", "the refresh token is not valid")
    try:
        tokens = state.refresh(record.username, refresh_token, service.now())
    except ApiError as exc:
        if exc.error == "refresh_token_reused":
            service.stats.refresh_reuses += 1
        raise
    service.stats.refreshes += 1
    return _token_answer(tokens.access_token, tokens.access_expire, tokens.refresh_token, scope)


async def revoke(request: web.Request) -> web.Response:
    """``POST /oauth2/revoke``: RFC 7009; revokes the token's whole family.

    An unknown token, or one issued to another client, is answered 200 as well and
    left alone (RFC 7009 section 2.2: the answer does not tell whether it existed).
    """
    service = request.app[SERVICE_KEY]
    try:
        params = await _form(request)
        client_id = _authenticate_client(service, request, params)
        presented = _required(params, "token")
    except OAuthError as exc:
        return exc.response()
    state = service.state
    digest = token_digest(presented)
    found = state.access.get(digest) or state.refresh_tokens.get(digest)
    if found is not None:
        family = state.families.get(found.family)
        if family is not None and family.client == client_id:
            state.revoke_family(found.family)
    return web.Response(status=200, headers=_NO_STORE)


async def discovery(request: web.Request) -> web.Response:
    """``GET /.well-known/oauth-authorization-server`` (and ``openid-configuration``)."""
    issuer = f"{request.scheme}://{request.host}"
    return web.json_response(
        {
            "issuer": issuer,
            "token_endpoint": issuer + TOKEN_PATH,
            "revocation_endpoint": issuer + REVOKE_PATH,
            "grant_types_supported": list(GRANT_TYPES),
            "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
            "revocation_endpoint_auth_methods_supported": list(AUTH_METHODS),
            "response_types_supported": [],
        }
    )

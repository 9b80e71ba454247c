"""Handlers: status, the logins, refresh, logout and ``/v1/me``."""

from __future__ import annotations

from importlib import metadata

from aiohttp import web

from tokensdk.server._api_errors import ApiError
from tokensdk.server._logins import (
    check_password,
    check_rate,
    login_failed,
    reserve_attempt,
    start_session,
)
from tokensdk.server._requests import (
    authenticate,
    client_ip,
    json_body,
    json_ok,
    string_field,
)
from tokensdk.server._service import SERVICE_KEY

__all__ = [
    "login",
    "login_with_one_time_key",
    "login_with_token",
    "logout",
    "me",
    "one_time_key",
    "refresh",
    "status",
]

try:
    _VERSION = metadata.version("tokensdk")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    _VERSION = "0"


async def status(request: web.Request) -> web.Response:
    """``GET /v1/status``: server time (Unix ms), realm and version."""
    service = request.app[SERVICE_KEY]
    return json_ok(
        {
            "serverTime": int(service.now() * 1000),
            "realm": service.config.realm,
            "version": _VERSION,
        }
    )


async def login(request: web.Request) -> web.Response:
    """``POST /v1/login``: username + password -> LoginTokens."""
    service = request.app[SERVICE_KEY]
    body = await json_body(request)
    username, password = string_field(body, "username"), string_field(body, "password")
    await reserve_attempt(service, request, username, hashing=True)
    record = await check_password(service, username, password)
    if record is None:
        raise login_failed(service)
    return json_ok((await start_session(service, request, username, record)).to_json())


async def one_time_key(request: web.Request) -> web.Response:
    """``POST /v1/login/one-time-key``: issue a 300 s single-use key (newest wins)."""
    service = request.app[SERVICE_KEY]
    body = await json_body(request)
    username = string_field(body, "username")
    await check_rate(service, [("key", username), ("request", f"otk|{client_ip(request)}")])
    return json_ok({"key": service.state.new_one_time_key(username, service.now())})


async def login_with_one_time_key(request: web.Request) -> web.Response:
    """``POST /v1/login/with-one-time-key``: username + hash -> LoginTokens."""
    service = request.app[SERVICE_KEY]
    body = await json_body(request)
    username, answer = string_field(body, "username"), string_field(body, "hash")
    await reserve_attempt(service, request, username, hashing=False)
    record = service.state.users.get(username)
    if record is None or not service.state.use_one_time_key(username, answer, service.now()):
        raise login_failed(service)
    return json_ok((await start_session(service, request, username, record)).to_json())


async def login_with_token(request: web.Request) -> web.Response:
    """``POST /v1/login/with-token``: username + access token -> remaining lifetime."""
    service = request.app[SERVICE_KEY]
    body = await json_body(request)
    username, token = string_field(body, "username"), string_field(body, "accessToken")
    remaining = service.state.login_with_token(username, token, service.now())
    return json_ok({"username": username, "accessExpire": remaining})


async def refresh(request: web.Request) -> web.Response:
    """``POST /v1/refresh``: rotate a refresh token into a new pair."""
    service = request.app[SERVICE_KEY]
    body = await json_body(request)
    username, token = string_field(body, "username"), string_field(body, "refreshToken")
    window = service.config.idempotency_window
    # Window 0: the extension is off, the key ignored (contract v1 alone).
    idempotency_key = body.get("idempotencyKey") if window else None
    if idempotency_key is not None and (
        not isinstance(idempotency_key, str) or not 0 < len(idempotency_key) <= 200
    ):
        raise ApiError(400, "invalid_request", "idempotencyKey must be a short string")
    try:
        tokens = service.state.refresh(username, token, service.now(), idempotency_key)
    except ApiError as exc:
        if exc.error == "refresh_token_reused":
            service.stats.refresh_reuses += 1
        raise
    service.stats.refreshes += 1
    answer = tokens.to_json()
    if idempotency_key is not None:
        # Extension: the key was honoured; a retry with it is answered for this many
        # seconds (from the first success), so a client may send it again safely.
        answer["idempotencyWindow"] = window
    return json_ok(answer)


async def logout(request: web.Request) -> web.Response:
    """``POST /v1/logout``: revoke the bearer's whole family."""
    record = authenticate(request)
    request.app[SERVICE_KEY].state.revoke_family(record.family)
    return web.Response(status=204)


async def me(request: web.Request) -> web.Response:
    """``GET /v1/me``: who the bearer is."""
    record = authenticate(request)
    return json_ok({"username": record.username})

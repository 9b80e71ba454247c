"""Handlers: creating and removing MAC tokens, verifying ``X-PowerAuth-Token`` headers."""

from __future__ import annotations

from aiohttp import web

from tokensdk._errors import HeaderInvalid
from tokensdk.mac import HEADER_NAME, averify_token_header
from tokensdk.server._api_errors import ApiError
from tokensdk.server._logins import (
    attempt_succeeded,
    check_password,
    login_failed,
    reserve_attempt,
)
from tokensdk.server._requests import (
    authenticate,
    json_body,
    json_ok,
    string_field,
)
from tokensdk.server._service import SERVICE_KEY

__all__ = ["create_mac_token", "me_by_mac_token", "remove_mac_token"]

_FACTOR_SETS = (("possession",), ("possession", "knowledge"))


async def create_mac_token(request: web.Request) -> web.Response:
    """``POST /v1/tokens/create``: bearer (+ password for knowledge) -> token id and secret."""
    service = request.app[SERVICE_KEY]
    record = authenticate(request)
    body = await json_body(request)
    factors = body.get("factors")
    if not isinstance(factors, list) or tuple(factors) not in _FACTOR_SETS:
        raise ApiError(
            400,
            "invalid_request",
            'factors must be ["possession"] or ["possession", "knowledge"]',
        )
    if "knowledge" in factors:
        password = string_field(body, "password")
        await reserve_attempt(service, request, record.username, hashing=True)
        if await check_password(service, record.username, password) is None:
            raise login_failed(service)
        await attempt_succeeded(service, request, record.username)
        # The session may have been revoked while the password was being hashed.
        record = authenticate(request)
    token_id, secret = service.state.create_mac_token(
        record.family, record.username, tuple(factors)
    )
    service.stats.mac_tokens_created += 1
    return json_ok({"tokenId": token_id, "tokenSecret": secret})


async def remove_mac_token(request: web.Request) -> web.Response:
    """``POST /v1/tokens/remove``: remove one of the bearer's MAC tokens."""
    service = request.app[SERVICE_KEY]
    record = authenticate(request)
    token_id = string_field(await json_body(request), "tokenId")
    service.state.remove_mac_token(record.username, token_id)
    return json_ok({"tokenId": token_id})


async def me_by_mac_token(request: web.Request) -> web.Response:
    """``GET /v1/me/token``: verify an ``X-PowerAuth-Token`` header."""
    service = request.app[SERVICE_KEY]
    now = service.now()

    def lookup(token_id: str) -> bytes | None:
        return service.state.mac_token_key(token_id, now)

    try:
        header = request.headers.get(HEADER_NAME)
        if header is None:
            raise HeaderInvalid("token_invalid", "missing header")
        parsed = await averify_token_header(
            header,
            lookup,
            int(now * 1000),
            service.mac_window,
            replay_guard=service.replay_guard,
        )
    except HeaderInvalid as exc:
        service.stats.mac_headers_rejected += 1
        raise ApiError(
            401,
            exc.error,
            f"the {HEADER_NAME} header was refused: {exc.error}",
            headers={"WWW-Authenticate": "PowerAuth"},
        ) from None
    token = service.state.live_mac_token(parsed.token_id, now)
    if token is None:  # pragma: no cover - lookup() just found it
        raise ApiError(401, "token_invalid", "unknown token")
    service.stats.mac_headers_accepted += 1
    return json_ok(
        {"username": token.username, "tokenId": parsed.token_id, "factors": list(token.factors)}
    )

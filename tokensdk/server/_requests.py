"""Reading requests: JSON bodies, bounded string fields, the bearer token."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from tokensdk._errors import InvalidInput
from tokensdk._paseto import PublicKey
from tokensdk.server._api_errors import ApiError, BearerRejected
from tokensdk.server._records import AccessRecord
from tokensdk.server._service import SERVICE_KEY

__all__ = [
    "MAX_LENGTHS",
    "MAX_STRING",
    "authenticate",
    "client_ip",
    "json_body",
    "json_ok",
    "public_key_hex",
    "quoted",
    "string_field",
]

#: The longest value accepted in these string fields, in characters (longer: 400).
MAX_LENGTHS: Mapping[str, int] = {"username": 256, "assetId": 256, "token": 4096}
#: The longest value of every other string field (passwords, access and refresh
#: tokens, one-time-key hashes, signatures, keys, ids), in characters. Asset tokens
#: (``token``) get more: an asset id of 256 characters, JSON-escaped, fits.
MAX_STRING = 1024


async def json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        raise ApiError(400, "invalid_request", "a JSON object body is required")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError(400, "invalid_request", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", "the body must be a JSON object")
    return body


def string_field(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise ApiError(400, "invalid_request", f"field {name!r} must be a string")
    limit = MAX_LENGTHS.get(name, MAX_STRING)
    if len(value) > limit:
        # Before anything is counted, hashed or stored for it.
        raise ApiError(400, "invalid_request", f"field {name!r} is longer than {limit} characters")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates from "\ud800" escapes
            raise ApiError(400, "invalid_request", f"field {name!r} is not valid text") from None
    return value


def json_ok(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


def client_ip(request: web.Request) -> str:
    return request.remote or "unknown"


def quoted(text: str) -> str:
    """Return ``text`` as an HTTP quoted-string (RFC 9110 section 5.6.4)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def authenticate(request: web.Request) -> AccessRecord:
    """Return the access record of the request's bearer token.

    The JSON body of every refusal is the contract's 401 ``invalid_token``; the
    ``WWW-Authenticate`` challenge tells two cases apart, as RFC 6750 section 3.1 does:

    - no credentials (no ``Authorization`` header, another scheme such as
      ``Basic``, or ``Bearer`` without a token): ``Bearer realm="<realm>"`` and no
      error code, because nothing was rejected; a client that never sent a token
      has nothing to refresh;
    - a bearer token that was presented and refused (unknown, expired, revoked):
      ``Bearer error="invalid_token"``, exactly as the contract says; this is the
      signal the SDK's aiohttp middleware refreshes on.

    Raises:
        ApiError: 401 ``invalid_token`` (a :class:`BearerRejected` for a refused token).
    """
    service = request.app[SERVICE_KEY]
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(
            401,
            "invalid_token",
            "a bearer access token is required",
            headers={"WWW-Authenticate": f"Bearer realm={quoted(service.config.realm)}"},
        )
    try:
        return service.state.authenticate_bearer(token, service.now())
    except BearerRejected as exc:
        service.stats.rejected_bearers += 1
        if exc.expired:
            service.stats.expired_bearers += 1
        raise


def public_key_hex(text: str) -> str:
    """Return ``text`` if it is a valid Ed25519 public key in lowercase hex.

    Raises:
        ApiError: 400 ``invalid_request``.
    """
    try:
        if len(text) != 64 or text != text.lower():
            raise InvalidInput("not 64 lowercase hex digits")
        PublicKey.from_hex(text)
    except (InvalidInput, ValueError):
        raise ApiError(
            400, "invalid_request", "publicKey must be an Ed25519 key as 64 lowercase hex digits"
        ) from None
    return text

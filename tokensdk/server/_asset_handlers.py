"""Handlers: the asset registry, challenges, asset tokens and the key set."""

from __future__ import annotations

from aiohttp import web

from tokensdk.server._api_errors import ApiError
from tokensdk.server._logins import check_rate
from tokensdk.server._requests import (
    authenticate,
    client_ip,
    json_body,
    json_ok,
    public_key_hex,
    string_field,
)
from tokensdk.server._service import SERVICE_KEY

__all__ = [
    "asset_challenge",
    "asset_revoke",
    "asset_token",
    "asset_validate",
    "keys",
    "register_asset",
]


async def register_asset(request: web.Request) -> web.Response:
    """``POST /v1/assets/register``: bearer; add an asset and its holder's public key."""
    service = request.app[SERVICE_KEY]
    authenticate(request)
    body = await json_body(request)
    asset_id, public_key = string_field(body, "assetId"), string_field(body, "publicKey")
    if not asset_id:
        raise ApiError(400, "invalid_request", "assetId must not be empty")
    service.state.register_asset(asset_id, public_key_hex(public_key))
    return json_ok({"assetId": asset_id, "publicKey": public_key}, status=201)


async def asset_challenge(request: web.Request) -> web.Response:
    """``POST /v1/assets/challenge``: issue a 300 s single-use challenge."""
    service = request.app[SERVICE_KEY]
    asset_id = string_field(await json_body(request), "assetId")
    ip_key = f"challenge|{client_ip(request)}"
    await check_rate(service, [("request", ip_key), ("asset", asset_id)], [("request", ip_key)])
    challenge = service.state.new_challenge(asset_id, service.now())
    # Only known assets get a count of their own (an unknown one is a 404 and stores
    # nothing); the per-IP count bounds how many names one client can try.
    await check_rate(service, [], [("asset", asset_id)])
    return json_ok(challenge)


async def asset_token(request: web.Request) -> web.Response:
    """``POST /v1/assets/token``: a signed challenge -> a PASETO v4.public access token."""
    service = request.app[SERVICE_KEY]
    body = await json_body(request)
    challenge = body.get("challenge")
    if not isinstance(challenge, dict):
        raise ApiError(400, "invalid_request", "field 'challenge' must be an object")
    fields = {name: string_field(challenge, name) for name in ("assetId", "timestamp", "nonce")}
    signature = string_field(body, "signature")
    token = service.state.issue_asset_token(
        fields, signature, service.now(), service.config.asset_token_lifetime
    )
    service.stats.asset_tokens_issued += 1
    return json_ok({"assetIds": [fields["assetId"]], "accessToken": token})


async def asset_validate(request: web.Request) -> web.Response:
    """``POST /v1/assets/validate``: check signature, expiry and revocation."""
    service = request.app[SERVICE_KEY]
    token = string_field(await json_body(request), "token")
    info = service.state.validate_asset_token(token, service.now())
    return json_ok(info.to_json())


async def asset_revoke(request: web.Request) -> web.Response:
    """``POST /v1/assets/revoke``: revoke a token until its expiry."""
    service = request.app[SERVICE_KEY]
    token = string_field(await json_body(request), "token")
    service.state.revoke_asset_token(token, service.now())
    return web.Response(status=204)


async def keys(request: web.Request) -> web.Response:
    """``GET /v1/keys``: every verifying public key as PASERK with its ``k4.pid``."""
    return json_ok({"keys": request.app[SERVICE_KEY].state.public_keys()})

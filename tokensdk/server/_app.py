"""The HTTP layer of the reference service: thin aiohttp.web handlers around the state core.

Every failure, including malformed JSON, wrong types, unknown routes, wrong
methods and oversized bodies, leaves as the contract's JSON error body; an
unexpected exception becomes a JSON 500 and a log record, never an HTML page.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from http import HTTPStatus
from importlib import metadata
from typing import Any, TypeVar

import anyio
import attrs
from aiohttp import streams, web, web_protocol

from tokensdk._errors import HeaderInvalid, InvalidInput
from tokensdk._paseto import PublicKey
from tokensdk.mac import ReplayGuard, TimestampWindow, verify_token_header
from tokensdk.server._config import ServiceConfig
from tokensdk.server._db import open_persistence
from tokensdk.server._ratelimit import SlidingWindowLimiter
from tokensdk.server._state import (
    AccessRecord,
    ApiError,
    AssetRecord,
    BearerRejected,
    LoginTokens,
    ServiceState,
    UserRecord,
    make_user_record,
    verify_password,
)
from tokensdk.server._vault import Vault

__all__ = [
    "STATS_KEY",
    "RunningService",
    "ServiceStats",
    "create_app",
    "running_service",
]

log = logging.getLogger("tokensdk.server")

_T = TypeVar("_T")

try:
    _VERSION = metadata.version("tokensdk")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    _VERSION = "0"

_MAC_HEADER = "X-PowerAuth-Token"
_FACTOR_SETS = (("possession",), ("possession", "knowledge"))


@attrs.define
class ServiceStats:
    """Counters the service keeps, for tests and benchmarks.

    Attributes:
        logins: Successful logins (password or one-time key).
        refreshes: Successful refreshes.
        rejected_bearers: Bearer tokens refused (invalid, expired or revoked).
        expired_bearers: The subset of rejected bearers that were presented after expiry.
        failed_logins: Login attempts refused for bad credentials.
        password_hashes: Password checks (scrypt runs) started for requests.
        busy: Requests answered 503 ``service_busy`` (too many password checks waiting).
        rate_limited: Requests answered 429.
        refresh_reuses: Refresh tokens presented a second time (families revoked).
        mac_tokens_created: MAC tokens created.
        mac_headers_accepted: ``X-PowerAuth-Token`` headers that verified.
        mac_headers_rejected: ``X-PowerAuth-Token`` headers refused.
        asset_tokens_issued: Asset access tokens signed.
        requests_by_path: Requests per matched route path (``<unmatched>`` otherwise).
    """

    logins: int = 0
    refreshes: int = 0
    rejected_bearers: int = 0
    expired_bearers: int = 0
    failed_logins: int = 0
    password_hashes: int = 0
    busy: int = 0
    rate_limited: int = 0
    refresh_reuses: int = 0
    mac_tokens_created: int = 0
    mac_headers_accepted: int = 0
    mac_headers_rejected: int = 0
    asset_tokens_issued: int = 0
    requests_by_path: collections.Counter[str] = attrs.field(factory=collections.Counter)


@attrs.define
class _PasswordChecks:
    """Password checks (scrypt, in threads): ``slots`` run at once, ``queue`` more wait.

    Each check holds ``128 * r * N`` bytes and a core while it runs, so the slots
    bound both the memory and the CPU that unauthenticated requests can take;
    :attr:`full` tells a caller to refuse rather than join an unbounded queue.
    Admission is counted synchronously, before the first await, so a burst cannot
    slip past the bound.
    """

    slots: int
    queue: int
    _limiter: anyio.CapacityLimiter = attrs.field(init=False)
    _admitted: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        self._limiter = anyio.CapacityLimiter(self.slots)

    @property
    def full(self) -> bool:
        """Whether every slot and every waiting place is taken."""
        return self._admitted >= self.slots + self.queue

    async def run(self, func: Callable[..., _T], *args: Any) -> _T:
        """Run ``func(*args)`` in a worker thread when a slot is free."""
        self._admitted += 1
        try:
            return await anyio.to_thread.run_sync(func, *args, limiter=self._limiter)
        finally:
            self._admitted -= 1


@attrs.define
class _Service:
    """Everything the handlers share: config, state, limiters, stats.

    Rate limits (sliding windows of ``login_rate_window`` seconds):

    - ``login_limiter``: login attempts per (username, client IP), tight;
    - ``user_limiter``: login attempts per username from everywhere, a high ceiling;
    - ``ip_limiter``: login attempts per client IP;
    - ``key_limiter``: one-time-key requests per username;
    - ``request_limiter``: one-time-key and challenge requests per client IP;
    - ``asset_limiter``: challenge requests per asset, a high ceiling.

    ``hashing`` bounds the password checks running at once and waiting.
    """

    config: ServiceConfig
    state: ServiceState
    stats: ServiceStats
    login_limiter: SlidingWindowLimiter
    user_limiter: SlidingWindowLimiter
    ip_limiter: SlidingWindowLimiter
    key_limiter: SlidingWindowLimiter
    request_limiter: SlidingWindowLimiter
    asset_limiter: SlidingWindowLimiter
    hashing: _PasswordChecks
    mac_window: TimestampWindow
    replay_guard: ReplayGuard

    def now(self) -> float:
        return self.config.clock.time()

    def mono(self) -> float:
        return self.config.clock.monotonic()


SERVICE_KEY = web.AppKey("tokensdk_service", _Service)
STATS_KEY = web.AppKey("tokensdk_stats", ServiceStats)


# -- request helpers --------------------------------------------------------------------

#: The longest value accepted in these string fields, in characters (longer: 400).
MAX_LENGTHS: Mapping[str, int] = {"username": 256, "assetId": 256, "token": 4096}
#: The longest value of every other string field (passwords, access and refresh
#: tokens, one-time-key hashes, signatures, keys, ids), in characters. Asset tokens
#: (``token``) get more: an asset id of 256 characters, JSON-escaped, fits.
MAX_STRING = 1024


async def _json_body(request: web.Request) -> dict[str, Any]:
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


def _string(body: dict[str, Any], name: str) -> str:
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


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


def _client_ip(request: web.Request) -> str:
    return request.remote or "unknown"


def _quoted(text: str) -> str:
    """Return ``text`` as an HTTP quoted-string (RFC 9110 section 5.6.4)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _authenticate(request: web.Request) -> AccessRecord:
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
            headers={"WWW-Authenticate": f"Bearer realm={_quoted(service.config.realm)}"},
        )
    try:
        return service.state.authenticate_bearer(token, service.now())
    except BearerRejected as exc:
        service.stats.rejected_bearers += 1
        if exc.expired:
            service.stats.expired_bearers += 1
        raise


def _check_rate(service: _Service, keys: list[tuple[SlidingWindowLimiter, str]]) -> None:
    now = service.mono()
    waits = [w for limiter, key in keys if (w := limiter.retry_after(key, now)) is not None]
    if waits:
        service.stats.rate_limited += 1
        retry = max(waits)
        raise ApiError(
            429,
            "rate_limited",
            f"too many attempts; retry in {retry} s",
            headers={"Retry-After": str(retry)},
        )


def _login_keys(
    service: _Service, request: web.Request, username: str
) -> list[tuple[SlidingWindowLimiter, str]]:
    ip = _client_ip(request)
    return [
        (service.login_limiter, f"{ip}|{username}"),
        (service.user_limiter, username),
        (service.ip_limiter, ip),
    ]


def _reserve_attempt(
    service: _Service, request: web.Request, username: str, *, hashing: bool
) -> None:
    """Check the login limits and the hashing capacity; count this attempt up front.

    Counting before the (slow, threaded) password check means a concurrent burst
    cannot slip past a limit: the per-IP one included, however many usernames the
    burst sprays. A success gives its attempt back (:func:`_attempt_succeeded`).
    An attempt refused as busy counts against the client IP (which sent it) but
    not against the username (nothing was guessed).

    Raises:
        ApiError: 429 ``rate_limited``; 503 ``service_busy`` when ``hashing`` and
            every password-check slot and waiting place is taken.
    """
    keys = _login_keys(service, request, username)
    _check_rate(service, keys)
    now = service.mono()
    *per_user, (ip_limiter, ip) = keys
    ip_limiter.record(ip, now)
    if hashing and service.hashing.full:
        service.stats.busy += 1
        raise ApiError(
            503,
            "service_busy",
            "too many password checks at once; retry in 1 s",
            headers={"Retry-After": "1"},
        )
    for limiter, key in per_user:
        limiter.record(key, now)


def _attempt_succeeded(service: _Service, request: web.Request, username: str) -> None:
    """Clear the (username, IP) count and give the attempt back to the wider limits."""
    pair, user, ip = _login_keys(service, request, username)
    pair[0].reset(pair[1])
    for limiter, key in (user, ip):
        limiter.release(key)


def _login_failed(service: _Service) -> ApiError:
    service.stats.failed_logins += 1
    return ApiError(401, "invalid_credentials", "invalid username or credentials")


async def _check_password(service: _Service, username: str, password: str) -> UserRecord | None:
    record = service.state.users.get(username)
    service.stats.password_hashes += 1
    ok = await service.hashing.run(verify_password, record, password, service.config.scrypt_n)
    return record if ok else None


def _start_session(
    service: _Service, request: web.Request, username: str, record: UserRecord
) -> LoginTokens:
    if record.frozen:
        raise ApiError(403, "account_frozen", "the account is frozen")
    _attempt_succeeded(service, request, username)
    service.stats.logins += 1
    return service.state.login(username, service.now())


# -- handlers: status and sessions ----------------------------------------------------


async def status(request: web.Request) -> web.Response:
    """``GET /v1/status``: server time (Unix ms), realm and version."""
    service = request.app[SERVICE_KEY]
    return _json(
        {
            "serverTime": int(service.now() * 1000),
            "realm": service.config.realm,
            "version": _VERSION,
        }
    )


async def login(request: web.Request) -> web.Response:
    """``POST /v1/login``: username + password -> LoginTokens."""
    service = request.app[SERVICE_KEY]
    body = await _json_body(request)
    username, password = _string(body, "username"), _string(body, "password")
    _reserve_attempt(service, request, username, hashing=True)
    record = await _check_password(service, username, password)
    if record is None:
        raise _login_failed(service)
    return _json(_start_session(service, request, username, record).to_json())


async def one_time_key(request: web.Request) -> web.Response:
    """``POST /v1/login/one-time-key``: issue a 300 s single-use key (newest wins)."""
    service = request.app[SERVICE_KEY]
    body = await _json_body(request)
    username = _string(body, "username")
    keys = [
        (service.key_limiter, username),
        (service.request_limiter, f"otk|{_client_ip(request)}"),
    ]
    _check_rate(service, keys)
    now = service.mono()
    for limiter, key in keys:
        limiter.record(key, now)
    return _json({"key": service.state.new_one_time_key(username, service.now())})


async def login_with_one_time_key(request: web.Request) -> web.Response:
    """``POST /v1/login/with-one-time-key``: username + hash -> LoginTokens."""
    service = request.app[SERVICE_KEY]
    body = await _json_body(request)
    username, answer = _string(body, "username"), _string(body, "hash")
    _reserve_attempt(service, request, username, hashing=False)
    record = service.state.users.get(username)
    if record is None or not service.state.use_one_time_key(username, answer, service.now()):
        raise _login_failed(service)
    return _json(_start_session(service, request, username, record).to_json())


async def login_with_token(request: web.Request) -> web.Response:
    """``POST /v1/login/with-token``: username + access token -> remaining lifetime."""
    service = request.app[SERVICE_KEY]
    body = await _json_body(request)
    username, token = _string(body, "username"), _string(body, "accessToken")
    remaining = service.state.login_with_token(username, token, service.now())
    return _json({"username": username, "accessExpire": remaining})


async def refresh(request: web.Request) -> web.Response:
    """``POST /v1/refresh``: rotate a refresh token into a new pair."""
    service = request.app[SERVICE_KEY]
    body = await _json_body(request)
    username, token = _string(body, "username"), _string(body, "refreshToken")
    idempotency_key = body.get("idempotencyKey")
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
    return _json(tokens.to_json())


async def logout(request: web.Request) -> web.Response:
    """``POST /v1/logout``: revoke the bearer's whole family."""
    record = _authenticate(request)
    request.app[SERVICE_KEY].state.revoke_family(record.family)
    return web.Response(status=204)


async def me(request: web.Request) -> web.Response:
    """``GET /v1/me``: who the bearer is."""
    record = _authenticate(request)
    return _json({"username": record.username})


# -- handlers: MAC tokens ---------------------------------------------------------------


async def create_mac_token(request: web.Request) -> web.Response:
    """``POST /v1/tokens/create``: bearer (+ password for knowledge) -> token id and secret."""
    service = request.app[SERVICE_KEY]
    record = _authenticate(request)
    body = await _json_body(request)
    factors = body.get("factors")
    if not isinstance(factors, list) or tuple(factors) not in _FACTOR_SETS:
        raise ApiError(
            400,
            "invalid_request",
            'factors must be ["possession"] or ["possession", "knowledge"]',
        )
    if "knowledge" in factors:
        password = _string(body, "password")
        _reserve_attempt(service, request, record.username, hashing=True)
        if await _check_password(service, record.username, password) is None:
            raise _login_failed(service)
        _attempt_succeeded(service, request, record.username)
        # The session may have been revoked while the password was being hashed.
        record = _authenticate(request)
    token_id, secret = service.state.create_mac_token(
        record.family, record.username, tuple(factors)
    )
    service.stats.mac_tokens_created += 1
    return _json({"tokenId": token_id, "tokenSecret": secret})


async def remove_mac_token(request: web.Request) -> web.Response:
    """``POST /v1/tokens/remove``: remove one of the bearer's MAC tokens."""
    service = request.app[SERVICE_KEY]
    record = _authenticate(request)
    token_id = _string(await _json_body(request), "tokenId")
    service.state.remove_mac_token(record.username, token_id)
    return _json({"tokenId": token_id})


async def me_by_mac_token(request: web.Request) -> web.Response:
    """``GET /v1/me/token``: verify an ``X-PowerAuth-Token`` header."""
    service = request.app[SERVICE_KEY]
    now = service.now()

    def lookup(token_id: str) -> bytes | None:
        return service.state.mac_token_key(token_id, now)

    try:
        header = request.headers.get(_MAC_HEADER)
        if header is None:
            raise HeaderInvalid("token_invalid", "missing header")
        parsed = verify_token_header(
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
            f"the {_MAC_HEADER} header was refused: {exc.error}",
            headers={"WWW-Authenticate": "PowerAuth"},
        ) from None
    token = service.state.live_mac_token(parsed.token_id, now)
    if token is None:  # pragma: no cover - lookup() just found it
        raise ApiError(401, "token_invalid", "unknown token")
    service.stats.mac_headers_accepted += 1
    return _json(
        {"username": token.username, "tokenId": parsed.token_id, "factors": list(token.factors)}
    )


# -- handlers: asset tokens ------------------------------------------------------------


async def register_asset(request: web.Request) -> web.Response:
    """``POST /v1/assets/register``: bearer; add an asset and its holder's public key."""
    service = request.app[SERVICE_KEY]
    _authenticate(request)
    body = await _json_body(request)
    asset_id, public_key = _string(body, "assetId"), _string(body, "publicKey")
    if not asset_id:
        raise ApiError(400, "invalid_request", "assetId must not be empty")
    service.state.register_asset(asset_id, _public_key_hex(public_key))
    return _json({"assetId": asset_id, "publicKey": public_key}, status=201)


def _public_key_hex(text: str) -> str:
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


async def asset_challenge(request: web.Request) -> web.Response:
    """``POST /v1/assets/challenge``: issue a 300 s single-use challenge."""
    service = request.app[SERVICE_KEY]
    asset_id = _string(await _json_body(request), "assetId")
    ip_key = f"challenge|{_client_ip(request)}"
    _check_rate(service, [(service.request_limiter, ip_key), (service.asset_limiter, asset_id)])
    service.request_limiter.record(ip_key, service.mono())
    challenge = service.state.new_challenge(asset_id, service.now())
    # Only known assets get a count of their own (an unknown one is a 404 and stores
    # nothing); the per-IP count bounds how many names one client can try.
    service.asset_limiter.record(asset_id, service.mono())
    return _json(challenge)


async def asset_token(request: web.Request) -> web.Response:
    """``POST /v1/assets/token``: a signed challenge -> a PASETO v4.public access token."""
    service = request.app[SERVICE_KEY]
    body = await _json_body(request)
    challenge = body.get("challenge")
    if not isinstance(challenge, dict):
        raise ApiError(400, "invalid_request", "field 'challenge' must be an object")
    fields = {name: _string(challenge, name) for name in ("assetId", "timestamp", "nonce")}
    signature = _string(body, "signature")
    token = service.state.issue_asset_token(
        fields, signature, service.now(), service.config.asset_token_lifetime
    )
    service.stats.asset_tokens_issued += 1
    return _json({"assetIds": [fields["assetId"]], "accessToken": token})


async def asset_validate(request: web.Request) -> web.Response:
    """``POST /v1/assets/validate``: check signature, expiry and revocation."""
    service = request.app[SERVICE_KEY]
    token = _string(await _json_body(request), "token")
    info = service.state.validate_asset_token(token, service.now())
    return _json(info.to_json())


async def asset_revoke(request: web.Request) -> web.Response:
    """``POST /v1/assets/revoke``: revoke a token until its expiry."""
    service = request.app[SERVICE_KEY]
    token = _string(await _json_body(request), "token")
    service.state.revoke_asset_token(token, service.now())
    return web.Response(status=204)


async def keys(request: web.Request) -> web.Response:
    """``GET /v1/keys``: every verifying public key as PASERK with its ``k4.pid``."""
    return _json({"keys": request.app[SERVICE_KEY].state.public_keys()})


# -- middleware and app -----------------------------------------------------------------

_HTTP_ERRORS = {
    400: "invalid_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


def _error_response(
    status: int,
    error: str,
    message: str,
    code: int | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> web.Response:
    body: dict[str, Any] = {"error": error, "code": status if code is None else code}
    body["message"] = message
    body.update(extra or {})
    return web.json_response(body, status=status, headers=headers)


@web.middleware
async def _errors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    service = request.app[SERVICE_KEY]
    resource = request.match_info.route.resource
    service.stats.requests_by_path[
        resource.canonical if resource is not None else "<unmatched>"
    ] += 1
    response: web.StreamResponse
    try:
        response = await handler(request)
    except ApiError as exc:
        response = _error_response(
            exc.status, exc.error, exc.message, exc.code, exc.headers, exc.extra
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        response = _error_response(
            exc.status, _HTTP_ERRORS.get(exc.status, "http_error"), exc.reason, headers=headers
        )
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("internal error on %s %s", request.method, resource)
        response = _error_response(500, "internal", "internal server error")
    # Errors change state too (a reused refresh token revokes its family): every
    # answer waits until what it reflects is on disk, off the event loop.
    try:
        await service.state.db.commit()
    except sqlite3.Error:  # PersistenceFailed; the writer logged why
        return _error_response(
            503, "service_unavailable", "the service cannot store its state; try again later"
        )
    return response


async def _startup(app: web.Application) -> AsyncIterator[None]:
    service = app[SERVICE_KEY]
    config = service.config

    def hash_users() -> dict[str, UserRecord]:
        return {
            name: make_user_record(
                name, password, config.realm, config.scrypt_n, name in config.frozen_users
            )
            for name, password in config.users.items()
        }

    records = await anyio.to_thread.run_sync(hash_users)
    for name, record in records.items():
        service.state.add_user(name, record)
    # Also revokes the sessions a frozen account kept in the database from before.
    for name in config.frozen_users:
        service.state.freeze_user(name)
    now = service.now()
    for asset_id, public_key in config.assets.items():
        service.state.assets.put(asset_id, AssetRecord(public_key=public_key))
    for kid in config.drop_keys:
        service.state.drop_signing_key(kid)
    if config.rotate_key:
        service.state.rotate_signing_key(now)
    service.state.ensure_signing_key(now)
    await service.state.db.commit()
    yield
    db = service.state.db
    try:
        await db.commit()
    except sqlite3.Error:
        pass  # logged by the writer; the file keeps its last consistent state
    finally:
        with suppress(sqlite3.Error):
            db.close()


_ROUTES: list[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]] = [
    ("GET", "/v1/status", status),
    ("POST", "/v1/login", login),
    ("POST", "/v1/login/one-time-key", one_time_key),
    ("POST", "/v1/login/with-one-time-key", login_with_one_time_key),
    ("POST", "/v1/login/with-token", login_with_token),
    ("POST", "/v1/refresh", refresh),
    ("POST", "/v1/logout", logout),
    ("GET", "/v1/me", me),
    ("POST", "/v1/tokens/create", create_mac_token),
    ("POST", "/v1/tokens/remove", remove_mac_token),
    ("GET", "/v1/me/token", me_by_mac_token),
    ("POST", "/v1/assets/register", register_asset),
    ("POST", "/v1/assets/challenge", asset_challenge),
    ("POST", "/v1/assets/token", asset_token),
    ("POST", "/v1/assets/validate", asset_validate),
    ("POST", "/v1/assets/revoke", asset_revoke),
    ("GET", "/v1/keys", keys),
]


def create_app(config: ServiceConfig) -> web.Application:
    """Build the reference token service as an aiohttp application.

    Opening the database (if any) happens here; hashing the configured users'
    passwords happens at application startup, in a worker thread.

    Args:
        config: The service configuration.

    Returns:
        The application; ``app[STATS_KEY]`` holds its counters.
    """
    for asset_id, public_key in config.assets.items():
        if len(asset_id) > MAX_LENGTHS["assetId"]:
            raise ValueError(f"asset id longer than {MAX_LENGTHS['assetId']} characters")
        try:
            _public_key_hex(public_key)
        except ApiError:
            raise ValueError(f"asset {asset_id!r}: not an Ed25519 public key in hex") from None
    for name, password in config.users.items():
        # Such a user could never log in: the request would be refused as too long.
        if len(name) > MAX_LENGTHS["username"] or len(password) > MAX_STRING:
            raise ValueError(
                f"usernames are limited to {MAX_LENGTHS['username']} characters and"
                f" passwords to {MAX_STRING}"
            )
    db = open_persistence(config.db)
    try:
        state = ServiceState(
            realm=config.realm,
            access_ttl=config.access_ttl,
            refresh_ttl=config.refresh_ttl,
            one_time_key_ttl=config.one_time_key_ttl,
            challenge_ttl=config.challenge_ttl,
            db=db,
            idempotency_window=config.idempotency_window,
            vault=_vault(config),
        )
    except BaseException:
        db.close()  # a wrong key file, a window out of range: nothing may stay open
        raise
    window = TimestampWindow(
        past_ms=int(config.mac_window_past * 1000), future_ms=int(config.mac_window_future * 1000)
    )
    ip_limit = config.ip_rate_limit
    if ip_limit is None:
        ip_limit = 5 * config.login_rate_limit
    user_limit = config.user_rate_limit
    if user_limit is None:
        user_limit = 10 * config.login_rate_limit
    hash_slots = config.hash_concurrency or os.cpu_count() or 1
    hash_queue = config.hash_queue
    if hash_queue is None:
        hash_queue = 4 * hash_slots
    window_s = config.login_rate_window
    service = _Service(
        config=config,
        state=state,
        stats=ServiceStats(),
        login_limiter=SlidingWindowLimiter(config.login_rate_limit, window_s),
        user_limiter=SlidingWindowLimiter(user_limit, window_s),
        ip_limiter=SlidingWindowLimiter(ip_limit, window_s),
        key_limiter=SlidingWindowLimiter(config.login_rate_limit, window_s),
        request_limiter=SlidingWindowLimiter(ip_limit, window_s),
        asset_limiter=SlidingWindowLimiter(user_limit, window_s),
        hashing=_PasswordChecks(hash_slots, hash_queue),
        mac_window=window,
        replay_guard=ReplayGuard(window),
    )
    # aiohttp's own header limits (8190 bytes per line, 128 headers): a longer
    # header, an X-PowerAuth-Token included, is refused before any handler runs,
    # with a JSON 400 (see _JsonErrorRequestHandler), and one request head holds
    # at most about 1 MiB of memory.
    app = web.Application(middlewares=[_errors_middleware], client_max_size=config.max_body)
    app[SERVICE_KEY] = service
    app[STATS_KEY] = service.stats
    for method, path, handler in _ROUTES:
        app.router.add_route(method, path, handler)
    app.cleanup_ctx.append(_startup)
    return app


def _vault(config: ServiceConfig) -> Vault:
    """The service key: from ``key_file``, else ``<db>.key``; in memory without a database."""
    path = config.key_file
    if path is None and config.db not in (None, "", ":memory:"):
        path = f"{config.db}.key"
    return Vault.ephemeral() if path is None else Vault.from_file(path)


@attrs.define
class RunningService:
    """A service listening on a loopback port (from :func:`running_service`).

    Attributes:
        url: The base URL without ``/v1`` and without a trailing slash.
        app: The aiohttp application.
        stats: Its counters.
        config: Its configuration.
    """

    url: str
    app: web.Application
    stats: ServiceStats
    config: ServiceConfig

    @property
    def state(self) -> ServiceState:
        """The state core (for tests that need to look inside)."""
        return self.app[SERVICE_KEY].state

    def rotate_key(self) -> str:
        """Make a fresh signing key the one that signs; return its ``kid``."""
        return self.state.rotate_signing_key(self.config.clock.time())

    def drop_key(self, kid: str) -> bool:
        """Stop trusting a signing key (a new one is made if it was the last)."""
        dropped = self.state.drop_signing_key(kid)
        self.state.ensure_signing_key(self.config.clock.time())
        return dropped

    def freeze_user(self, username: str) -> int:
        """Freeze an account now: its sessions are revoked; returns how many."""
        return self.state.freeze_user(username)


class _JsonErrorRequestHandler(web_protocol.RequestHandler):
    """Answers HTTP-level parse errors with JSON too, and drops slow request heads.

    A request head (request line and headers) must arrive within
    ``header_timeout`` seconds, counted from the connection's start and, on a
    kept-alive connection, from the first byte after the previous request's
    body; otherwise the connection is closed (a connection that trickles its
    headers holds memory as long as it is open). An idle kept-alive connection is
    left to aiohttp's ``keepalive_timeout``. aiohttp has no such option itself.

    Args:
        manager: The server.
        loop: The event loop.
        header_timeout: Seconds a request head may take.
        **kwargs: aiohttp's RequestHandler options.
    """

    __slots__ = ("_head_payload", "_head_timeout", "_head_timer")

    def __init__(
        self,
        manager: web.Server,
        *,
        loop: asyncio.AbstractEventLoop,
        header_timeout: float = 5.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self._head_timeout = header_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        # The body of the newest request parsed: bytes before its end are body bytes.
        self._head_payload: streams.StreamReader | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # Every byte before this chunk belongs to complete requests: the chunk
        # starts a new head (body bytes of a request never start the timer).
        between = self._head_payload is None or self._head_payload.is_eof()
        count = self._request_count
        super().data_received(data)
        if self._request_count != count:
            self._disarm_head_timer()
            if self._messages:
                self._head_payload = self._messages[-1][1]
        elif data and between and self._head_timer is None:
            self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        self._head_timer = self._loop.call_later(self._head_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._force_close or self._close:
            return
        if self._request_in_progress or self._messages:
            # A pipelined head behind a request still being handled: its turn comes.
            self._arm_head_timer()
            return
        log.debug("no request head within %s s from %s; closing", self._head_timeout, self.peername)
        self.force_close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("a response was sent already; cannot send the error")
        # Not aiohttp's own logging: its parse errors quote the offending header line,
        # which may be an Authorization header.
        log.debug("unparsable request from %s: HTTP %d", request.remote, status)
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
        response = _error_response(
            status,
            _HTTP_ERRORS.get(status, "internal" if status >= 500 else "invalid_request"),
            phrase or "request failed",
        )
        response.force_close()
        return response


class _JsonErrorServer(web.Server):
    def __call__(self) -> web_protocol.RequestHandler:
        return _JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class _Runner(web.AppRunner):
    """An AppRunner whose connections answer even unparsable requests with JSON."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        if type(server) is web.Server:
            # aiohttp builds its Server privately; swapping the class only changes
            # which RequestHandler it creates per connection.
            server.__class__ = _JsonErrorServer
        return server


@asynccontextmanager
async def running_service(
    config: ServiceConfig, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[RunningService]:
    """Run the service on ``host:port`` (port 0: a free one) for the ``async with`` body.

    Args:
        config: The service configuration.
        host: The interface to bind.
        port: The TCP port; 0 picks a free one.

    Yields:
        The running service; its ``url`` carries the real port.
    """
    app = create_app(config)
    # shutdown_timeout: how long requests in flight may take to finish on exit.
    runner = _Runner(
        app, access_log=None, shutdown_timeout=5.0, header_timeout=config.header_timeout
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        yield RunningService(
            url=f"http://{shown}:{bound_port}", app=app, stats=app[STATS_KEY], config=config
        )
    finally:
        await runner.cleanup()

"""Login attempts: rate limits counted before hashing, bounded password checks."""

from __future__ import annotations

from aiohttp import web

from tokensdk.server._api_errors import ApiError, account_frozen
from tokensdk.server._passwords import verify_password
from tokensdk.server._ratelimit import SlidingWindowLimiter
from tokensdk.server._records import LoginTokens, UserRecord
from tokensdk.server._requests import client_ip
from tokensdk.server._service import Service

__all__ = [
    "attempt_succeeded",
    "check_password",
    "check_rate",
    "login_failed",
    "reserve_attempt",
    "start_session",
]


def check_rate(service: Service, keys: list[tuple[SlidingWindowLimiter, str]]) -> None:
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


def login_keys(
    service: Service, request: web.Request, username: str
) -> list[tuple[SlidingWindowLimiter, str]]:
    ip = client_ip(request)
    return [
        (service.login_limiter, f"{ip}|{username}"),
        (service.user_limiter, username),
        (service.ip_limiter, ip),
    ]


def reserve_attempt(
    service: Service, request: web.Request, username: str, *, hashing: bool
) -> None:
    """Check the login limits and the hashing capacity; count this attempt up front.

    Counting before the (slow, threaded) password check means a concurrent burst
    cannot slip past a limit: the per-IP one included, however many usernames the
    burst sprays. A success gives its attempt back (:func:`attempt_succeeded`).
    An attempt refused as busy counts against the client IP (which sent it) but
    not against the username (nothing was guessed).

    Raises:
        ApiError: 429 ``rate_limited``; 503 ``service_busy`` when ``hashing`` and
            every password-check slot and waiting place is taken.
    """
    keys = login_keys(service, request, username)
    check_rate(service, keys)
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


def attempt_succeeded(service: Service, request: web.Request, username: str) -> None:
    """Clear the (username, IP) count and give the attempt back to the wider limits."""
    pair, user, ip = login_keys(service, request, username)
    pair[0].reset(pair[1])
    for limiter, key in (user, ip):
        limiter.release(key)


def login_failed(service: Service) -> ApiError:
    service.stats.failed_logins += 1
    return ApiError(401, "invalid_credentials", "invalid username or credentials")


async def check_password(service: Service, username: str, password: str) -> UserRecord | None:
    record = service.state.users.get(username)
    service.stats.password_hashes += 1
    ok = await service.hashing.run(verify_password, record, password, service.config.scrypt_n)
    return record if ok else None


def start_session(
    service: Service, request: web.Request, username: str, record: UserRecord
) -> LoginTokens:
    if record.frozen:
        raise account_frozen()
    attempt_succeeded(service, request, username)
    service.stats.logins += 1
    return service.state.login(username, service.now())

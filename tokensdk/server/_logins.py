"""Login attempts: rate limits counted before hashing, bounded password checks."""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web

from tokensdk.server._api_errors import ApiError, account_frozen
from tokensdk.server._limits import Hit
from tokensdk.server._passwords import verify_password
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


async def check_rate(
    service: Service, checks: Sequence[Hit], record: Sequence[Hit] | None = None
) -> None:
    """Count ``record`` (default: ``checks``) if every pair of ``checks`` is under its limit.

    Raises:
        ApiError: 429 ``rate_limited`` (nothing counted); 503 when the limits live in
            a Redis that cannot be reached.
    """
    retry = await service.limits.attempt(checks, checks if record is None else record)
    if retry is not None:
        service.stats.rate_limited += 1
        raise ApiError(
            429,
            "rate_limited",
            f"too many attempts; retry in {retry} s",
            headers={"Retry-After": str(retry)},
        )


def login_keys(request: web.Request, username: str) -> list[Hit]:
    ip = client_ip(request)
    return [("login", f"{ip}|{username}"), ("user", username), ("ip", ip)]


async def reserve_attempt(
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
    keys = login_keys(request, username)
    # A busy service counts the attempt against the IP only; the check and the
    # counts are one operation (see tokensdk.server._limits).
    busy = hashing and service.hashing.full
    await check_rate(service, keys, keys[-1:] if busy else keys)
    if busy or (hashing and service.hashing.full):
        service.stats.busy += 1
        raise ApiError(
            503,
            "service_busy",
            "too many password checks at once; retry in 1 s",
            headers={"Retry-After": "1"},
        )


async def attempt_succeeded(service: Service, request: web.Request, username: str) -> None:
    """Clear the (username, IP) count and give the attempt back to the wider limits."""
    pair, user, ip = login_keys(request, username)
    await service.limits.reset(*pair)
    for name, key in (user, ip):
        await service.limits.release(name, key)


def login_failed(service: Service) -> ApiError:
    service.stats.failed_logins += 1
    return ApiError(401, "invalid_credentials", "invalid username or credentials")


async def check_password(service: Service, username: str, password: str) -> UserRecord | None:
    record = service.state.users.get(username)
    service.stats.password_hashes += 1
    ok = await service.hashing.run(verify_password, record, password, service.config.scrypt_n)
    return record if ok else None


async def start_session(
    service: Service,
    request: web.Request,
    username: str,
    record: UserRecord,
    *,
    client: str | None = None,
) -> LoginTokens:
    if record.frozen:
        raise account_frozen()
    await attempt_succeeded(service, request, username)
    # Frozen while that was awaited (a Redis round trip)? The check and the login
    # below are one state operation, with no await between them.
    if service.state.is_frozen(username):
        raise account_frozen()
    service.stats.logins += 1
    return service.state.login(username, service.now(), client)

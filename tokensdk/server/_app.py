"""The service application: routes, startup, :func:`create_app`, :func:`running_service`.

Where things are: handlers by area in :mod:`._session_handlers`,
:mod:`._mac_handlers` and :mod:`._asset_handlers`; request parsing in
:mod:`._requests`; login attempt accounting in :mod:`._logins`; what handlers
share in :mod:`._service`; JSON errors, the commit middleware and the connection
handler in :mod:`._http`; the state and its rules behind :mod:`._state`.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress

import anyio
import attrs
from aiohttp import web

from tokensdk.mac import AsyncReplayGuard, ReplayGuard, TimestampWindow
from tokensdk.server._api_errors import ApiError
from tokensdk.server._asset_handlers import (
    asset_challenge,
    asset_revoke,
    asset_token,
    asset_validate,
    keys,
    register_asset,
)
from tokensdk.server._config import ServiceConfig
from tokensdk.server._db import open_persistence
from tokensdk.server._http import Runner, errors_middleware
from tokensdk.server._limits import Limit, MemoryRateLimits, RateLimits
from tokensdk.server._mac_handlers import (
    create_mac_token,
    me_by_mac_token,
    remove_mac_token,
)
from tokensdk.server._oauth_handlers import REVOKE_PATH, TOKEN_PATH, discovery, revoke, token
from tokensdk.server._passwords import make_user_record
from tokensdk.server._ratelimit import SlidingWindowLimiter
from tokensdk.server._records import AssetRecord, UserRecord
from tokensdk.server._requests import MAX_LENGTHS, MAX_STRING, public_key_hex
from tokensdk.server._service import SERVICE_KEY, STATS_KEY, PasswordChecks, Service, ServiceStats
from tokensdk.server._session_handlers import (
    login,
    login_with_one_time_key,
    login_with_token,
    logout,
    me,
    one_time_key,
    refresh,
    status,
)
from tokensdk.server._shared import connect_shared
from tokensdk.server._state import ServiceState
from tokensdk.server._vault import Vault

__all__ = [
    "SERVICE_KEY",
    "STATS_KEY",
    "RunningService",
    "ServiceStats",
    "create_app",
    "running_service",
]


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
        await service.limits.aclose()


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

#: The OAuth 2.0 routes: form-encoded requests, RFC 6749 error bodies (apart from
#: the contract's JSON routes above, and fuzzed apart: tests/test_server_oauth.py).
_OAUTH_ROUTES: list[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]] = [
    ("POST", TOKEN_PATH, token),
    ("POST", REVOKE_PATH, revoke),
    ("GET", "/.well-known/oauth-authorization-server", discovery),
    ("GET", "/.well-known/openid-configuration", discovery),
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
            public_key_hex(public_key)
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
    specs = {
        "login": Limit(config.login_rate_limit, window_s),
        "user": Limit(user_limit, window_s),
        "ip": Limit(ip_limit, window_s),
        "key": Limit(config.login_rate_limit, window_s),
        "request": Limit(ip_limit, window_s),
        "asset": Limit(user_limit, window_s),
    }
    limiters = {name: SlidingWindowLimiter(s.limit, s.window) for name, s in specs.items()}
    limits: RateLimits = MemoryRateLimits(limiters, config.clock.monotonic)
    replay_guard: ReplayGuard | AsyncReplayGuard = ReplayGuard(window)
    if config.redis_url is not None:
        try:
            limits, replay_guard = connect_shared(config, specs, window)
        except BaseException:
            db.close()
            raise
    service = Service(
        config=config,
        state=state,
        stats=ServiceStats(),
        login_limiter=limiters["login"],
        user_limiter=limiters["user"],
        ip_limiter=limiters["ip"],
        key_limiter=limiters["key"],
        request_limiter=limiters["request"],
        asset_limiter=limiters["asset"],
        limits=limits,
        hashing=PasswordChecks(hash_slots, hash_queue),
        mac_window=window,
        replay_guard=replay_guard,
    )
    # aiohttp's own header limits (8190 bytes per line, 128 headers): a longer
    # header, an X-PowerAuth-Token included, is refused before any handler runs,
    # with a JSON 400 (see JsonErrorRequestHandler), and one request head holds
    # at most about 1 MiB of memory.
    app = web.Application(middlewares=[errors_middleware], client_max_size=config.max_body)
    app[SERVICE_KEY] = service
    app[STATS_KEY] = service.stats
    for method, path, handler in _ROUTES + _OAUTH_ROUTES:
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
    runner = Runner(
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

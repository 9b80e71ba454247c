"""Row 12: ``tokensdk.OAuth2`` against Authlib's ``AsyncOAuth2Client`` on a real provider.

Both clients talk to the same process: panva's oidc-provider (tests/oidc, Node.js), started
with the tests' own helper (tests/_oidc.py, loaded by path so that the benchmarks do not
need pytest). Refresh requests are counted by the provider itself (its per-grant stats).
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import anyio.to_thread

from benchmarks._harness import (
    Row,
    at_least,
    at_most,
    compare_async,
    compare_hot_path,
    fmt_ratio,
    fmt_time,
    repeat,
    spread,
)
from benchmarks._storm import Storms, fmt_counts, storm, timed
from tokensdk import ManualClock, OAuth2, Session

__all__ = ["oauth_rows"]

HARNESS = Path(__file__).resolve().parent.parent / "tests" / "_oidc.py"
CLIENT_ID, CLIENT_SECRET = "app", "app-secret"  # tests/oidc's confidential client
USER, PASSWORD = "alice", "wonderland"
SCOPE = "openid offline_access api:read"
TTL = 300  # access token lifetime, as in row 2
CALLERS = 10_000


def _harness() -> ModuleType:
    """tests/_oidc.py, imported by path (tests/ is not a package)."""
    name = "_tokensdk_bench_oidc"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HARNESS)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


@contextlib.asynccontextmanager
async def _provider(config: dict[str, Any]) -> AsyncIterator[Any]:
    """A private provider process (exact stats), stopped on exit."""
    provider = await anyio.to_thread.run_sync(_harness().start_provider, config)
    try:
        yield provider
    finally:
        await anyio.to_thread.run_sync(provider.stop)


def _refreshes(stats: dict[str, Any]) -> int:
    """Refresh token grants the provider answered, whatever the status."""
    return sum(int(n) for n in stats["grants"].get("refresh_token", {}).values())


def _session(provider: Any, **kwargs: Any) -> Session:
    backend = OAuth2(
        provider.issuer,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        scope=SCOPE,
        token_endpoint=provider.token_endpoint,
    )
    return Session(backend, **kwargs)


@contextlib.asynccontextmanager
async def _authlib(provider: Any) -> AsyncIterator[Any]:
    """An Authlib client holding its own password-grant token from the provider, closed on exit."""
    from authlib.integrations.httpx_client import AsyncOAuth2Client

    client = AsyncOAuth2Client(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        scope=SCOPE,
        token_endpoint=provider.token_endpoint,
    )
    try:
        await client.fetch_token(provider.token_endpoint, username=USER, password=PASSWORD)
        yield client
    finally:
        await client.aclose()


# -- 12a: the hot path ----------------------------------------------------------------------


async def _hot_path(quick: bool, provider: Any) -> Row:
    async with _session(provider) as session, _authlib(provider) as client:
        await session.login(USER, PASSWORD)
        cmp = await compare_hot_path(
            {
                "sdk": repeat(session.access_token),
                "authlib": repeat(client.ensure_active_token, client.token),
            },
            quick=quick,
        )
    speedup = cmp.speedup("sdk", "authlib")
    return at_least(
        "12a",
        "OAuth 2.0 provider, hot path: access_token() speed-up over Authlib ensure_active_token",
        speedup,
        5,
        f"{cmp.medians('sdk', 'authlib')}; both hold a password-grant token from oidc-provider",
    )


# -- 12b: the storm -------------------------------------------------------------------------


async def _sdk_storms(provider: Any, rounds: int) -> Storms:
    clock = ManualClock()
    result = Storms()
    async with _session(provider, clock=clock) as session:
        await session.login(USER, PASSWORD)
        for _ in range(rounds):
            gc.collect()  # the last storm's garbage is not this refresh's cost
            result.alone.append(await timed(session.token_refresh))
            # The token is fresh; TTL - 10 s later every caller is in the mandatory window
            # (the session's clock moves; the provider's need not: its token is still valid).
            before = _refreshes(await provider.stats())
            wall = await storm(CALLERS, session.access_token, lambda: clock.advance(TTL - 10))
            result.storm.append(wall)
            result.refreshes.append(_refreshes(await provider.stats()) - before)
    return result


async def _authlib_storms(provider: Any, rounds: int) -> Storms:
    result = Storms()
    async with _authlib(provider) as client:
        for _ in range(rounds):
            gc.collect()
            result.alone.append(await timed(lambda: client.refresh_token(provider.token_endpoint)))
            # Inside Authlib's leeway (60 s): every caller sees a token to refresh.
            stale = dict(client.token)
            stale["expires_at"] = int(time.time()) + 30

            def release(stale: dict[str, Any] = stale) -> None:
                client.token = stale

            before = _refreshes(await provider.stats())
            wall = await storm(CALLERS, lambda: client.ensure_active_token(client.token), release)
            result.storm.append(wall)
            result.refreshes.append(_refreshes(await provider.stats()) - before)
    return result


async def _storm_rows(quick: bool, provider: Any) -> list[Row]:
    rounds = 2 if quick else 9
    sdk = await _sdk_storms(provider, rounds)
    authlib = await _authlib_storms(provider, rounds)
    ours, theirs = spread(sdk.storm)[0], spread(authlib.storm)[0]
    return [
        Row(
            "12b",
            f"OAuth 2.0 provider, storm: refresh requests at the provider for {CALLERS:,} callers",
            f"{fmt_counts(sdk.refreshes)} (over {rounds} storms); "
            f"Authlib {fmt_counts(authlib.refreshes)}",
            "1",
            set(sdk.refreshes) == {1},
            "counted by oidc-provider (refresh_token grants, rotation on)",
        ),
        Row(
            "12c",
            f"OAuth 2.0 provider, storm: wall time, SDK vs Authlib ({CALLERS:,} callers)",
            f"{ours / theirs:.2f}x (sdk {fmt_time(ours)}, authlib {fmt_time(theirs)})",
            "",
            None,
            f"one refresh alone: sdk {fmt_time(spread(sdk.alone)[0])}, authlib "
            f"{fmt_time(spread(authlib.alone)[0])}; medians of {rounds} storms",
        ),
    ]


# -- 12d: the refresh round trip --------------------------------------------------------------


async def _round_trip(quick: bool, provider: Any) -> Row:
    basic = aiohttp.BasicAuth(CLIENT_ID, CLIENT_SECRET)
    async with (
        _session(provider) as session,
        aiohttp.ClientSession() as http,
        _authlib(provider) as client,
    ):
        await session.login(USER, PASSWORD)
        form = {"grant_type": "password", "username": USER, "password": PASSWORD, "scope": SCOPE}
        async with http.post(provider.token_endpoint, data=form, auth=basic) as resp:
            resp.raise_for_status()
            refresh_token = (await resp.json())["refresh_token"]

        async def raw(n: int) -> None:
            # The SDK's request: the same form, Basic client authentication, the rotated
            # refresh token kept for the next round.
            nonlocal refresh_token
            for _ in range(n):
                body = {"grant_type": "refresh_token", "refresh_token": refresh_token}
                async with http.post(provider.token_endpoint, data=body, auth=basic) as resp:
                    resp.raise_for_status()
                    refresh_token = (await resp.json())["refresh_token"]

        cmp = await compare_async(
            {
                "sdk": repeat(session.token_refresh),
                "raw": raw,
                "authlib": repeat(client.refresh_token, provider.token_endpoint),
            },
            number=5 if quick else 30,
            rounds=5 if quick else 41,
        )
    ratio = cmp.ratio("sdk", "raw")
    return at_most(
        "12d",
        "OAuth 2.0 provider, refresh round trip: token_refresh() vs raw aiohttp POST of the grant",
        ratio,
        1.15,
        f"{cmp.medians('sdk', 'raw')} (the SDK's "
        f"own work: {fmt_time(cmp.median('sdk') - cmp.median('raw'))} per refresh); Authlib "
        f"refresh_token() {fmt_ratio(cmp.ratio('authlib', 'raw'))} the raw POST",
    )


async def oauth_rows(quick: bool) -> list[Row]:
    """Row 12: hot path, storm and round trip against Authlib on one oidc-provider."""
    # One private process: its stats count only this row's requests (read as deltas).
    async with _provider({"accessTokenTTL": TTL}) as provider:
        rows = [await _hot_path(quick, provider)]
        rows += await _storm_rows(quick, provider)
        rows.append(await _round_trip(quick, provider))
    return rows

"""Rows that talk to the reference service on loopback: 1-5 and 8."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import random
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio
import anyio.lowlevel
from aiohttp import web

from benchmarks._harness import (
    Comparison,
    Row,
    at_least,
    at_most,
    compare_async,
    compare_hot_path,
    compare_sync,
    fmt_ratio,
    fmt_time,
    repeat,
    spread,
)
from benchmarks._pure import floor_header, mac_concurrency_rows, mac_header_rows
from benchmarks._storm import Storms, fmt_counts, storm, timed
from tokensdk import ManualClock, RefreshPolicy, Session
from tokensdk._policy import plan_refresh
from tokensdk.server import (
    STATS_KEY,
    RunningService,
    ServiceConfig,
    ServiceStats,
    create_app,
    running_service,
)
from tokensdk.server._app import SERVICE_KEY

__all__ = [
    "fleet_rows",
    "hot_path_rows",
    "mac_rows",
    "middleware_rows",
    "round_trip_rows",
    "storm_rows",
]

USER, PASSWORD = "alice", "pw"


def _config(**options: Any) -> ServiceConfig:
    # A fleet logs in from one address at once: lift the login rate limits and let
    # every password check wait for its turn.
    options.setdefault("users", {USER: PASSWORD})
    limits = {"login_rate_limit": 10**9, "ip_rate_limit": 10**9, "user_rate_limit": 10**9}
    return ServiceConfig(scrypt_n=2**10, hash_queue=10**6, **limits, **options)


@contextlib.asynccontextmanager
async def _service(**options: Any) -> AsyncIterator[RunningService]:
    async with running_service(_config(**options)) as svc:
        yield svc


async def _oauth_token(request: web.Request) -> web.Response:
    """``POST /oauth/token`` (grant_type=refresh_token): the same rotation, OAuth 2 shaped.

    Authlib speaks RFC 6749 (a form in, ``access_token``/``expires_in`` out); this
    adapter does what ``/v1/refresh`` does (parse, rotate, count, answer JSON) so both
    clients meet the same service work.
    """
    service = request.app[SERVICE_KEY]
    form = await request.post()
    username, token = form.get("username"), form.get("refresh_token")
    if form.get("grant_type") != "refresh_token" or not isinstance(username, str):
        return web.json_response({"error": "invalid_request"}, status=400)
    if not isinstance(token, str):
        return web.json_response({"error": "invalid_request"}, status=400)
    pair = service.state.refresh(username, token, service.now(), None).to_json()
    service.stats.refreshes += 1
    return web.json_response(
        {
            "access_token": pair["accessToken"],
            "refresh_token": pair["refreshToken"],
            "token_type": "Bearer",
            "expires_in": pair["accessExpire"],
        }
    )


@contextlib.asynccontextmanager
async def _app_service(*, latency: float = 0.0) -> AsyncIterator[tuple[str, ServiceStats]]:
    """The reference service plus the OAuth 2 adapter route; yields (base URL, stats).

    ``latency`` delays every answer by that many seconds, as a network would.
    """
    app = create_app(_config())
    app.router.add_post("/oauth/token", _oauth_token)
    if latency:

        @web.middleware
        async def delay(request: web.Request, handler: Any) -> web.StreamResponse:
            await asyncio.sleep(latency)
            response: web.StreamResponse = await handler(request)
            return response

        app.middlewares.append(delay)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}", app[STATS_KEY]
    finally:
        await runner.cleanup()


# -- 1: the hot path -------------------------------------------------------------------


async def hot_path_rows(quick: bool) -> list[Row]:
    """Row 1: ``access_token()`` vs Authlib's ``ensure_active_token`` and the floor."""
    from authlib.integrations.httpx_client import AsyncOAuth2Client

    async with _service() as svc, Session(svc.url) as session:
        await session.login(USER, PASSWORD)
        creds = session.credentials
        assert creds is not None
        client = AsyncOAuth2Client(
            client_id="bench",
            token={
                "access_token": creds.access_token,
                "refresh_token": creds.refresh_token,
                "token_type": "Bearer",
                "expires_in": 300,
            },
        )
        token = client.token

        class Holder:
            token = creds.access_token

        holder = Holder()
        monotonic = time.monotonic

        async def floor(n: int) -> None:
            for _ in range(n):
                holder.token  # noqa: B018
                monotonic()

        try:
            cmp = await compare_hot_path(
                {
                    "sdk": repeat(session.access_token),
                    "authlib": repeat(client.ensure_active_token, token),
                    "floor": floor,
                },
                quick=quick,
            )
        finally:
            await client.aclose()
    speedup = cmp.speedup("sdk", "authlib")
    vs_floor = cmp.ratio("sdk", "floor")
    return [
        at_least(
            "1a",
            "Hot path: access_token() speed-up over Authlib ensure_active_token",
            speedup,
            5,
            cmp.medians("sdk", "authlib"),
        ),
        Row(
            "1b",
            "Hot path: access_token() vs attribute read + time.monotonic() (floor)",
            fmt_ratio(vs_floor),
            "",
            None,
            cmp.medians("floor"),
        ),
    ]


# -- 2: the refresh storm ------------------------------------------------------------------


async def storm_rows(quick: bool) -> list[Row]:
    """Row 2: 10,000 callers in the mandatory window cause one refresh."""
    callers, rounds = 10_000, (3 if quick else 11)
    ttl = 300
    clock = ManualClock()
    sdk = Storms()
    valid: list[float] = []
    async with _service(clock=clock, access_ttl=ttl) as svc, Session(svc.url, clock=clock) as s:
        await s.login(USER, PASSWORD)
        for _ in range(rounds):
            sdk.alone.append(await timed(s.token_refresh))
            # The token is fresh now; moving ttl-10 s puts every caller in the window.
            before = svc.stats.refreshes
            sdk.storm.append(await storm(callers, s.access_token, lambda: clock.advance(ttl - 10)))
            sdk.refreshes.append(svc.stats.refreshes - before)
            valid.append(await storm(callers, s.access_token, lambda: None))
    authlib = await _authlib_storm(callers, 2 if quick else 5)
    ratio = spread([a / b for a, b in zip(sdk.storm, sdk.alone, strict=True)])
    # Every caller must be woken twice (off the gate, then off the shared refresh);
    # the same callers woken once with a valid token show what a wake-up costs here.
    beyond = spread([(a - b) / c for a, b, c in zip(sdk.storm, sdk.alone, valid, strict=True)])
    return [
        Row(
            "2a",
            "Refresh storm: refresh requests for 10,000 concurrent callers",
            fmt_counts(sdk.refreshes) + f" (over {rounds} storms)",
            "1",
            set(sdk.refreshes) == {1},
            "",
        ),
        at_most(
            "2b",
            "Refresh storm: wall time vs one refresh round trip alone",
            ratio,
            1.5,
            f"storm {fmt_time(spread(sdk.storm)[0])}, "
            f"one refresh {fmt_time(spread(sdk.alone)[0])}, "
            f"10,000 callers waking with a valid token {fmt_time(spread(valid)[0])}; "
            f"storm = one refresh + {beyond[0]:.2f}x the valid-token run (floor: one refresh"
            " + 2 wake-ups per caller; 10,000 tasks cannot wake in 1.5 refreshes)",
        ),
        Row(
            "2c",
            "Refresh storm, same 10,000 callers with Authlib ensure_active_token",
            f"{fmt_counts(authlib.refreshes)} refresh(es); "
            f"storm {fmt_time(spread(authlib.storm)[0])} "
            f"({spread(authlib.storm)[0] / spread(sdk.storm)[0]:.2f}x the SDK's storm)",
            "",
            None,
            f"Authlib alone: one refresh {fmt_time(spread(authlib.alone)[0])}; "
            f"its storm = {spread(authlib.storm)[0] / spread(authlib.alone)[0]:.0f}x that "
            "(one lock hand-off per caller); httpx client, OAuth 2 form adapter route",
        ),
    ]


async def _authlib_storm(callers: int, rounds: int) -> Storms:
    """Row 2c: the storm with Authlib's client, whose lock serialises every caller."""
    from authlib.integrations.httpx_client import AsyncOAuth2Client

    result = Storms()
    async with _app_service() as (base, stats):
        url = base + "/oauth/token"
        async with aiohttp.ClientSession() as http:
            login = base + "/v1/login"
            async with http.post(login, json={"username": USER, "password": PASSWORD}) as r:
                pair = await r.json()
        client = AsyncOAuth2Client(client_id="bench", token_endpoint=url, leeway=60)
        # RFC 6749 has no username; the contract's refresh wants it.
        client.register_compliance_hook(
            "refresh_token_request",
            lambda u, headers, body: (u, headers, f"{body}&username={USER}"),
        )
        client.token = {
            "access_token": pair["accessToken"],
            "refresh_token": pair["refreshToken"],
            "token_type": "Bearer",
            "expires_in": 300,
        }
        try:
            for _ in range(rounds):
                result.alone.append(await timed(client.refresh_token))
                # Inside Authlib's leeway (60 s): every caller sees a token to refresh.
                stale = dict(client.token)
                stale["expires_at"] = int(time.time()) + 30

                def release(stale: dict[str, Any] = stale) -> None:
                    client.token = stale

                before = stats.refreshes
                wall = await storm(
                    callers, lambda: client.ensure_active_token(client.token), release
                )
                result.storm.append(wall)
                result.refreshes.append(stats.refreshes - before)
        finally:
            await client.aclose()
    return result


# -- 3: the refresh round trip ---------------------------------------------------------------


async def _round_trip(quick: bool, latency: float) -> Comparison:
    async with (
        _app_service(latency=latency) as (base, _),
        Session(base) as session,
        aiohttp.ClientSession() as http,
    ):
        await session.login(USER, PASSWORD)
        url = base + "/v1"
        async with http.post(url + "/login", json={"username": USER, "password": PASSWORD}) as r:
            refresh_token = (await r.json())["refreshToken"]

        async def raw(n: int) -> None:
            nonlocal refresh_token
            for _ in range(n):
                body = {
                    "username": USER,
                    "refreshToken": refresh_token,
                    "idempotencyKey": secrets.token_hex(16),
                }
                async with http.post(url + "/refresh", json=body) as resp:
                    resp.raise_for_status()
                    refresh_token = (await resp.json())["refreshToken"]

        number = (10 if quick else 20) if not latency else (3 if quick else 10)
        return await compare_async(
            {"sdk": repeat(session.token_refresh), "raw": raw},
            number=number,
            rounds=7 if quick else 31,
        )


async def round_trip_rows(quick: bool) -> list[Row]:
    """Row 3: ``token_refresh()`` vs a raw aiohttp POST of the same body."""
    cmp = await _round_trip(quick, 0.0)
    ratio = cmp.ratio("sdk", "raw")
    lan = await _round_trip(quick, 0.001)
    lan_ratio = lan.ratio("sdk", "raw")
    return [
        at_most(
            "3",
            "Refresh round trip: token_refresh() vs raw aiohttp POST /v1/refresh",
            ratio,
            1.15,
            cmp.medians("sdk", "raw"),
        ),
        Row(
            "3b",
            "Refresh round trip, the service answering after 1 ms (a LAN's round trip)",
            fmt_ratio(lan_ratio),
            "",
            None,
            lan.medians("sdk", "raw"),
        ),
    ]


# -- 4: the middleware ------------------------------------------------------------------------


async def middleware_rows(quick: bool) -> list[Row]:
    """Row 4: a request through ``session.middleware()`` vs a static header."""
    name = "Middleware per-request overhead vs plain aiohttp with a static header"
    if importlib.util.find_spec("tokensdk.aiohttp") is None:
        return [Row("4", name, "n/a (middleware missing)", "<= 1.05x")]
    async with _service() as svc, Session(svc.url) as session:
        if not hasattr(session, "middleware"):
            return [Row("4", name, "n/a (middleware missing)", "<= 1.05x")]
        await session.login(USER, PASSWORD)
        me = svc.url + "/v1/me"
        header = {"Authorization": f"Bearer {await session.access_token()}"}
        async with (
            aiohttp.ClientSession(headers=header) as plain,
            aiohttp.ClientSession(headers=header, middlewares=(_pass_through,)) as bare,
            aiohttp.ClientSession(middlewares=(session.middleware(),)) as wrapped,
        ):

            async def run_with(http: aiohttp.ClientSession, n: int) -> None:
                for _ in range(n):
                    async with http.get(me) as resp:
                        resp.raise_for_status()
                        await resp.read()

            async def sdk(n: int) -> None:
                await run_with(wrapped, n)

            async def raw(n: int) -> None:
                await run_with(plain, n)

            async def noop(n: int) -> None:
                await run_with(bare, n)

            cmp = await compare_async(
                {"sdk": sdk, "raw": raw, "noop": noop},
                number=20 if quick else 50,
                rounds=7 if quick else 31,
            )
    ratio = cmp.ratio("sdk", "raw")
    vs_noop = cmp.ratio("sdk", "noop")
    return [
        at_most(
            "4",
            name,
            ratio,
            1.05,
            f"middleware {fmt_time(cmp.median('sdk'))}, plain {fmt_time(cmp.median('raw'))}; "
            f"vs a pass-through middleware (aiohttp's own cost of any middleware) "
            f"{fmt_ratio(vs_noop)}",
        )
    ]


async def _pass_through(
    request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
) -> aiohttp.ClientResponse:
    return await handler(request)


# -- 5: MAC headers -------------------------------------------------------------------------


async def mac_rows(quick: bool) -> list[Row]:
    """Row 5: ``build_header`` vs its floor, and headers/s from concurrent tasks."""
    rows = mac_header_rows(quick)
    import tokensdk

    authentication = getattr(tokensdk, "Authentication", None)
    async with _service() as svc, Session(svc.url) as session:
        store = session.token_store
        if authentication is None or not hasattr(store, "generate_header_for_token"):
            return rows + await mac_concurrency_rows(quick)
        await session.login(USER, PASSWORD)
        await store.request_access_token("bench", authentication.possession())

        async def generate() -> object:
            header = store.generate_header_for_token("bench")
            return await header if inspect.isawaitable(header) else header

        token = store.get_local_token("bench")
        assert token is not None
        token_id, secret, now = token.token_id, token.secret, time.time
        # The session's call also reads the clock and looks the token up by name.
        cmp = compare_sync(
            {
                "sdk": lambda: store.generate_header_for_token("bench"),
                "floor": lambda: floor_header(token_id, secret, int(now() * 1000)),
            },
            number=2_000 if quick else 20_000,
            rounds=7 if quick else 25,
        )
        ratio = cmp.ratio("sdk", "floor")
        rows += await mac_concurrency_rows(quick, generate, "generate_header_for_token")
        rows.append(
            at_most(
                "5c",
                "MAC header: session.token_store.generate_header_for_token vs floor + clock read",
                ratio,
                1.3,
                cmp.medians("sdk", "floor"),
            )
        )
        return rows


# -- 8: a fleet of sessions --------------------------------------------------------------------


def _expected_refreshes(sessions: int, lifetime: float, duration: float) -> float:
    """Refreshes the policy predicts (same windows and jitter, other random draws)."""
    policy, rng, count = RefreshPolicy(), random.Random(7), 0
    for _ in range(sessions):
        t = 0.0
        while True:
            t = plan_refresh(lifetime, t + lifetime, policy, rng).refresh_at
            if t > duration:
                break
            count += 1
    return count


async def fleet_rows(quick: bool) -> list[Row]:
    """Row 8: N sessions with 30 s tokens for 2 simulated minutes on a manual clock."""
    n = 100 if quick else 1_000
    ttl, duration, step = 30, 120.0, 0.25
    clock = ManualClock()
    per_second: list[int] = []
    stuck_steps = 0
    me_calls = 0
    real_start = time.perf_counter()
    async with (
        _service(
            clock=clock, access_ttl=ttl, users={f"user{i}": PASSWORD for i in range(n)}
        ) as svc,
        aiohttp.ClientSession() as http,
        contextlib.AsyncExitStack() as stack,
    ):
        sessions = [
            await stack.enter_async_context(
                Session(svc.url, clock=clock, http=http, rng=random.Random(i))
            )
            for i in range(n)
        ]
        async with anyio.create_task_group() as tg:
            for i, s in enumerate(sessions):
                tg.start_soon(s.login, f"user{i}", PASSWORD)
        me = svc.url + "/v1/me"

        async def hit(token: str) -> None:
            async with http.get(me, headers={"Authorization": f"Bearer {token}"}) as resp:
                await resp.read()

        base = svc.stats.refreshes
        last_second = base
        steps = int(duration / step)
        groups = int(10 / step)  # every session calls /v1/me every 10 simulated seconds
        for k in range(1, steps + 1):
            clock.advance(step)
            for _ in range(3):
                await anyio.lowlevel.checkpoint()
            # Let every due background refresh finish before time moves on.
            give_up = time.perf_counter() + 2.0
            while True:
                now = clock.monotonic()
                if all((t := s.next_refresh) is not None and t > now for s in sessions):
                    break
                if time.perf_counter() > give_up:
                    stuck_steps += 1
                    break
                await anyio.sleep(0.001)
            tokens = [await s.access_token() for s in sessions]
            async with anyio.create_task_group() as tg:
                for i in range(k % groups, n, groups):
                    tg.start_soon(hit, tokens[i])
                    me_calls += 1
            if k % int(1 / step) == 0:
                per_second.append(svc.stats.refreshes - last_second)
                last_second = svc.stats.refreshes
        counted = svc.stats.refreshes - base
        expired = svc.stats.expired_bearers
        rejected = svc.stats.rejected_bearers
    expected = _expected_refreshes(n, ttl, duration)
    first = next((i for i, c in enumerate(per_second) if c), 0)
    active = per_second[first:] or [0]
    mean = sum(active) / len(active)
    peak_to_mean = max(active) / mean if mean else float("inf")
    late = per_second[60:] or [0]
    late_mean = sum(late) / len(late)
    late_ratio = max(late) / late_mean if late_mean else float("inf")
    took = time.perf_counter() - real_start
    return [
        Row(
            "8a",
            f"Fleet: {n:,} sessions, 30 s tokens, 2 simulated min: refreshes vs expected",
            f"{counted} vs {expected:.0f} ({counted / expected:.2f}x)",
            "~1.0x",
            abs(counted / expected - 1) <= 0.05,
            f"{me_calls} /v1/me calls; {took:.1f} s real; {stuck_steps} steps timed out",
        ),
        Row(
            "8b",
            "Fleet: expired tokens presented to the service",
            f"{expired} (rejected bearers {rejected})",
            "0",
            expired == 0,
            "",
        ),
        Row(
            "8c",
            "Fleet: peak-to-mean refreshes per simulated second",
            f"{peak_to_mean:.2f} (from the first refresh on); {late_ratio:.2f} in the 2nd minute",
            "<= 2",
            peak_to_mean <= 2,
            f"peak {max(active)}/s, mean {mean:.1f}/s; all sessions log in at the same instant",
        ),
    ]

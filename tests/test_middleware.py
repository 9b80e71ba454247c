"""The aiohttp client middleware against the real service (and a real upstream app)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import anyio
import pytest
from _service import PASSWORDS, service
from aiohttp import web
from aiohttp.test_utils import TestServer

from tokensdk import Authentication, InvalidCredentials, ManualClock, Session
from tokensdk._assets import Ed25519Signer
from tokensdk.server import RunningService
from tokensdk.server._state import token_digest

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def logged_in(svc: RunningService, clock: ManualClock) -> AsyncIterator[Session]:
    async with Session(svc.url, clock=clock) as session:
        await session.login("alice", PASSWORDS["alice"])
        yield session


def forget_on_service(svc: RunningService, session: Session) -> None:
    """Make the service refuse the session's current access token (family stays alive)."""
    creds = session.credentials
    assert creds is not None
    svc.state.access.delete(token_digest(creds.access_token))


@asynccontextmanager
async def upstream(handler: web.Handler) -> AsyncIterator[str]:
    """An upstream API (aiohttp.web) on a free loopback port; yields its URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("/api"))
    finally:
        await server.close()


async def test_bearer_attached(clock: ManualClock) -> None:
    async with service(clock) as svc, logged_in(svc, clock) as session:
        async with (
            aiohttp.ClientSession(middlewares=(session.middleware(),)) as http,
            http.get(svc.url + "/v1/me") as response,
        ):
            assert response.status == 200
            assert (await response.json()) == {"username": "alice"}
        assert svc.stats.rejected_bearers == 0


async def test_explicit_authorization_is_left_alone(clock: ManualClock) -> None:
    seen: list[str | None] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({})

    async with service(clock) as svc, logged_in(svc, clock) as session, upstream(echo) as url:
        async with aiohttp.ClientSession(middlewares=(session.middleware(),)) as http:
            async with http.get(url, headers={"Authorization": "Basic x"}):
                pass
            async with http.get(url):
                pass
        assert seen == ["Basic x", f"Bearer {await session.access_token()}"]


async def test_401_refreshes_once_and_retries(clock: ManualClock) -> None:
    async with service(clock) as svc, logged_in(svc, clock) as session:
        before = session.credentials
        forget_on_service(svc, session)
        async with (
            aiohttp.ClientSession(middlewares=(session.middleware(),)) as http,
            http.get(svc.url + "/v1/me") as response,
        ):
            assert response.status == 200
        assert svc.stats.refreshes == 1
        assert svc.stats.rejected_bearers == 1
        assert session.credentials != before


async def test_second_401_is_returned_not_looped(clock: ManualClock) -> None:
    hits = 0

    async def always_401(request: web.Request) -> web.Response:
        nonlocal hits
        hits += 1
        return web.json_response(
            {"error": "invalid_token", "code": 401, "message": "no"},
            status=401,
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )

    async with service(clock) as svc, logged_in(svc, clock) as session, upstream(always_401) as url:
        async with (
            aiohttp.ClientSession(middlewares=(session.middleware(),)) as http,
            http.get(url) as response,
        ):
            assert response.status == 401
            assert (await response.json())["error"] == "invalid_token"
        assert (hits, svc.stats.refreshes) == (2, 1)


async def test_401_without_invalid_token_challenge_is_not_retried(clock: ManualClock) -> None:
    hits = 0

    async def plain_401(request: web.Request) -> web.Response:
        nonlocal hits
        hits += 1
        return web.json_response({"error": "nope"}, status=401)

    async with service(clock) as svc, logged_in(svc, clock) as session, upstream(plain_401) as url:
        async with (
            aiohttp.ClientSession(middlewares=(session.middleware(),)) as http,
            http.get(url) as response,
        ):
            assert response.status == 401
        assert (hits, svc.stats.refreshes) == (1, 0)


async def test_non_replayable_body_is_not_retried_but_refreshed(clock: ManualClock) -> None:
    bodies: list[bytes] = []

    async def always_401(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        return web.json_response(
            {"error": "invalid_token"},
            status=401,
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )

    async def stream() -> AsyncIterator[bytes]:
        yield b"chunk-1,"
        yield b"chunk-2"

    async with (
        service(clock) as svc,
        logged_in(svc, clock) as session,
        upstream(always_401) as url,
        aiohttp.ClientSession(middlewares=(session.middleware(),)) as http,
    ):
        old = await session.access_token()
        with pytest.raises(InvalidCredentials) as refused:
            await http.post(url, data=stream())
        assert refused.value.error == "invalid_token"
        assert old not in str(refused.value)
        assert bodies == [b"chunk-1,chunk-2"]
        assert svc.stats.refreshes == 1
        assert await session.access_token() != old
        # A bytes body is replayable: sent twice, identical.
        async with http.post(url, data=b"again") as response:
            assert response.status == 401
        assert bodies[1:] == [b"again", b"again"]


async def test_fifty_concurrent_401s_cause_one_refresh(clock: ManualClock) -> None:
    async with service(clock) as svc, logged_in(svc, clock) as session:
        forget_on_service(svc, session)
        statuses: list[int] = []
        async with aiohttp.ClientSession(middlewares=(session.middleware(),)) as http:

            async def one() -> None:
                async with http.get(svc.url + "/v1/me") as response:
                    statuses.append(response.status)

            async with anyio.create_task_group() as tg:
                for _ in range(50):
                    tg.start_soon(one)
        assert statuses == [200] * 50
        assert svc.stats.refreshes == 1


async def test_mac_token_and_time_sync_retry(clock: ManualClock) -> None:
    async with service(clock) as svc, logged_in(svc, clock) as session:
        await session.token_store.request_access_token("pay", Authentication.possession())
        mw = session.middleware(mac_token="pay")
        assert repr(mw) == "TokenMiddleware(mac_token='pay')"
        async with aiohttp.ClientSession() as http:
            async with http.get(svc.url + "/v1/me/token", middlewares=(mw,)) as response:
                assert response.status == 200
                assert (await response.json())["tokenId"]
            # A badly wrong clock offset: refused as too old, synced, retried once.
            session.clock_offset = -3600.0
            async with http.get(svc.url + "/v1/me/token", middlewares=(mw,)) as response:
                assert response.status == 200
            assert session.clock_offset == 0.0
        assert svc.stats.mac_headers_accepted == 2
        assert svc.stats.mac_headers_rejected == 1


async def test_mac_time_error_on_a_stream_body_syncs_and_returns_it(clock: ManualClock) -> None:
    async def too_old(request: web.Request) -> web.Response:
        await request.read()
        body = {"error": "timestamp_too_old", "code": 401, "message": "clock"}
        return web.json_response(body, status=401)

    async def stream() -> AsyncIterator[bytes]:
        yield b"not replayable"

    async with (
        service(clock) as svc,
        logged_in(svc, clock) as session,
        upstream(too_old) as url,
    ):
        await session.token_store.request_access_token("pay", Authentication.possession())
        session.clock_offset = -3600.0
        async with (
            aiohttp.ClientSession(middlewares=(session.middleware(mac_token="pay"),)) as http,
            http.post(url, data=stream()) as response,
        ):
            assert response.status == 401  # returned as is: the body cannot be resent
            assert (await response.json())["error"] == "timestamp_too_old"
        assert session.clock_offset == 0.0  # but the clock was synced for the next one


async def test_asset_token(clock: ManualClock) -> None:
    seen: list[str | None] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({})

    signer = Ed25519Signer.generate()
    async with (
        service(clock, assets={"door-1": signer.public_key_hex}) as svc,
        logged_in(svc, clock) as session,
        upstream(echo) as url,
    ):
        item = await session.access_tokens.request("door-1", signer)
        async with (
            aiohttp.ClientSession(middlewares=(session.middleware(asset_id="door-1"),)) as http,
            http.get(url),
        ):
            pass
        assert seen == [f"Bearer {item.token}"]


async def test_one_mode_only(clock: ManualClock) -> None:
    async with service(clock) as svc, Session(svc.url, clock=clock) as session:
        with pytest.raises(ValueError, match="one of"):
            session.middleware(mac_token="a", asset_id="b")
        assert repr(session.middleware()) == "TokenMiddleware(bearer)"

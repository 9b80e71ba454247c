"""The coordination port: the in-process default, and sessions sharing one store.

Several sessions in one process on one FileStore are members of a fleet as separate
processes are (an flock is per open file, the watch reads the file): these tests
show the seam; tests/test_fleet.py runs real processes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager
from pathlib import Path

import aiohttp
import anyio
import pytest
from _redis import redis_server
from _service import PASSWORDS, call, service

from tokensdk import (
    Authentication,
    EventType,
    FileStore,
    InvalidInput,
    LocalCoordinator,
    ManualClock,
    MemoryStore,
    NotLoggedIn,
    RedisStore,
    Session,
    SessionLost,
    SessionStatus,
    StoreCoordinator,
)
from tokensdk._assets import Ed25519Signer
from tokensdk._coordinator import coordinator_for
from tokensdk.server import RunningService

pytestmark = pytest.mark.anyio


def test_the_store_type_chooses_the_coordinator(tmp_path: Path) -> None:
    memory = MemoryStore()
    assert isinstance(coordinator_for(memory), LocalCoordinator)
    assert not coordinator_for(memory).shared
    shared = coordinator_for(FileStore(tmp_path / "s.json"))
    assert isinstance(shared, StoreCoordinator)
    assert shared.shared
    with pytest.raises(InvalidInput):
        StoreCoordinator(memory)
    with pytest.raises(InvalidInput):
        StoreCoordinator(FileStore(tmp_path / "s.json"), lease=0)
    with pytest.raises(InvalidInput):  # a coordinator of another store
        Session("http://127.0.0.1:1", store=memory, coordinator=LocalCoordinator(MemoryStore()))


async def test_the_in_process_coordinator_keeps_a_plain_store_as_it_was(
    clock: ManualClock,
) -> None:
    store = MemoryStore()
    coordinator = LocalCoordinator(store)
    assert await coordinator.load() == (None, None)
    assert await coordinator.save_if({"a": 1}, None) == 0
    assert await coordinator.load() == ({"a": 1}, 0)
    lease = await coordinator.try_lock()
    assert lease is not None
    assert await coordinator.try_lock() is not None
    await lease.release()
    assert await coordinator.lock_remaining() is None
    async with service(clock) as svc:
        async with Session(svc.url, coordinator=coordinator, clock=clock) as session:
            await session.login("alice", PASSWORDS["alice"])
            await session.token_refresh()
        assert svc.stats.refreshes == 1
        assert store.document is not None


@asynccontextmanager
async def members(
    svc: RunningService, clock: ManualClock, path: Path, count: int
) -> AsyncIterator[list[Session]]:
    async with AsyncExitStack() as stack:
        sessions = [
            await stack.enter_async_context(Session(svc.url, store=FileStore(path), clock=clock))
            for _ in range(count)
        ]
        yield sessions


async def test_members_adopt_a_login_and_refresh_once_per_window(
    clock: ManualClock, tmp_path: Path
) -> None:
    async with (
        service(clock, access_ttl=60) as svc,
        members(svc, clock, tmp_path / "state.json", 3) as (a, b, c),
    ):
        seen: list[SessionStatus] = []
        b.add_change_callback(lambda snapshot: seen.append(snapshot.status))
        async with b.events() as events_b, c.events() as events_c:
            await a.login("alice", PASSWORDS["alice"])
            with anyio.fail_after(10):
                assert (await anext(events_b)).type is EventType.LOGGED_IN
                assert (await anext(events_c)).type is EventType.LOGGED_IN
        token = await a.access_token()
        # Adopted: served from memory, no request (the file is not read on this path).
        assert await b.access_token() == token == await c.access_token()
        await b.changes_delivered()
        assert seen[-1] is SessionStatus.ACTIVE
        for window in range(3):
            clock.advance(59)  # every member's token is inside its mandatory window
            tokens: set[str] = set()

            async def get(member: Session, into: set[str] = tokens) -> None:
                into.add(await member.access_token())

            async with anyio.create_task_group() as tg:
                for member in (a, b, c):
                    for _ in range(5):
                        tg.start_soon(get, member)
            assert len(tokens) == 1, window
            assert token not in tokens, window
            token = tokens.pop()
            assert svc.stats.refreshes == window + 1
        assert svc.stats.refresh_reuses == 0
        assert svc.stats.rejected_bearers == 0


async def test_a_logout_in_one_member_logs_out_every_member(
    clock: ManualClock, tmp_path: Path
) -> None:
    async with (
        service(clock) as svc,
        members(svc, clock, tmp_path / "state.json", 2) as (a, b),
    ):
        async with b.events() as events:
            await a.login("alice", PASSWORDS["alice"])
            with anyio.fail_after(10):
                assert (await anext(events)).type is EventType.LOGGED_IN
            assert await a.logout()
            with anyio.fail_after(10):
                assert (await anext(events)).type is EventType.LOGGED_OUT
        assert b.status is SessionStatus.LOGGED_OUT
        assert b.credentials is None
        assert not b.snapshot.mac_tokens
        with pytest.raises(NotLoggedIn):
            await b.access_token()


async def test_a_member_holding_the_state_writes_it_back_when_the_file_goes(
    clock: ManualClock, tmp_path: Path
) -> None:
    path = tmp_path / "state.json"
    async with service(clock, access_ttl=60) as svc, members(svc, clock, path, 1) as (a,):
        await a.login("alice", PASSWORDS["alice"])
        await a.flush()
        path.unlink()
        clock.advance(59)
        await a.access_token()  # the refresh reloads under the lock: nothing stored
        assert svc.stats.refreshes == 1
        document = await FileStore(path).load()
        assert document is not None
        assert document["status"] == "active"


async def test_a_loss_reaches_every_member_and_one_relogin_serves_the_fleet(
    clock: ManualClock, tmp_path: Path
) -> None:
    relogins: list[Session] = []

    async def relogin(session: Session) -> tuple[str, str]:
        relogins.append(session)
        return "alice", PASSWORDS["alice"]

    path = tmp_path / "state.json"
    async with (
        service(clock, access_ttl=60) as svc,
        Session(svc.url, store=FileStore(path), clock=clock, relogin=relogin) as a,
        Session(svc.url, store=FileStore(path), clock=clock, relogin=relogin) as b,
        aiohttp.ClientSession() as http,
    ):
        async with b.events() as events:
            await a.login("alice", PASSWORDS["alice"])
            with anyio.fail_after(10):
                assert (await anext(events)).type is EventType.LOGGED_IN
        async with b.events() as events:
            await a.token_store.request_access_token("signer", Authentication.possession())
            with anyio.fail_after(10):
                assert (await anext(events)).type is EventType.MAC_TOKEN_ADDED
        assert "signer" in b.snapshot.mac_tokens
        # The family dies on the service (revoked elsewhere): the next refresh is refused.
        status, _, _ = await call(http, svc, "POST", "/v1/logout", token=await a.access_token())
        assert status in (200, 204)
        clock.advance(59)
        tokens = set()
        async with anyio.create_task_group() as tg:
            for member in (a, b, a, b):

                async def get(member: Session = member) -> None:
                    tokens.add(await member.access_token())

                tg.start_soon(get)
        assert len(relogins) == 1  # once, fleet-wide, under the lock
        assert len(tokens) == 1
        assert svc.stats.logins == 2
        for member in (a, b):
            assert member.status is SessionStatus.ACTIVE
            assert not member.snapshot.mac_tokens  # they belonged to the lost family


async def test_a_loss_without_relogin_moves_every_member_to_needs_login(
    clock: ManualClock, tmp_path: Path
) -> None:
    path = tmp_path / "state.json"
    async with (
        service(clock, access_ttl=60) as svc,
        members(svc, clock, path, 2) as (a, b),
        aiohttp.ClientSession() as http,
    ):
        async with b.events() as events:
            await a.login("alice", PASSWORDS["alice"])
            with anyio.fail_after(10):
                assert (await anext(events)).type is EventType.LOGGED_IN
            await call(http, svc, "POST", "/v1/logout", token=await a.access_token())
            clock.advance(59)
            with pytest.raises(SessionLost):
                await a.access_token()
            with anyio.fail_after(10):
                assert (await anext(events)).type is EventType.SESSION_LOST
        assert b.status is SessionStatus.NEEDS_LOGIN
        with pytest.raises(SessionLost):
            await b.access_token()
        assert svc.stats.refreshes == 0


async def test_members_asking_for_one_mac_token_share_one_creation(
    clock: ManualClock, tmp_path: Path
) -> None:
    async with (
        service(clock, access_ttl=60) as svc,
        members(svc, clock, tmp_path / "state.json", 3) as sessions,
    ):
        async with sessions[1].events() as events_1, sessions[2].events() as events_2:
            await sessions[0].login("alice", PASSWORDS["alice"])
            with anyio.fail_after(10):
                assert (await anext(events_1)).type is EventType.LOGGED_IN
                assert (await anext(events_2)).type is EventType.LOGGED_IN
        found: list[str] = []

        async def ask(member: Session, into: list[str] = found) -> None:
            token = await member.token_store.request_access_token(
                "signer", Authentication.possession()
            )
            into.append(token.token_id)

        async with anyio.create_task_group() as tg:
            for member in sessions * 2:
                tg.start_soon(ask, member)
        assert svc.stats.mac_tokens_created == 1
        assert len(set(found)) == 1
        # A member that needs a refresh inside the block refreshes under the lock it
        # holds (it would otherwise wait for itself).
        clock.advance(59)
        async with sessions[0].events() as events:
            token = await sessions[2].token_store.request_access_token(
                "other", Authentication.possession()
            )
            with anyio.fail_after(10):
                while (await anext(events)).type is not EventType.MAC_TOKEN_ADDED:
                    pass
        assert svc.stats.mac_tokens_created == 2
        assert svc.stats.refreshes == 1
        assert sessions[0].snapshot.mac_tokens["other"].token_id == token.token_id


@pytest.mark.parametrize("kind", ["file", "redis"])
async def test_members_asking_for_one_asset_token_share_one_proof_of_key(
    clock: ManualClock, tmp_path: Path, kind: str
) -> None:
    signer = Ed25519Signer.from_seed(bytes(range(32)))
    with ExitStack() as servers:
        async with AsyncExitStack() as stack:
            if kind == "redis":
                url = servers.enter_context(redis_server(tmp_path / "redis")).url
                stores = [RedisStore(url, name="assets") for _ in range(3)]
                for store in stores:
                    stack.push_async_callback(store.aclose)
            else:
                stores = [FileStore(tmp_path / "state.json") for _ in range(3)]
            svc = await stack.enter_async_context(
                service(clock, assets={"sensor-1": signer.public_key_hex})
            )
            sessions = [
                await stack.enter_async_context(Session(svc.url, store=store, clock=clock))
                for store in stores
            ]
            streams = [await stack.enter_async_context(s.events()) for s in sessions]
            found: list[str] = []

            async def ask(member: Session, into: list[str] = found) -> None:
                into.append((await member.access_tokens.request("sensor-1", signer)).token)

            async with anyio.create_task_group() as tg:
                for member in sessions:
                    tg.start_soon(ask, member)
            assert svc.stats.asset_tokens_issued == 1
            assert len(set(found)) == 1
            for member, events in zip(sessions, streams, strict=True):
                assert [t.token for t in member.access_tokens] == found[:1]
                with anyio.fail_after(10):  # the change fires in every member
                    event = await anext(events)
                assert (event.type, event.detail) == (EventType.ACCESS_TOKEN_ADDED, "sensor-1")
            # Asking again for a token the member holds still gets a new one (as in one
            # process); the others adopt it. (A second later: a token of the same second
            # would be the same text.)
            clock.advance(1)
            fresh = await sessions[2].access_tokens.request("sensor-1", signer)
            assert svc.stats.asset_tokens_issued == 2
            with anyio.fail_after(10):
                event = await anext(streams[0])
            assert event.type is EventType.ACCESS_TOKEN_REPLACED
            assert sessions[0].access_tokens.find("sensor-1") == fresh


async def test_an_asset_token_is_still_obtained_while_redis_is_down(
    clock: ManualClock, tmp_path: Path
) -> None:
    # Sharing only saves calls: a member that cannot take the fleet's lock asks alone.
    signer = Ed25519Signer.from_seed(bytes(range(32)))
    with redis_server(tmp_path / "redis") as redis:
        store = RedisStore(redis.url, name="assets-down")
        async with AsyncExitStack() as stack:
            stack.push_async_callback(store.aclose)
            svc = await stack.enter_async_context(
                service(clock, assets={"sensor-1": signer.public_key_hex})
            )
            member = await stack.enter_async_context(Session(svc.url, store=store, clock=clock))
            redis.kill()
            item = await member.access_tokens.request("sensor-1", signer)
            assert member.access_tokens.find("sensor-1") == item
            assert svc.stats.asset_tokens_issued == 1

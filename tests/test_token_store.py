"""The named MAC token store against the real reference service on a loopback port."""

from __future__ import annotations

import base64
import os
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from _proxy import FaultProxy
from _service import PASSWORDS, service
from aiohttp import web
from keyrings.alt.file import PlaintextKeyring

from tokensdk import (
    Authentication,
    EventType,
    FactorMismatch,
    FileStore,
    InvalidCredentials,
    InvalidInput,
    KeyringStore,
    MacToken,
    ManualClock,
    MemoryStore,
    NotFound,
    NotLoggedIn,
    ProtocolError,
    RetryConfig,
    Session,
    SessionClosed,
    SessionLost,
    SessionStatus,
    StateStore,
    UnknownMacToken,
)
from tokensdk._token_store import TIME_ERRORS
from tokensdk.mac import HEADER_NAME, build_header, parse_header
from tokensdk.server import RunningService

pytestmark = pytest.mark.anyio

POSSESSION = Authentication.possession()
FAST_RETRY = RetryConfig(initial=0.1, maximum=0.5, jitter=0.0)


@asynccontextmanager
async def session_for(
    url: str, clock: ManualClock, user: str | None = "alice", **kwargs: Any
) -> AsyncIterator[Session]:
    """An open session; logged in as ``user`` with its first clock sync done."""
    kwargs.setdefault("retry", FAST_RETRY)
    async with Session(url, clock=clock, rng=random.Random(1), **kwargs) as session:
        if user is not None:
            async with session.events() as events:
                await session.login(user, PASSWORDS[user])
                # The background clock sync after login must not race the test's offsets.
                async for event in events:
                    if event.type is EventType.CLOCK_SYNCED:
                        break
        yield session


async def me_token(url: str, value: str) -> tuple[int, Any]:
    """``GET /v1/me/token`` with an ``X-PowerAuth-Token`` header; (status, body)."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(url + "/v1/me/token", headers={HEADER_NAME: value}) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


def accepted(status_body: tuple[int, Any]) -> dict[str, Any]:
    status, body = status_body
    assert status == 200, body
    assert isinstance(body, dict)
    return body


def refused(status_body: tuple[int, Any]) -> str:
    status, body = status_body
    assert status == 401, body
    return str(body["error"])


def fake_token(secret_bytes: int = 16, token_id: str | None = None) -> dict[str, str]:
    return {
        "tokenId": token_id or str(uuid.uuid4()),
        "tokenSecret": base64.b64encode(os.urandom(secret_bytes)).decode(),
    }


def held(gate: anyio.Event, status: int = 200, body: Any = None) -> Any:
    """A proxy fault that answers only once ``gate`` is set."""

    async def fault(request: web.Request) -> web.StreamResponse:
        await gate.wait()
        if body is None:
            return web.Response(status=status)
        return web.json_response(body, status=status)

    return fault


@asynccontextmanager
async def proxied(svc: RunningService, *paths: str) -> AsyncIterator[FaultProxy]:
    proxy = FaultProxy(svc.url)
    proxy.only_paths = set(paths)
    async with proxy.running():
        yield proxy


# -- creation and use -------------------------------------------------------------------


async def test_possession_token_signs_headers_the_service_accepts(clock: ManualClock) -> None:
    async with service(clock) as svc, session_for(svc.url, clock) as session:
        store = session.token_store
        assert not store.has_local_token("t")
        assert store.get_local_token("t") is None
        async with session.events() as events:
            token = await store.request_access_token("t", POSSESSION)
            added = [e async for e in _until(events, EventType.MAC_TOKEN_ADDED)]
        assert [e.type for e in added][-1:] == [EventType.MAC_TOKEN_ADDED]
        assert added[-1].detail == "t"

        assert (token.name, token.factors, len(token.secret)) == ("t", ("possession",), 16)
        assert store.has_local_token("t")
        assert token == store.get_local_token("t")
        assert {"t": token} == dict(session.snapshot.mac_tokens)

        name, value = store.generate_header_for_token("t")
        parsed = parse_header(value)
        assert (HEADER_NAME, "3.3", token.token_id) == (name, parsed.version, parsed.token_id)
        assert int(clock.time() * 1000) == parsed.timestamp_ms
        body = accepted(await me_token(svc.url, value))
        assert {"username": "alice", "tokenId": token.token_id, "factors": ["possession"]} == body
        assert refused(await me_token(svc.url, value)) == "replayed"

        # Already held with the same factors: returned without a network call.
        assert token is await store.request_access_token("t", POSSESSION)
        assert svc.stats.mac_tokens_created == 1
        # Every header is fresh (new nonce), so many in a row are all accepted.
        for _ in range(3):
            accepted(await me_token(svc.url, store.generate_header_for_token("t")[1]))


async def _until(events: Any, kind: EventType) -> AsyncIterator[Any]:
    async for event in events:
        yield event
        if event.type is kind:
            return


async def test_knowledge_factor_and_wrong_password(clock: ManualClock) -> None:
    async with service(clock) as svc, session_for(svc.url, clock) as session:
        store = session.token_store
        with pytest.raises(InvalidCredentials):
            await store.request_access_token("k", Authentication.possession_knowledge("nope"))
        assert not store.has_local_token("k")
        assert dict(session.snapshot.mac_tokens) == {}
        assert svc.stats.mac_tokens_created == 0
        assert SessionStatus.ACTIVE is session.status  # a wrong password does not end it

        auth = Authentication.possession_knowledge(PASSWORDS["alice"])
        token = await store.request_access_token("k", auth)
        assert ("possession", "knowledge") == token.factors == auth.factors
        body = accepted(await me_token(svc.url, store.generate_header_for_token("k")[1]))
        assert body["factors"] == ["possession", "knowledge"]
        assert svc.stats.mac_tokens_created == 1


async def test_local_factor_mismatch(clock: ManualClock) -> None:
    async with service(clock) as svc, session_for(svc.url, clock) as session:
        store = session.token_store
        token = await store.request_access_token("t", POSSESSION)
        with pytest.raises(FactorMismatch):
            await store.request_access_token(
                "t", Authentication.possession_knowledge(PASSWORDS["alice"])
            )
        assert token == store.get_local_token("t")
        assert svc.stats.mac_tokens_created == 1


async def test_concurrent_requests_share_one_creation(clock: ManualClock) -> None:
    async with service(clock) as svc, session_for(svc.url, clock) as session:
        store = session.token_store
        results: list[MacToken] = []
        mismatches: list[bool] = []

        async def request() -> None:
            results.append(await store.request_access_token("t", POSSESSION))

        async def other_factors() -> None:
            try:
                await store.request_access_token(
                    "t", Authentication.possession_knowledge(PASSWORDS["alice"])
                )
            except FactorMismatch:
                # Refused while the creation was still under way, not after it.
                mismatches.append(store.has_local_token("t"))

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(request)
            tg.start_soon(other_factors)

        assert svc.stats.mac_tokens_created == 1
        assert len(results) == 50
        assert {results[0]} == set(results)
        assert mismatches == [False]
        accepted(await me_token(svc.url, store.generate_header_for_token("t")[1]))


async def test_a_cancelled_caller_does_not_cancel_the_others(clock: ManualClock) -> None:
    async with service(clock) as svc, session_for(svc.url, clock) as session:
        proxy_gate = anyio.Event()
        async with proxied(svc, "/v1/tokens/create") as proxy:
            proxy.fail_next(1, held(proxy_gate, body=fake_token()))
            async with session_for(proxy.url, clock) as via_proxy:
                store = via_proxy.token_store
                got: list[MacToken] = []

                async def patient() -> None:
                    got.append(await store.request_access_token("t", POSSESSION))

                async with anyio.create_task_group() as tg:
                    with anyio.CancelScope() as impatient:
                        tg.start_soon(patient)
                        await proxy.wait_for("/v1/tokens/create")
                        impatient.cancel()
                        await store.request_access_token("t", POSSESSION)
                    assert impatient.cancelled_caught
                    proxy_gate.set()
                assert len(got) == 1
                assert got[0] == store.get_local_token("t")
                assert proxy.seen["/v1/tokens/create"] == 1
        assert session.status is SessionStatus.ACTIVE


@pytest.mark.parametrize(
    "body",
    [
        fake_token(secret_bytes=15),
        fake_token(secret_bytes=17),
        {"tokenId": str(uuid.uuid4()), "tokenSecret": "not base64!"},
        fake_token(token_id="not-a-uuid"),
        fake_token(token_id=str(uuid.uuid4()).upper()),
        {"tokenId": str(uuid.uuid4())},
        {"tokenId": 7, "tokenSecret": base64.b64encode(os.urandom(16)).decode()},
    ],
    ids=["short", "long", "bad-b64", "bad-id", "upper-id", "no-secret", "int-id"],
)
async def test_off_contract_creation_answer(clock: ManualClock, body: Any) -> None:
    async with service(clock) as svc, proxied(svc, "/v1/tokens/create") as proxy:
        gate = anyio.Event()
        gate.set()
        proxy.fail_next(1, held(gate, body=body))
        async with session_for(proxy.url, clock) as session:
            with pytest.raises(ProtocolError) as info:
                await session.token_store.request_access_token("t", POSSESSION)
            assert not session.token_store.has_local_token("t")
            if "tokenSecret" in body:
                assert body["tokenSecret"] not in str(info.value)


# -- the timestamp window and the clock offset -------------------------------------------


@pytest.mark.parametrize(
    ("offset", "error"),
    [(-601.0, "timestamp_too_old"), (121.0, "timestamp_in_future")],
)
async def test_timestamp_outside_the_window(clock: ManualClock, offset: float, error: str) -> None:
    async with service(clock) as svc, session_for(svc.url, clock) as session:
        store = session.token_store
        await store.request_access_token("t", POSSESSION)
        session.clock_offset = offset  # a stale estimate
        value = store.generate_header_for_token("t")[1]
        assert error == refused(await me_token(svc.url, value))
        assert error in TIME_ERRORS
        # Just inside the window is still fine.
        session.clock_offset = -599.0 if offset < 0 else 119.0
        accepted(await me_token(svc.url, store.generate_header_for_token("t")[1]))
        # The helper for a time error re-syncs and signs again.
        accepted(await me_token(svc.url, (await store.header_after_time_error("t"))[1]))
        assert session.clock_offset == 0.0


async def test_a_client_clock_an_hour_off_still_signs_accepted_headers() -> None:
    service_clock = ManualClock()
    sdk_clock = ManualClock(wall=service_clock.time() + 3600)
    async with service(service_clock) as svc, session_for(svc.url, sdk_clock) as session:
        store = session.token_store
        # The sync after login already found the offset.
        assert session.clock_offset == -3600.0
        await store.request_access_token("t", POSSESSION)
        accepted(await me_token(svc.url, store.generate_header_for_token("t")[1]))

        # The user moves the system clock two hours back: the estimate is stale.
        sdk_clock.jump_wall(-7200)
        value = store.generate_header_for_token("t")[1]
        assert refused(await me_token(svc.url, value)) == "timestamp_too_old"
        assert await store.sync_time() == 3600.0
        accepted(await me_token(svc.url, store.generate_header_for_token("t")[1]))

        # And forward again, this time through the helper for time errors.
        sdk_clock.jump_wall(7200)
        value = store.generate_header_for_token("t")[1]
        assert refused(await me_token(svc.url, value)) == "timestamp_in_future"
        accepted(await me_token(svc.url, (await store.header_after_time_error("t"))[1]))
        assert session.clock_offset == -3600.0


async def test_resuming_a_saved_session_syncs_the_clock_too() -> None:
    service_clock = ManualClock()
    sdk_clock = ManualClock(wall=service_clock.time() + 3600)
    state = MemoryStore()
    async with service(service_clock) as svc:
        async with session_for(svc.url, sdk_clock, store=state) as first:
            await first.token_store.request_access_token("t", POSSESSION)
        # A restart: the offset is not saved, and no password is typed this time.
        async with session_for(svc.url, sdk_clock, user=None, store=state) as second:
            assert second.clock_offset == 0.0
            # The deadline only keeps a regression from hanging the suite.
            with anyio.fail_after(30):
                async with second.events() as events:
                    await second.login_with_token()
                    async for event in events:
                        if event.type is EventType.CLOCK_SYNCED:
                            break
            assert second.clock_offset == -3600.0
            value = second.token_store.generate_header_for_token("t")[1]
            accepted(await me_token(svc.url, value))


# -- sessions ---------------------------------------------------------------------------


async def test_same_name_in_two_sessions_gives_two_tokens(clock: ManualClock) -> None:
    async with (
        service(clock) as svc,
        session_for(svc.url, clock) as first,
        session_for(svc.url, clock) as second,
    ):
        a = await first.token_store.request_access_token("t", POSSESSION)
        b = await second.token_store.request_access_token("t", POSSESSION)
        assert a.token_id != b.token_id
        assert a.secret != b.secret
        assert svc.stats.mac_tokens_created == 2
        for store, token in ((first.token_store, a), (second.token_store, b)):
            body = accepted(await me_token(svc.url, store.generate_header_for_token("t")[1]))
            assert token.token_id == body["tokenId"]


async def test_logout_removes_tokens_locally_and_on_the_service(clock: ManualClock) -> None:
    async with service(clock) as svc, session_for(svc.url, clock) as session:
        store = session.token_store
        await store.request_access_token("a", POSSESSION)
        await store.request_access_token("b", POSSESSION)
        headers = [store.generate_header_for_token(n)[1] for n in ("a", "b")]

        await session.logout()

        assert not store.has_local_token("a")
        assert store.get_local_token("b") is None
        assert dict(session.snapshot.mac_tokens) == {}
        with pytest.raises(UnknownMacToken):
            store.generate_header_for_token("a")
        for value in headers:
            assert refused(await me_token(svc.url, value)) == "token_invalid"
        with pytest.raises(NotLoggedIn):
            await store.request_access_token("a", POSSESSION)


async def test_a_new_login_forgets_the_tokens_of_the_previous_family(clock: ManualClock) -> None:
    async with service(clock) as svc, session_for(svc.url, clock) as session:
        store = session.token_store
        old = await store.request_access_token("t", POSSESSION)
        await session.login("alice", PASSWORDS["alice"])  # a new token family
        assert not store.has_local_token("t")
        new = await store.request_access_token("t", POSSESSION)
        assert new.token_id != old.token_id


async def test_a_creation_pending_at_logout_fails_and_is_forgotten(clock: ManualClock) -> None:
    async with service(clock) as svc, proxied(svc, "/v1/tokens/create") as proxy:
        gate = anyio.Event()
        proxy.fail_next(1, held(gate, body=fake_token()))
        async with session_for(proxy.url, clock) as session:
            store = session.token_store
            async with anyio.create_task_group() as tg:

                async def logout_when_sent() -> None:
                    await proxy.wait_for("/v1/tokens/create")
                    await session.logout()

                tg.start_soon(logout_when_sent)
                try:
                    # The waiter is released by the logout, not by the (held) answer;
                    # the deadline only keeps a broken store from hanging the suite.
                    with anyio.fail_after(30), pytest.raises(SessionLost) as info:
                        await store.request_access_token("t", POSSESSION)
                finally:
                    gate.set()
                assert info.value.reason == "logged_out"
                assert "creating=[]" in repr(store)
            assert not store.has_local_token("t")
            assert SessionStatus.LOGGED_OUT is session.status


async def test_a_token_arriving_after_the_session_was_lost_is_not_stored(
    clock: ManualClock,
) -> None:
    async with service(clock) as svc, proxied(svc, "/v1/tokens/create", "/v1/logout") as proxy:
        create_gate, logout_gate = anyio.Event(), anyio.Event()
        proxy.fail_next(1, held(create_gate, body=fake_token()))
        proxy.fail_next(1, held(logout_gate, status=204))
        async with session_for(proxy.url, clock) as session:
            store = session.token_store
            async with anyio.create_task_group() as tg:

                async def lose_while_creating() -> None:
                    await proxy.wait_for("/v1/tokens/create")
                    tg.start_soon(session.logout)
                    await proxy.wait_for("/v1/logout")
                    # The logout is under way (the activation is gone) but not done:
                    # now the token arrives.
                    create_gate.set()

                tg.start_soon(lose_while_creating)
                try:
                    with pytest.raises(SessionLost):
                        await store.request_access_token("t", POSSESSION)
                    assert not store.has_local_token("t")
                finally:
                    logout_gate.set()
            assert dict(session.snapshot.mac_tokens) == {}
            assert SessionStatus.LOGGED_OUT is session.status


# -- removal ----------------------------------------------------------------------------


async def test_remove_access_token(clock: ManualClock) -> None:
    async with service(clock) as svc, session_for(svc.url, clock) as session:
        store = session.token_store
        await store.request_access_token("t", POSSESSION)
        value = store.generate_header_for_token("t")[1]
        async with session.events() as events:
            await store.remove_access_token("t")
            removed = [e async for e in _until(events, EventType.MAC_TOKEN_REMOVED)]
        assert removed[-1].detail == "t"
        assert not store.has_local_token("t")
        assert refused(await me_token(svc.url, value)) == "token_invalid"
        with pytest.raises(UnknownMacToken):
            await store.remove_access_token("t")

        # The service forgot it already (404 unknown_token): removed locally all the same.
        token = await store.request_access_token("u", POSSESSION)
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                svc.url + "/v1/tokens/remove",
                json={"tokenId": token.token_id},
                headers={"Authorization": f"Bearer {await session.access_token()}"},
            ) as resp,
        ):
            assert resp.status == 200
        await store.remove_access_token("u")
        assert not store.has_local_token("u")


async def test_remove_access_token_keeps_the_token_when_the_service_fails(
    clock: ManualClock,
) -> None:
    async with service(clock) as svc, proxied(svc, "/v1/tokens/remove") as proxy:
        other = {"error": "unknown_user", "code": 404, "message": "no"}
        gate = anyio.Event()
        gate.set()
        proxy.fail_next(1, held(gate, status=404, body=other))
        async with session_for(proxy.url, clock) as session:
            store = session.token_store
            token = await store.request_access_token("t", POSSESSION)
            with pytest.raises(NotFound) as info:
                await store.remove_access_token("t")
            assert info.value.error == "unknown_user"
            assert token == store.get_local_token("t")
            accepted(await me_token(svc.url, store.generate_header_for_token("t")[1]))
            await store.remove_access_token("t")  # the next try goes through
            assert not store.has_local_token("t")


async def test_remove_local_tokens(clock: ManualClock) -> None:
    async with service(clock) as svc, session_for(svc.url, clock) as session:
        store = session.token_store
        for name in ("a", "b", "c"):
            await store.request_access_token(name, POSSESSION)
        a_token = store.get_local_token("a")
        assert a_token is not None
        async with session.events() as events:
            assert store.remove_local_token("a")
            assert not store.remove_local_token("a")
            assert sorted(session.snapshot.mac_tokens) == ["b", "c"]
            store.remove_all_local_tokens()
            store.remove_all_local_tokens()  # nothing left: no event
            seen = [e async for e in _take(events, 3)]
        assert [(EventType.MAC_TOKEN_REMOVED, n) for n in ("a", "b", "c")] == [
            (e.type, e.detail) for e in seen
        ]
        assert dict(session.snapshot.mac_tokens) == {}
        # Only forgotten locally: the service still knows the token.
        header = build_header(a_token.token_id, a_token.secret, int(clock.time() * 1000))
        accepted(await me_token(svc.url, header))
        # A new request creates a new token.
        assert a_token.token_id != (await store.request_access_token("a", POSSESSION)).token_id


@pytest.mark.parametrize("remove_all", [False, True])
async def test_removing_a_token_being_created_abandons_the_creation(
    clock: ManualClock, remove_all: bool
) -> None:
    async with service(clock) as svc, proxied(svc, "/v1/tokens/create") as proxy:
        gate = anyio.Event()
        late = fake_token()
        proxy.fail_next(1, held(gate, body=late))
        async with session_for(proxy.url, clock) as session:
            store = session.token_store
            errors: list[BaseException] = []

            async def request() -> None:
                try:
                    await store.request_access_token("t", POSSESSION)
                except UnknownMacToken as exc:
                    errors.append(exc)

            # The deadline only keeps a regression from hanging the suite.
            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(request)
                    tg.start_soon(request)
                    await proxy.wait_for("/v1/tokens/create")
                    if remove_all:
                        store.remove_all_local_tokens()
                    else:
                        assert store.remove_local_token("t")  # a creation under way counts
            assert [type(e) for e in errors] == [UnknownMacToken, UnknownMacToken]
            assert "removed while it was being created" in str(errors[0])
            # A new request creates a new token; the abandoned one, arriving now, is
            # not stored over it.
            fresh = await store.request_access_token("t", POSSESSION)
            gate.set()
            await anyio.wait_all_tasks_blocked()
            assert fresh.token_id != late["tokenId"]
            assert store.get_local_token("t") == fresh
            assert "creating=[]" in repr(store)


async def _take(events: Any, count: int) -> AsyncIterator[Any]:
    async for event in events:
        if event.type in (EventType.MAC_TOKEN_ADDED, EventType.MAC_TOKEN_REMOVED):
            yield event
            count -= 1
            if count == 0:
                return


# -- persistence ------------------------------------------------------------------------


@pytest.fixture(params=["file", "keyring"])
def state_store(request: pytest.FixtureRequest, tmp_path: Path) -> StateStore:
    if request.param == "file":
        return FileStore(tmp_path / "state" / "session.json")
    backend = PlaintextKeyring()
    backend.file_path = str(tmp_path / "keyring.cfg")
    return KeyringStore("alice@test", backend=backend)


async def test_tokens_survive_a_restart(
    clock: ManualClock, state_store: StateStore, tmp_path: Path
) -> None:
    async with service(clock) as svc:
        async with session_for(svc.url, clock, store=state_store) as session:
            token = await session.token_store.request_access_token("t", POSSESSION)
            await session.flush()
        if isinstance(state_store, FileStore):
            assert (tmp_path / "state" / "session.json").stat().st_mode & 0o777 == 0o600

        async with session_for(svc.url, clock, user=None, store=state_store) as restarted:
            store = restarted.token_store
            assert SessionStatus.ACTIVE is restarted.status
            assert token == store.get_local_token("t")
            accepted(await me_token(svc.url, store.generate_header_for_token("t")[1]))
            assert token == await store.request_access_token("t", POSSESSION)
            assert svc.stats.mac_tokens_created == 1


# -- input, lifecycle, secrets ----------------------------------------------------------


async def test_bad_input_and_closed_session(clock: ManualClock) -> None:
    with pytest.raises(InvalidInput):
        Authentication.possession_knowledge("")
    session = Session("http://127.0.0.1:9", clock=clock)
    with pytest.raises(SessionClosed):
        await session.token_store.request_access_token("t", POSSESSION)
    async with service(clock) as svc, session_for(svc.url, clock, user=None) as session:
        store = session.token_store
        for name in ("", "x" * 257, 7):
            with pytest.raises(InvalidInput):
                await store.request_access_token(name, POSSESSION)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput):
            await store.request_access_token("t", "possession")  # type: ignore[arg-type]
        with pytest.raises(NotLoggedIn):
            await store.request_access_token("t", POSSESSION)
        with pytest.raises(UnknownMacToken):
            store.generate_header_for_token("t")
        with pytest.raises(LookupError):  # UnknownMacToken is a LookupError
            await store.header_after_time_error("t")


async def test_secrets_never_in_reprs(clock: ManualClock) -> None:
    password = PASSWORDS["alice"]
    auth = Authentication.possession_knowledge(password)
    assert auth.factors == ("possession", "knowledge")
    assert POSSESSION.factors == ("possession",)
    assert repr(POSSESSION) == "Authentication(factors=('possession',))"
    assert password not in repr(auth)
    assert password not in str(auth)
    async with service(clock) as svc, session_for(svc.url, clock) as session:
        store = session.token_store
        token = await store.request_access_token("t", auth)
        texts = [repr(token), str(token), repr(store), str(store), repr(session.snapshot)]
        assert repr(store) == "MacTokenStore(tokens=['t'], creating=[])"
        for secret in (
            repr(token.secret),
            token.secret.hex(),
            base64.b64encode(token.secret).decode(),
            password,
        ):
            for text in texts:
                assert secret not in text


async def test_a_snapshot_cannot_be_changed_by_whoever_receives_it(clock: ManualClock) -> None:
    seen: list[Any] = []
    async with (
        service(clock) as svc,
        session_for(svc.url, clock, on_change=seen.append) as session,
    ):
        await session.token_store.request_access_token("t", POSSESSION)
        await session.changes_delivered()
        snapshot = seen[-1]
        with pytest.raises(TypeError):
            snapshot.mac_tokens["t"] = None
        with pytest.raises(TypeError):
            del snapshot.mac_tokens["t"]
        assert session.token_store.has_local_token("t")

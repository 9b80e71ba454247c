"""The Session against the real reference service on a loopback port, with a moved clock."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import anyio.lowlevel
import attrs
import pytest
from _proxy import FaultProxy
from _service import PASSWORDS, service
from conftest import autojump

import tokensdk
from tokensdk import (
    AccountFrozen,
    EventType,
    InvalidCredentials,
    InvalidInput,
    ManualClock,
    MemoryStore,
    NotLoggedIn,
    RateLimited,
    RetryConfig,
    Session,
    SessionClosed,
    SessionLost,
    SessionStatus,
    one_time_key_answer,
)
from tokensdk.server import RunningService
from tokensdk.stores import read_state_file

pytestmark = pytest.mark.anyio

FAST_RETRY = RetryConfig(initial=0.1, maximum=0.5, jitter=0.0)


@asynccontextmanager
async def session_for(
    svc: RunningService | FaultProxy, clock: ManualClock, **kwargs: Any
) -> AsyncIterator[Session]:
    kwargs.setdefault("retry", FAST_RETRY)
    async with Session(svc.url, clock=clock, rng=random.Random(1), **kwargs) as session:
        yield session


async def me(svc: RunningService, token: str) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.get(svc.url + "/v1/me", headers={"Authorization": f"Bearer {token}"}) as resp,
    ):
        return resp.status


async def next_event(events: tokensdk.EventStream, kind: EventType) -> tokensdk.Event:
    async for event in events:
        if event.type is kind:
            return event
    raise AssertionError(f"stream ended before {kind}")


async def test_login_gives_a_token_the_service_accepts(clock: ManualClock) -> None:
    async with service(clock) as svc, session_for(svc, clock) as session:
        await session.login("alice", PASSWORDS["alice"])

        token = await session.access_token()

        assert session.status is SessionStatus.ACTIVE
        assert session.username == "alice"
        assert await me(svc, token) == 200
        assert token not in repr(session.credentials)
        assert token not in repr(session.snapshot)


async def test_wrong_password_frozen_and_rate_limited(clock: ManualClock) -> None:
    async with (
        service(clock, frozen_users=frozenset({"bob"}), login_rate_limit=3) as svc,
        session_for(svc, clock) as session,
    ):
        with pytest.raises(InvalidCredentials) as wrong:
            await session.login("alice", "not-the-password")
        assert "not-the-password" not in str(wrong.value)
        with pytest.raises(AccountFrozen):
            await session.login("bob", PASSWORDS["bob"])
        for _ in range(3):
            with pytest.raises((InvalidCredentials, RateLimited)):
                await session.login("alice", "nope")
        with pytest.raises(RateLimited) as limited:
            await session.login("alice", "nope")
        assert limited.value.retry_after >= 1
        assert session.status is SessionStatus.LOGGED_OUT


async def test_bad_input_is_refused_before_any_request(clock: ManualClock) -> None:
    async with service(clock) as svc, session_for(svc, clock) as session:
        with pytest.raises(InvalidInput):
            await session.login("", "x")
        with pytest.raises(NotLoggedIn):
            await session.access_token()
        assert svc.stats.requests_by_path["/v1/login"] == 0
    with pytest.raises(InvalidInput):
        Session("ftp://example")


async def test_one_time_key_login_with_backend_answer(clock: ManualClock) -> None:
    async with service(clock, realm="test-realm") as svc, session_for(svc, clock) as session:
        keys: list[str] = []

        async def backend(key: str) -> str:  # the app's own backend knows the password
            keys.append(key)
            return one_time_key_answer(key, "alice", "test-realm", PASSWORDS["alice"])

        await session.login_with_one_time_key("alice", backend)

        assert len(keys) == 1
        assert await me(svc, await session.access_token()) == 200
        with pytest.raises(InvalidCredentials):
            await session.login_with_one_time_key("alice", lambda key: "0" * 64)


async def test_background_refresh_before_expiry(clock: ManualClock) -> None:
    async with service(clock, access_ttl=60) as svc, session_for(svc, clock) as session:
        events = session.events()
        await session.login("alice", PASSWORDS["alice"])
        first = await session.access_token()
        due = session.next_refresh
        assert due is not None
        assert clock.monotonic() + 24 <= due <= clock.monotonic() + 46.5

        clock.advance(due - clock.monotonic())
        await next_event(events, EventType.REFRESHED)

        second = await session.access_token()
        assert second != first
        assert svc.stats.refreshes == 1
        assert await me(svc, second) == 200


async def test_short_lifespans_never_present_an_expired_token(clock: ManualClock) -> None:
    async with service(clock, access_ttl=2) as svc, session_for(svc, clock) as session:
        await session.login("alice", PASSWORDS["alice"])
        statuses = []
        for _ in range(400):  # 20 s of a 2 s token, in 50 ms steps
            clock.advance(0.05)
            statuses.append(await me(svc, await session.access_token()))

        assert set(statuses) == {200}
        assert svc.stats.rejected_bearers == 0
        assert svc.stats.expired_bearers == 0
        # one refresh per 0.8-1.55 s of a 2 s token over 20 s
        assert 12 <= svc.stats.refreshes <= 26


async def test_many_concurrent_callers_cause_one_refresh(clock: ManualClock) -> None:
    async with service(clock, access_ttl=60) as svc, session_for(svc, clock) as session:
        await session.login("alice", PASSWORDS["alice"])
        old = await session.access_token()
        clock.advance(58)  # inside the mandatory window (last 6 s)
        results: list[str] = []

        async def caller() -> None:
            results.append(await session.access_token())

        async with anyio.create_task_group() as tg:
            for _ in range(10_000):
                tg.start_soon(caller)

        assert svc.stats.refreshes == 1
        assert len(results) == 10_000
        assert len(set(results)) == 1
        assert results[0] != old


async def test_refresh_token_reuse_loses_the_session(clock: ManualClock) -> None:
    async with service(clock) as svc, session_for(svc, clock) as session:
        events = session.events()
        await session.login("alice", PASSWORDS["alice"])
        stolen = session.credentials
        assert stolen is not None
        await session.token_refresh()
        async with aiohttp.ClientSession() as http:
            body = {"username": "alice", "refreshToken": stolen.refresh_token}
            async with http.post(svc.url + "/v1/refresh", json=body) as resp:
                assert resp.status == 401
                assert (await resp.json())["error"] == "refresh_token_reused"

        with pytest.raises(SessionLost):
            await session.token_refresh()

        lost = await next_event(events, EventType.SESSION_LOST)
        assert lost.detail == "invalid_token"
        assert session.status is SessionStatus.NEEDS_LOGIN
        assert session.credentials is None
        with pytest.raises(SessionLost):
            await session.access_token()


async def test_relogin_hook_recovers_a_lost_session(clock: ManualClock) -> None:
    async def relogin(session: Session) -> None:
        await session.login("alice", PASSWORDS["alice"])

    async with service(clock) as svc, session_for(svc, clock, relogin=relogin) as session:
        await session.login("alice", PASSWORDS["alice"])
        token = await session.access_token()
        async with aiohttp.ClientSession() as http:
            await http.post(svc.url + "/v1/logout", headers={"Authorization": f"Bearer {token}"})

        creds = await session.token_refresh()

        assert session.status is SessionStatus.ACTIVE
        assert await me(svc, creds.access_token) == 200


@pytest.mark.parametrize(
    ("answer", "recovers"),
    [
        (("alice", PASSWORDS["alice"]), True),
        (("alice", "wrong"), False),
        ("alice", False),
        (RuntimeError("the hook has a bug"), False),
    ],
)
async def test_relogin_hook_may_return_the_credentials(
    clock: ManualClock, answer: Any, recovers: bool
) -> None:
    calls: list[Session] = []

    async def relogin(session: Session) -> Any:
        calls.append(session)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async with service(clock) as svc, session_for(svc, clock, relogin=relogin) as session:
        await session.login("alice", PASSWORDS["alice"])
        token = await session.access_token()
        async with aiohttp.ClientSession() as http:
            await http.post(svc.url + "/v1/logout", headers={"Authorization": f"Bearer {token}"})

        if recovers:
            creds = await session.token_refresh()
            assert session.status is SessionStatus.ACTIVE
            assert await me(svc, creds.access_token) == 200
        else:
            # A refused password, or an answer that is not (username, password): the
            # session stays lost, with a typed error, never a crash of the refresher.
            with pytest.raises(SessionLost):
                await session.token_refresh()
            assert session.status is SessionStatus.NEEDS_LOGIN
        assert calls == [session]


async def test_a_relogin_hook_that_raises_in_a_background_refresh_keeps_the_session(
    clock: ManualClock,
) -> None:
    async def relogin(session: Session) -> None:
        raise RuntimeError("the hook has a bug")

    async with (
        service(clock, access_ttl=60) as svc,
        session_for(svc, clock, relogin=relogin) as session,
    ):
        events = session.events()
        await session.login("alice", PASSWORDS["alice"])
        token = await session.access_token()
        async with aiohttp.ClientSession() as http:
            await http.post(svc.url + "/v1/logout", headers={"Authorization": f"Bearer {token}"})
        clock.advance(50)  # past every background refresh time (40-77.5 % of 60 s)
        assert (await next_event(events, EventType.SESSION_LOST)).detail == "invalid_token"
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(SessionLost):
            await session.access_token()
    # Leaving the block raised nothing: the task group was never torn down.


async def test_validate_access_token_on_the_session(clock: ManualClock) -> None:
    signer = tokensdk.Ed25519Signer.generate()
    async with (
        service(clock, assets={"door-1": signer.public_key_hex}) as svc,
        session_for(svc, clock) as session,
    ):
        await session.login("alice", PASSWORDS["alice"])
        item = await session.access_tokens.request("door-1", signer)
        info = await session.validate_access_token(item.token)
        assert list(info.asset_ids) == ["door-1"]
        async with aiohttp.ClientSession() as http:
            await http.post(svc.url + "/v1/assets/revoke", json={"token": item.token})
        # Locally still valid; the service knows better, and the array drops it.
        assert (await session.validate_access_token(item.token)).asset_ids == info.asset_ids
        with pytest.raises(tokensdk.TokenInvalid):
            await session.validate_access_token(item.token, remote=True)
        assert session.access_tokens.find("door-1") is None


async def test_transient_failures_are_retried_without_losing_the_session(
    clock: ManualClock,
) -> None:
    async with service(clock, access_ttl=60) as svc:
        proxy = FaultProxy(svc.url)
        proxy.only_paths = {"/v1/refresh"}
        async with proxy.running(), session_for(proxy, clock) as session:
            events = session.events()
            await session.login("alice", PASSWORDS["alice"])
            proxy.fail_next(4)
            async with anyio.create_task_group() as tg:
                tg.start_soon(autojump, clock)
                await next_event(events, EventType.REFRESHED)
                tg.cancel_scope.cancel()

            assert proxy.faulted["/v1/refresh"] == 4
            assert svc.stats.refreshes == 1
            assert session.status is SessionStatus.ACTIVE
            assert await me(svc, await session.access_token()) == 200


async def test_failure_in_the_mandatory_window_raises_a_typed_error(clock: ManualClock) -> None:
    async with service(clock, access_ttl=60) as svc:
        proxy = FaultProxy(svc.url)
        proxy.only_paths = {"/v1/refresh"}
        async with proxy.running(), session_for(proxy, clock) as session:
            await session.login("alice", PASSWORDS["alice"])
            proxy.sticky = lambda request: _unavailable()
            clock.advance(59)
            errors: list[Exception] = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(autojump, clock)
                try:
                    await session.access_token()
                except tokensdk.ServiceUnavailable as exc:
                    errors.append(exc)
                finally:
                    tg.cancel_scope.cancel()
            assert len(errors) == 1
            assert session.status is SessionStatus.ACTIVE  # transient: not lost


async def _unavailable() -> aiohttp.web.StreamResponse:
    from aiohttp import web

    return web.json_response({"error": "unavailable", "code": 503, "message": "x"}, status=503)


async def test_restart_resumes_from_the_store_without_a_password(clock: ManualClock) -> None:
    store = MemoryStore()
    async with service(clock) as svc:
        async with session_for(svc, clock, store=store) as first:
            await first.login("alice", PASSWORDS["alice"])
            token = await first.access_token()
        async with session_for(svc, clock, store=store) as second:
            assert second.status is SessionStatus.ACTIVE
            assert await second.access_token() == token
            await second.login_with_token()
            assert await me(svc, await second.access_token()) == 200
        assert svc.stats.logins == 1


async def test_resume_with_an_expired_access_token_falls_back_to_refresh(
    clock: ManualClock,
) -> None:
    async with service(clock, access_ttl=10) as svc:
        async with session_for(svc, clock) as first:
            await first.login("alice", PASSWORDS["alice"])
            saved = first.credentials
        assert saved is not None
        clock.advance(30)
        async with session_for(svc, clock) as second:
            await second.login_with_token(saved)
            assert svc.stats.refreshes == 1
            assert await me(svc, await second.access_token()) == 200


async def test_resume_after_the_refresh_token_expired_needs_login(clock: ManualClock) -> None:
    store = MemoryStore()
    async with service(clock, access_ttl=10, refresh_ttl=20) as svc:
        async with session_for(svc, clock, store=store) as first:
            await first.login("alice", PASSWORDS["alice"])
        clock.advance(21)
        async with session_for(svc, clock, store=store) as second:
            assert second.status is SessionStatus.NEEDS_LOGIN
            with pytest.raises(SessionLost):
                await second.access_token()


async def test_resume_with_a_revoked_pair_is_refused(clock: ManualClock) -> None:
    store = MemoryStore()
    async with service(clock) as svc:
        async with session_for(svc, clock, store=store) as first:
            await first.login("alice", PASSWORDS["alice"])
            token = await first.access_token()
        async with aiohttp.ClientSession() as http:
            await http.post(svc.url + "/v1/logout", headers={"Authorization": f"Bearer {token}"})
        async with session_for(svc, clock, store=store) as second:
            events = second.events()
            # 401 invalid_token from /v1/login/with-token: the pair is dead, say so.
            with pytest.raises(SessionLost) as info:
                await second.login_with_token()
            assert info.value.reason == "invalid_token"
            assert (await next_event(events, EventType.SESSION_LOST)).detail == "invalid_token"
            assert second.status is SessionStatus.NEEDS_LOGIN
            await second.flush()
        assert store.document is not None
        assert store.document["credentials"] is None


async def test_refresh_refused_as_expired_by_the_service(clock: ManualClock) -> None:
    # The service's clock runs ahead of ours: only its 401 code 701 tells the SDK.
    service_clock = ManualClock()
    async with (
        service(service_clock, refresh_ttl=120) as svc,
        session_for(svc, clock) as session,
    ):
        await session.login("alice", PASSWORDS["alice"])
        service_clock.advance(121)
        with pytest.raises(SessionLost) as info:
            await session.token_refresh()
        assert info.value.reason == "token_expired"
        assert session.status is SessionStatus.NEEDS_LOGIN
        assert svc.stats.refreshes == 0


async def test_one_time_key_requests_are_rate_limited(clock: ManualClock) -> None:
    async with (
        service(clock, login_rate_limit=2) as svc,
        session_for(svc, clock) as session,
    ):
        wrong = lambda key: "0" * 64  # noqa: E731
        for _ in range(2):
            with pytest.raises(InvalidCredentials):
                await session.login_with_one_time_key("alice", wrong)
        with pytest.raises(tokensdk.RateLimited) as info:
            await session.login_with_one_time_key("alice", wrong)
        assert info.value.retry_after > 0
        assert session.status is SessionStatus.LOGGED_OUT


async def test_logout_after_the_service_revoked_still_clears(clock: ManualClock) -> None:
    async with service(clock) as svc, session_for(svc, clock) as session:
        await session.login("alice", PASSWORDS["alice"])
        token = await session.access_token()
        async with aiohttp.ClientSession() as http:
            await http.post(svc.url + "/v1/logout", headers={"Authorization": f"Bearer {token}"})
        await session.logout()  # the service answers 401: nothing left to revoke there
        assert svc.stats.requests_by_path["/v1/logout"] == 2
        assert session.status is SessionStatus.LOGGED_OUT
        assert session.credentials is None


async def test_logout_revokes_and_clears(clock: ManualClock) -> None:
    store = MemoryStore()
    async with service(clock) as svc, session_for(svc, clock, store=store) as session:
        await session.login("alice", PASSWORDS["alice"])
        token = await session.access_token()
        assert await session.logout() is True
        await session.flush()

        assert await me(svc, token) == 401
        assert session.status is SessionStatus.LOGGED_OUT
        assert store.document is not None
        assert store.document["credentials"] is None


@pytest.mark.parametrize("ahead", ["sdk", "service"])
async def test_logout_with_an_expired_access_token_refreshes_first(
    clock: ManualClock, ahead: str
) -> None:
    # Whichever clock sees the access token expired (ours: refresh before; the
    # service's: its 701 answer), logout must still revoke the family.
    relogins: list[Session] = []

    async def relogin(session: Session) -> None:
        relogins.append(session)

    service_clock = ManualClock()
    async with (
        service(service_clock, access_ttl=60) as svc,
        session_for(svc, clock, relogin=relogin) as session,
    ):
        await session.login("alice", PASSWORDS["alice"])
        creds = session.credentials
        assert creds is not None
        if ahead == "service":
            service_clock.advance(61)
        else:
            clock.jump_wall(61)  # no monotonic move: no background refresh meanwhile
            service_clock.jump_wall(61)
        assert await session.logout() is True
        assert session.status is SessionStatus.LOGGED_OUT
        # The family is revoked: even the first refresh token is refused. (Had the
        # family stayed alive, that never-used refresh token would still work.)
        async with aiohttp.ClientSession() as http:
            body = {"username": "alice", "refreshToken": creds.refresh_token}
            async with http.post(svc.url + "/v1/refresh", json=body) as resp:
                assert resp.status == 401
        assert relogins == []


async def test_logout_says_when_the_service_could_not_revoke(clock: ManualClock) -> None:
    async with service(clock) as svc:
        proxy = FaultProxy(svc.url)
        proxy.only_paths = {"/v1/logout"}
        async with proxy.running(), session_for(proxy, clock) as session:
            await session.login("alice", PASSWORDS["alice"])
            token = await session.access_token()
            proxy.fail_next(1)
            assert await session.logout() is False  # cleared locally only
            assert session.status is SessionStatus.LOGGED_OUT
            assert await me(svc, token) == 200  # still alive on the service
            # Nothing to revoke any more; and a family already dead counts as revoked.
            assert await session.logout() is True
            await session.login("alice", PASSWORDS["alice"])
            token = await session.access_token()
            async with aiohttp.ClientSession() as http:
                await http.post(
                    svc.url + "/v1/logout", headers={"Authorization": f"Bearer {token}"}
                )
            assert await session.logout() is True


async def test_change_callbacks_get_ordered_snapshots_and_failures_are_isolated(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[tuple[int, SessionStatus]] = []
    running = 0

    async def slow(snapshot: tokensdk.SessionSnapshot) -> None:
        nonlocal running
        running += 1
        assert running == 1  # never concurrently
        await anyio.lowlevel.checkpoint()
        seen.append((snapshot.revision, snapshot.status))
        running -= 1

    def failing(snapshot: tokensdk.SessionSnapshot) -> None:
        raise RuntimeError("callback bug")

    caplog.set_level(logging.WARNING, "tokensdk")
    async with service(clock) as svc, session_for(svc, clock, on_change=[failing, slow]) as session:
        events = session.events()
        await session.login("alice", PASSWORDS["alice"])
        await session.token_refresh()
        await session.logout()
        await session.changes_delivered()
        failure = await next_event(events, EventType.CALLBACK_FAILED)

    revisions = [revision for revision, _ in seen]
    assert revisions == sorted(revisions)
    assert seen[-1][1] is SessionStatus.LOGGED_OUT
    assert isinstance(failure.error, RuntimeError)


async def test_session_must_be_entered(clock: ManualClock) -> None:
    async with service(clock) as svc:
        session = Session(svc.url, clock=clock)
        with pytest.raises(SessionClosed):
            await session.login("alice", PASSWORDS["alice"])
        async with session:
            pass
        with pytest.raises(SessionClosed):
            await session.__aenter__()


async def test_closing_in_the_middle_of_a_refresh_is_clean(clock: ManualClock) -> None:
    async with service(clock, access_ttl=60) as svc:
        proxy = FaultProxy(svc.url)
        proxy.only_paths = {"/v1/refresh"}
        gate = anyio.Event()

        async def hang(request: Any) -> Any:
            await gate.wait()
            raise AssertionError("unreachable")

        proxy.sticky = hang
        async with proxy.running():
            outcome: list[BaseException] = []
            session = Session(proxy.url, clock=clock)

            async def waiter() -> None:
                try:
                    await session.access_token()
                except tokensdk.TokenSDKError as exc:
                    outcome.append(exc)

            async with anyio.create_task_group() as outer, session:
                await session.login("alice", PASSWORDS["alice"])
                clock.advance(59)  # mandatory window: the waiter must wait for a refresh
                outer.start_soon(waiter)
                await proxy.wait_for("/v1/refresh")
                # closed while the refresh hangs on the wire
            gate.set()
            assert len(outcome) == 1
            assert isinstance(outcome[0], SessionClosed)
            assert proxy.seen["/v1/refresh"] == 1


# -- crash-safe refresh: the pending refresh is persisted before it is sent ---------------


class DurableMemoryStore(MemoryStore):
    """A MemoryStore standing in for a store that outlives the process."""

    durable = True

    def __init__(self) -> None:
        super().__init__()
        self.saves = 0

    def save_nowait(self, document: Any) -> None:
        self.saves += 1
        super().save_nowait(document)


class CountingMemoryStore(DurableMemoryStore):
    durable = False


@pytest.mark.parametrize("durable", [True, False], ids=["durable", "in-process"])
async def test_a_refresh_whose_answer_was_lost_is_retried_by_the_next_session(
    clock: ManualClock, durable: bool
) -> None:
    """The service rotated the pair but the process died before it saw the answer.

    The next session on the same store finds the pending refresh (refresh token and
    idempotency key, saved before the request left) and retries it with the same key:
    the service answers the retry instead of revoking the family for reuse. Without
    the persisted key the retry presents a spent refresh token: refresh_token_reused.
    A store that cannot outlive the process (memory) gets the key when the session
    closes, not before the request leaves: only a later session of the same process
    can find it.
    """
    store = DurableMemoryStore() if durable else CountingMemoryStore()
    async with service(clock) as svc:
        proxy = FaultProxy(svc.url)
        proxy.only_paths = {"/v1/refresh"}
        rotated = anyio.Event()

        async def answer_lost(request: Any) -> Any:
            await proxy.forward(request)  # the service rotates the pair ...
            rotated.set()
            return await proxy.hang(request)  # ... and its answer never arrives

        proxy.fail_next(1, answer_lost)
        async with (
            proxy.running(),
            anyio.create_task_group() as tg,
            session_for(proxy, clock, store=store) as a,
        ):
            await a.login("alice", PASSWORDS["alice"])
            spent = a.snapshot.credentials
            assert spent is not None
            tg.start_soon(a.token_refresh)
            await rotated.wait()
            if durable:
                in_flight = a.snapshot.pending_refresh
                assert in_flight is not None
                assert in_flight.refresh_token == spent.refresh_token
                assert spent.refresh_token not in repr(a.snapshot)
                assert in_flight.idempotency_key not in repr(a.snapshot)
            else:
                assert a.snapshot.pending_refresh is None  # kept in memory only
            # the process dies here: what the store holds is what the next one gets
            tg.cancel_scope.cancel()
        document = store.document
        assert document is not None
        pending = tokensdk.PendingRefresh(
            spent.refresh_token,
            document["pendingRefresh"]["idempotencyKey"],
            document["pendingRefresh"]["startedAt"],
        )
        if durable:
            assert pending == in_flight

        async with session_for(svc, clock, store=store) as b:
            assert b.snapshot.pending_refresh == pending
            new = await b.token_refresh()
            assert new.refresh_token != spent.refresh_token
            assert b.snapshot.pending_refresh is None
            assert await me(svc, await b.access_token()) == 200
        assert svc.stats.logins == 1
    document = store.document
    assert document is not None
    assert document["pendingRefresh"] is None


async def test_a_store_that_cannot_outlive_the_process_is_written_once_per_refresh(
    clock: ManualClock,
) -> None:
    """Only a durable store gets the pending refresh before the request leaves.

    Writing the idempotency key first is what makes a refresh crash-safe, and it costs
    a commit and an encoding per refresh: a store in memory dies with the process, so
    it only gets the result (one write), and only when flushed. A durable one gets the
    key, then the result.
    """
    async with service(clock) as svc:
        for store, writes in ((CountingMemoryStore(), 1), (DurableMemoryStore(), 2)):
            async with session_for(svc, clock, store=store) as s:
                await s.login("alice", PASSWORDS["alice"])
                await s.flush()
                before = store.saves
                await s.token_refresh()
                for _ in range(3):
                    await anyio.lowlevel.checkpoint()
                # In memory: nothing is written until a flush (or the close) asks.
                assert (store.saves - before > 0) is store.durable
                await s.flush()
                assert (type(store).__name__, store.saves - before) == (
                    type(store).__name__,
                    writes,
                )
                assert s.snapshot.pending_refresh is None


def test_the_state_codec_reads_documents_without_revision_or_pending_refresh() -> None:
    from tokensdk._models import document_to_snapshot, snapshot_to_document

    older = {
        "version": 1,
        "status": "active",
        "credentials": {
            "username": "alice",
            "accessToken": "a",
            "refreshToken": "r",
            "accessExpiresAt": 1060.0,
            "refreshExpiresAt": 2000.0,
            "lifetime": 60.0,
        },
        "accessTokens": [],
        "macTokens": {},
    }
    snapshot = document_to_snapshot(older, wall=1000.0, monotonic=5.0)
    assert (snapshot.revision, snapshot.pending_refresh) == (0, None)

    pending = tokensdk.PendingRefresh("r", "key", 1001.0)
    current = tokensdk.SessionSnapshot(
        status=SessionStatus.ACTIVE,
        credentials=snapshot.credentials,
        revision=7,
        pending_refresh=pending,
    )
    again = document_to_snapshot(snapshot_to_document(current), wall=1000.0, monotonic=5.0)
    assert (again.revision, again.pending_refresh) == (7, pending)

    # A pending refresh of another refresh token belongs to a pair that is gone.
    other = snapshot_to_document(
        attrs.evolve(current, pending_refresh=tokensdk.PendingRefresh("x", "k", 1))
    )
    assert document_to_snapshot(other, wall=1000.0, monotonic=5.0).pending_refresh is None


async def test_sessions_close_in_any_order(clock: ManualClock) -> None:
    """Long-running apps open and close sessions in any order, not only nested (LIFO).

    The task group used to be entered by hand in ``__aenter__``, inside the caller's
    task: leaving the first of two sessions opened in one task raised RuntimeError
    (a cancel scope left out of order) and corrupted the second one's scope.
    """
    async with service(clock) as svc:
        first = Session(svc.url, clock=clock)
        second = Session(svc.url, clock=clock)
        await first.__aenter__()
        await second.__aenter__()
        await first.login("alice", PASSWORDS["alice"])
        await second.login("bob", PASSWORDS["bob"])

        await first.__aexit__(None, None, None)  # the first one opened closes first

        with pytest.raises(SessionClosed):
            await first.login("alice", PASSWORDS["alice"])
        assert await me(svc, await second.access_token()) == 200
        await second.token_refresh()  # its background work still runs
        assert await me(svc, await second.access_token()) == 200
        await second.__aexit__(None, None, None)
        with pytest.raises(SessionClosed):
            await second.token_refresh()


class HeldRefresh:
    """An attempt hook that, once armed, holds the answer of the next refresh.

    The answer is read, then held until :attr:`release` is set: a caller cancelled
    meanwhile has a request that reached the service and an answer it never took.
    :attr:`attempts` counts the refresh requests sent since it was armed.
    """

    def __init__(self) -> None:
        self.answered = anyio.Event()
        self.release = anyio.Event()
        self.attempts = 0
        self._armed = False

    def arm(self) -> None:
        self.attempts, self._armed = 0, True

    @asynccontextmanager
    async def __call__(self, method: str, path: str) -> AsyncIterator[None]:
        yield
        if path == "/refresh" and self._armed:
            self.attempts += 1
            if self.attempts == 1:
                self.answered.set()
                await self.release.wait()


async def test_a_refresh_whose_caller_is_cancelled_mid_request_is_finished_by_the_session(
    clock: ManualClock,
) -> None:
    """The first caller flies a refresh in its own task (no hand-off per refresh).

    Cancelled after the service rotated the pair, before the answer was used, it hands
    the refresh to the session's refresher task, which sends it again with the same
    idempotency key: the caller waiting with it gets the pair the service minted (the
    retry is answered, not taken for reuse), and the service minted one pair.
    """
    hook = HeldRefresh()
    async with service(clock) as svc, session_for(svc, clock, attempt_hook=hook) as s:
        await s.login("alice", PASSWORDS["alice"])
        # The first refresh tells the session the service honours the key.
        await s.token_refresh()
        hook.arm()
        old = s.credentials
        assert old is not None
        before = (svc.stats.refreshes, len(svc.state.refresh_tokens))
        async with anyio.create_task_group() as tg:
            first = anyio.CancelScope()

            async def flier() -> None:
                with first:
                    await s.token_refresh()

            tg.start_soon(flier)
            await hook.answered.wait()
            joined: list[tokensdk.Credentials] = []

            async def joiner() -> None:
                joined.append(await s.token_refresh())

            tg.start_soon(joiner)
            await anyio.lowlevel.checkpoint()
            first.cancel()
            hook.release.set()  # a held answer the cancellation did not reach goes on
        assert first.cancelled_caught
        new = s.credentials
        assert new is not None
        assert joined == [new]
        assert new.refresh_token != old.refresh_token
        assert s.status is SessionStatus.ACTIVE
        assert hook.attempts == 2
        # Two requests, one rotation: the second was answered as a retry.
        assert (svc.stats.refreshes, len(svc.state.refresh_tokens)) == (
            before[0] + 2,
            before[1] + 1,
        )
        assert svc.stats.refresh_reuses == 0
        assert await me(svc, new.access_token) == 200


async def test_against_a_service_without_retries_a_cancelled_caller_never_resends(
    clock: ManualClock,
) -> None:
    """A service of contract v1 alone (no idempotency window named): no re-send.

    There a refresh sent again after the service rotated is reuse and revokes the
    family, so a refresh always runs in the session's task: a caller cancelled
    mid-request stops waiting, the one request goes on, its answer is installed.
    """
    hook = HeldRefresh()
    async with (
        service(clock, idempotency_window=0) as svc,
        session_for(svc, clock, attempt_hook=hook) as s,
    ):
        await s.login("alice", PASSWORDS["alice"])
        await s.token_refresh()  # as in the test above: nothing learnt from it here
        hook.arm()
        old = s.credentials
        assert old is not None
        async with anyio.create_task_group() as tg:
            first = anyio.CancelScope()

            async def flier() -> None:
                with first:
                    await s.token_refresh()

            tg.start_soon(flier)
            await hook.answered.wait()
            first.cancel()
            await anyio.lowlevel.checkpoint()
            hook.release.set()
        assert first.cancelled_caught
        await s.flush()
        joined = await s.token_refresh()  # the refresh went on; this is one more
        assert svc.stats.refresh_reuses == 0
        assert hook.attempts == 2
        assert s.status is SessionStatus.ACTIVE
        assert joined.refresh_token != old.refresh_token
        assert await me(svc, joined.access_token) == 200


async def test_the_relogin_hook_runs_in_the_sessions_task_not_the_callers(
    clock: ManualClock,
) -> None:
    """A refresh runs in its caller's task, but the application's relogin hook does not.

    A cancelled caller must not cut the hook short (it is not sent again like a
    refresh): when the refresh finds the session lost, the refresher task takes over.
    """
    ran_in: list[object] = []

    async def relogin(session: Session) -> tuple[str, str]:
        ran_in.append(asyncio.current_task())
        return "alice", PASSWORDS["alice"]

    async with service(clock) as svc, session_for(svc, clock, relogin=relogin) as s:
        await s.login("alice", PASSWORDS["alice"])
        await s.token_refresh()  # the answer names a retry window: inline from here on
        token = await s.access_token()
        async with aiohttp.ClientSession() as http:
            await http.post(svc.url + "/v1/logout", headers={"Authorization": f"Bearer {token}"})
        new = await s.token_refresh()  # 401: lost, then the hook logs in again
        assert len(ran_in) == 1
        assert ran_in[0] is not asyncio.current_task()
        assert s.status is SessionStatus.ACTIVE
        assert new == s.credentials
        assert svc.stats.logins == 2


async def test_closing_the_session_wakes_the_caller_whose_task_flies_the_refresh(
    clock: ManualClock,
) -> None:
    """Closing ends a refresh flown in a caller's task there, as it does in the session's.

    The refresher task is cancelled at close; the caller flying a refresh in its own
    task must not wait for its request (or its retries, up to the token's lifetime)
    to end: it gets SessionClosed at once, like the callers waiting with it.
    """
    hook = HeldRefresh()
    outcomes: list[BaseException] = []

    async def caller(s: Session) -> None:
        try:
            await s.token_refresh()
        except SessionClosed as exc:
            outcomes.append(exc)

    async with service(clock) as svc, anyio.create_task_group() as tg:
        s = Session(svc.url, clock=clock, rng=random.Random(1), attempt_hook=hook)
        await s.__aenter__()
        await s.login("alice", PASSWORDS["alice"])
        await s.token_refresh()  # the answer names a retry window: inline from here on
        hook.arm()
        tg.start_soon(caller, s)
        await hook.answered.wait()
        await s.__aexit__(None, None, None)
        for _ in range(3):
            await anyio.lowlevel.checkpoint()
        woken = len(outcomes)
        hook.release.set()
    assert woken == 1


class VolatileFileStore(tokensdk.FileStore):
    """A shared store (the fleet primitives) that says it cannot outlive the process."""

    durable = False

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.written = anyio.Event()

    async def save_if(self, *args: Any, **kwargs: Any) -> Any:
        result = await super().save_if(*args, **kwargs)
        self.written.set()
        return result


async def test_a_shared_store_is_written_without_a_flush_whatever_its_durability(
    clock: ManualClock, tmp_path: Path
) -> None:
    """Writes are deferred to a flush only for a store nobody else reads meanwhile.

    The members sharing a store read it at any time: a login must reach it without
    waiting for this member's flush or close, even if the store says it is volatile.
    """
    store = VolatileFileStore(tmp_path / "state.json")
    async with service(clock) as svc, session_for(svc, clock, store=store) as s:
        await s.login("alice", PASSWORDS["alice"])
        with anyio.move_on_after(5):  # a hang guard only: deferred, it never comes
            await store.written.wait()
        assert store.written.is_set()
        assert read_state_file(store.path) is not None


async def test_a_refresh_handed_to_the_session_after_a_logout_never_calls_relogin(
    clock: ManualClock,
) -> None:
    """A logout wins over a refresh under way, also one a cancelled caller handed off.

    The caller flying the refresh is cancelled after a logout completed: the session
    flies that refresh again in its own task, finds nobody logged in, and must end it
    (SessionLost "logged_out", as a refresh the logout overtook) instead of asking the
    relogin hook to log the user back in.
    """
    hook = HeldRefresh()
    relogins: list[Session] = []

    async def relogin(session: Session) -> tuple[str, str]:
        relogins.append(session)
        return "alice", PASSWORDS["alice"]

    async with (
        service(clock) as svc,
        session_for(svc, clock, attempt_hook=hook, relogin=relogin) as s,
    ):
        await s.login("alice", PASSWORDS["alice"])
        await s.token_refresh()  # the answer names a retry window: inline from here on
        hook.arm()
        async with anyio.create_task_group() as tg:
            first = anyio.CancelScope()

            async def flier() -> None:
                with first:
                    await s.token_refresh()

            tg.start_soon(flier)
            await hook.answered.wait()
            assert await s.logout() is True
            first.cancel()
            hook.release.set()
        for _ in range(20):
            await anyio.lowlevel.checkpoint()
        await s.changes_delivered()
        assert relogins == []
        assert s.status is SessionStatus.LOGGED_OUT
        assert svc.stats.logins == 1
        assert svc.stats.refreshes >= 2  # the warm-up, and the held one at least

"""Fault injection: a Session behind FaultProxy, against the real reference service.

Every fault runs the same scenario on a manual clock with short lifespans: the
application asks for a token every step and uses it on the service, before,
during and after the fault. Only the clock is faked; sockets are real.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import _proxy
import aiohttp
import anyio
import attrs
import pytest
from _proxy import FaultProxy
from _service import PASSWORDS, service

from tokensdk import (
    Event,
    EventType,
    ManualClock,
    ProtocolError,
    RateLimited,
    RetryConfig,
    ServiceUnavailable,
    Session,
    SessionStatus,
    TokenSDKError,
)
from tokensdk.server import RunningService

pytestmark = pytest.mark.anyio

RETRY = RetryConfig(initial=0.1, maximum=0.5, jitter=0.0)
STEP = 0.25


class Driver:
    """Autojump that the test can hold while a request to the service is in flight.

    Advances the clock to the next sleeper whenever every task is blocked, except
    while :meth:`hold` is active (the service must not see time jump under a request).
    """

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self._holds = 0
        self._released = anyio.Event()

    @contextmanager
    def hold(self) -> Iterator[None]:
        self._holds += 1
        try:
            yield
        finally:
            self._holds -= 1
            if not self._holds:
                self._released.set()

    async def run(self) -> None:
        while True:
            await anyio.wait_all_tasks_blocked()
            if self._holds:
                self._released = anyio.Event()
                await self._released.wait()
                continue
            if not self.clock.advance_to_next():
                await self.clock.wait_for_sleeper()


async def me(http: aiohttp.ClientSession, svc: RunningService, token: str) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    async with http.get(svc.url + "/v1/me", headers=headers) as resp:
        return resp.status


def sdk_tasks() -> list[asyncio.Task[Any]]:
    """Tasks still running SDK (not service) code."""
    found = []
    for task in asyncio.all_tasks():
        coro: Any = task.get_coro()
        code = getattr(coro, "cr_code", None)
        name = code.co_filename if code is not None else ""
        if "tokensdk" in name and "server" not in name:
            found.append(task)
    return found


@attrs.define
class Outcome:
    during: list[BaseException] = attrs.field(factory=list)
    after: list[BaseException] = attrs.field(factory=list)
    recovered_after: float | None = None
    events: list[Event] = attrs.field(factory=list)
    statuses: list[int] = attrs.field(factory=list)


Action = Callable[[FaultProxy], Awaitable[None] | None]


async def _maybe(result: Awaitable[None] | None) -> None:
    if result is not None:
        await result


async def run_scenario(
    clock: ManualClock,
    install: Action,
    clear: Action,
    *,
    sdk_timeout: float = 2.0,
    ttl: int = 2,
    before: float = 1.0,
    fault_for: float = 3.0,
    recover_within: float = 3.0,
    only_paths: set[str] | None = None,
) -> tuple[Outcome, RunningService, FaultProxy]:
    """Run a session for ``before`` + ``fault_for`` + recovery simulated seconds."""
    outcome = Outcome()
    guard = sdk_timeout * (RETRY.max_attempts + 1)  # real seconds: never reached unless hung
    async with service(clock, access_ttl=ttl, refresh_ttl=3600) as svc:
        proxy = FaultProxy(svc.url)
        proxy.only_paths = {"/v1/refresh"} if only_paths is None else only_paths
        driver = Driver(clock)
        async with proxy.running(), aiohttp.ClientSession() as http:
            session = Session(
                proxy.url, clock=clock, retry=RETRY, timeout=sdk_timeout, rng=random.Random(7)
            )
            async with session:
                events = session.events(buffer=100_000)
                await session.login("alice", PASSWORDS["alice"])
                async with anyio.create_task_group() as tg:
                    tg.start_soon(driver.run)

                    async def step(sink: list[BaseException]) -> bool:
                        await clock.sleep_until(clock.monotonic() + STEP)
                        with anyio.fail_after(guard):
                            try:
                                token = await session.access_token()
                            except TokenSDKError as exc:
                                sink.append(exc)
                                return False
                        with driver.hold():
                            outcome.statuses.append(await me(http, svc, token))
                        return True

                    end = clock.monotonic() + before
                    while clock.monotonic() < end:
                        assert await step([]), "failed before the fault"
                    await _maybe(install(proxy))
                    end = clock.monotonic() + fault_for
                    while clock.monotonic() < end:
                        await step(outcome.during)
                    await _maybe(clear(proxy))
                    cleared = clock.monotonic()
                    while clock.monotonic() < cleared + recover_within:
                        if await step(outcome.after):
                            outcome.recovered_after = clock.monotonic() - cleared
                            break
                    # keep going a little: the recovered session stays healthy
                    for _ in range(8):
                        assert await step([]), "failed after recovery"
                    tg.cancel_scope.cancel()
                assert session.status is SessionStatus.ACTIVE
            outcome.events = [event async for event in events]
            assert sdk_tasks() == []
    return outcome, svc, proxy


def sticky(fault: _proxy.Fault) -> Action:
    def install(proxy: FaultProxy) -> None:
        proxy.sticky = fault

    return install


def proxy_fault(name: str, *args: Any) -> Action:
    def install(proxy: FaultProxy) -> None:
        fault = getattr(proxy, name)
        proxy.sticky = fault(*args) if args else fault

    return install


def unstick(proxy: FaultProxy) -> None:
    proxy.sticky = None


FAILING = {
    "503": sticky(_proxy.unavailable),
    "429": sticky(_proxy.rate_limited(1)),
    "html_200": sticky(_proxy.html_ok),
    "truncated_json": sticky(_proxy.truncated_json),
    "text_200": sticky(_proxy.wrong_content_type),
    "several_mb": sticky(_proxy.huge_body()),
    "reset_before_service": proxy_fault("reset_before_forward"),
}


def check_common(outcome: Outcome, svc: RunningService, *, errors_expected: bool) -> None:
    assert svc.stats.expired_bearers == 0
    assert svc.stats.rejected_bearers == 0
    assert set(outcome.statuses) == {200}
    assert EventType.SESSION_LOST not in {event.type for event in outcome.events}
    assert outcome.recovered_after is not None, "no recovery after the fault cleared"
    for error in outcome.during + outcome.after:
        assert isinstance(error, ServiceUnavailable | ProtocolError | RateLimited), repr(error)
        assert str(error)
    if errors_expected:
        # the fault outlasts the token: callers in the mandatory window get a typed error
        assert outcome.during


@pytest.mark.parametrize("name", sorted(FAILING))
async def test_fault_gives_typed_errors_then_recovers(clock: ManualClock, name: str) -> None:
    outcome, svc, proxy = await run_scenario(clock, FAILING[name], unstick)

    check_common(outcome, svc, errors_expected=True)
    assert proxy.faulted["/v1/refresh"] >= 2
    assert EventType.REFRESH_FAILED in {event.type for event in outcome.events}


async def test_connection_refused_then_accepted(clock: ManualClock) -> None:
    async def refuse(proxy: FaultProxy) -> None:
        await proxy.refuse()

    async def accept(proxy: FaultProxy) -> None:
        await proxy.accept()

    outcome, svc, _ = await run_scenario(clock, refuse, accept)

    check_common(outcome, svc, errors_expected=True)
    assert all(isinstance(error, ServiceUnavailable) for error in outcome.during)


async def test_hung_connection_is_cut_by_the_timeout(clock: ManualClock) -> None:
    outcome, svc, _ = await run_scenario(
        clock, proxy_fault("hang"), unstick, sdk_timeout=0.2, ttl=2, before=1.0, fault_for=3.0
    )

    check_common(outcome, svc, errors_expected=True)
    assert all(isinstance(error, ServiceUnavailable) for error in outcome.during)


async def test_slow_answers_are_waited_for(clock: ManualClock) -> None:
    outcome, svc, _ = await run_scenario(clock, lambda p: _delay(p, clock), unstick)

    check_common(outcome, svc, errors_expected=False)
    assert outcome.during == []


def _delay(proxy: FaultProxy, clock: ManualClock) -> None:
    proxy.sticky = proxy.delayed(clock, 0.3)


async def test_json_with_another_content_type_is_accepted(clock: ManualClock) -> None:
    outcome, svc, _ = await run_scenario(clock, proxy_fault("relabelled", "text/plain"), unstick)

    check_common(outcome, svc, errors_expected=False)


async def test_faults_on_every_path_including_login(clock: ManualClock) -> None:
    # not only refresh: clock sync and everything else fail too
    outcome, svc, _ = await run_scenario(
        clock, sticky(_proxy.unavailable), unstick, only_paths=set()
    )
    assert outcome.during == []  # only_paths=set() matches nothing: a control run
    check_common(outcome, svc, errors_expected=False)


async def test_lost_refresh_answer_is_retried_without_revoking_the_family(
    clock: ManualClock,
) -> None:
    async with service(clock, access_ttl=60) as svc:
        proxy = FaultProxy(svc.url)
        proxy.only_paths = {"/v1/refresh"}
        async with proxy.running(), Session(proxy.url, clock=clock, retry=RETRY) as session:
            events = session.events()
            await session.login("alice", PASSWORDS["alice"])
            proxy.fail_next(1, proxy.reset_mid_response)
            driver = Driver(clock)
            async with anyio.create_task_group() as tg:
                tg.start_soon(driver.run)
                with anyio.fail_after(30):
                    creds = await session.token_refresh()
                tg.cancel_scope.cancel()

            assert proxy.faulted["/v1/refresh"] == 1
            assert proxy.seen["/v1/refresh"] == 2  # the lost answer, then the retry
            assert svc.stats.refresh_reuses == 0
            assert session.status is SessionStatus.ACTIVE
            async with aiohttp.ClientSession() as http:
                assert await me(http, svc, creds.access_token) == 200
                # the pair the client never saw was withdrawn, not left alive
                withdrawn = json.loads(proxy.lost[0])
                assert withdrawn["accessToken"] != creds.access_token
                assert await me(http, svc, withdrawn["accessToken"]) == 401
                # the withdrawn refresh token cannot be used either
                body = {"username": "alice", "refreshToken": withdrawn["refreshToken"]}
                async with http.post(svc.url + "/v1/refresh", json=body) as resp:
                    assert resp.status == 401
        lost = [event async for event in events if event.type is EventType.SESSION_LOST]
        assert lost == []

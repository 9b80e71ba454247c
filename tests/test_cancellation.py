"""Cancel callers and close the session at points drawn from a seed (many iterations).

Each iteration draws a plan from ``TOKENSDK_SEED``, the operation and the iteration
number alone: the operation's callers (login; refresh in the background or in the
mandatory window; MAC token creation; asset token request; key fetch and remote
validation), which of them get cancelled, and where: before they run, while one of
the operation's requests is held before it is sent, a few event-loop steps into it,
or while its answer is held before the SDK sees it; then whether the session carries
on or is closed right there. Requests go over real sockets to the reference service
(only the clock is fake); the points are reached by holding the SDK's attempts at a
gate, so a seed replays a plan and, but for the "in flight" point, its interleaving.

Every plan asserts which outcome each caller may get (a result, its cancellation, or
one documented typed error), what the session and the service hold afterwards (one
refresh for any number of waiting callers, one MAC token per name, ...), that the
store holds exactly the session's final state, and that no task is left running.

``TOKENSDK_SEED`` and ``TOKENSDK_ITERATIONS`` (per operation) make the run longer.
"""

from __future__ import annotations

import asyncio
import asyncio.selector_events
import contextlib
import dataclasses
import functools
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
from _service import PASSWORDS, service
from aiohttp.web_protocol import RequestHandler

from tokensdk import (
    Authentication,
    Credentials,
    Ed25519Signer,
    EventStream,
    EventType,
    FileStore,
    ManualClock,
    MemoryStore,
    RetryConfig,
    Session,
    SessionStatus,
    StateStore,
    TokenSDKError,
)
from tokensdk._models import snapshot_to_document
from tokensdk.server import RunningService

pytestmark = pytest.mark.anyio

SEED = int(os.environ.get("TOKENSDK_SEED", "7"))
ITERATIONS = int(os.environ.get("TOKENSDK_ITERATIONS", "30"))
# A hang guard only: an iteration takes milliseconds, also on a loaded CI machine.
GUARD = 60.0
SIGNER = Ed25519Signer.from_seed(bytes(range(32)))
# One attempt per request: a transient failure then surfaces as a typed error the
# outcome checks name, instead of a retry sleeping on the fake clock forever.
RETRY = RetryConfig(max_attempts=1)
OPERATIONS = ("login", "refresh", "mac", "asset", "validate")
#: Where callers are cancelled (or the session closed):
#: start: before the callers ran at all;
#: sent: while the held request has not been sent;
#: in flight: a few event-loop steps after letting it go (wherever that lands);
#: answered: while the service's answer to it is held from the SDK.
POINTS = ("start", "sent", "in flight", "answered")


# -- holding requests -------------------------------------------------------------------


class Hold:
    """The first ``limit`` attempts held at one path and point, until :meth:`open`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.tasks: list[asyncio.Task[Any]] = []  # the ones held so far
        self._opened = anyio.Event()
        self._arrived = anyio.Event()

    async def enter(self) -> None:
        if len(self.tasks) < self.limit and not self._opened.is_set():
            task = asyncio.current_task()
            assert task is not None
            self.tasks.append(task)
            self._arrived.set()
            await self._opened.wait()

    def open(self) -> None:
        """Let the held attempts go on, and every later one pass."""
        self._opened.set()

    async def wait_held(self, count: int) -> None:
        """Wait until ``count`` attempts are held."""
        while len(self.tasks) < count:
            self._arrived = anyio.Event()
            await self._arrived.wait()


class Gate:
    """Holds a session's HTTP attempts at chosen paths (e.g. ``/refresh``) and points.

    The session's attempt hook: ``sent`` holds an attempt before it is sent,
    ``answered`` after the service's answer was read, before the SDK uses it.
    """

    def __init__(self) -> None:
        self._holds: dict[tuple[str, str], Hold] = {}

    @contextlib.asynccontextmanager
    async def __call__(self, method: str, path: str) -> AsyncIterator[None]:
        if hold := self._holds.get((path, "sent")):
            await hold.enter()
        yield
        if hold := self._holds.get((path, "answered")):
            await hold.enter()

    def hold(self, path: str, point: str, limit: int) -> Hold:
        """Hold the first ``limit`` attempts at ``path`` (without /v1) at ``point``."""
        hold = self._holds[path, point] = Hold(limit)
        return hold


# -- plans ------------------------------------------------------------------------------


@dataclasses.dataclass
class Plan:
    """What one iteration does; a pure function of the seed, operation and iteration."""

    op: str
    store: str  # memory | file
    point: str
    close: bool  # close the session at the point instead of letting the gate go
    steps: int  # event-loop steps into the request, for the "in flight" point
    calls: list[str]  # what each caller calls
    cancelled: frozenset[int]
    path: str  # the request held (without /v1)
    held: int  # how many attempts the gate holds (and the plan waits for)
    mode: str = ""  # refresh: background | mandatory
    remote: bool = False  # validate: also ask the service


def draw(op: str, iteration: int) -> Plan:
    rng = random.Random(f"{SEED}/{op}/{iteration}")
    n = rng.randint(1, 6)
    plan = Plan(
        op=op,
        store=rng.choice(("memory", "file")),
        point=rng.choice(POINTS),
        close=rng.random() < 0.3,
        steps=rng.randrange(10),
        calls=[op] * n,
        cancelled=frozenset(i for i in range(n) if rng.random() < 0.5),
        path="",
        held=n,
    )
    if op == "login":
        plan.path = "/login"
    elif op == "refresh":
        plan.mode = rng.choice(("background", "mandatory"))
        plan.calls = [rng.choice(("access_token", "token_refresh")) for _ in range(n)]
        plan.path, plan.held = "/refresh", 1  # one refresh for all of them
    elif op == "mac":
        names = rng.randint(1, min(n, 2))
        plan.calls = [f"mac t{i % names}" for i in range(n)]
        plan.path, plan.held = "/tokens/create", names  # one creation per name
    elif op == "asset":
        plan.path = rng.choice(("/assets/challenge", "/assets/token", "/keys"))
        plan.held = 1 if plan.path == "/keys" else n  # the first validation fetches
    else:
        plan.remote = rng.random() < 0.5
        plan.path = rng.choice(("/keys", "/assets/validate") if plan.remote else ("/keys",))
        plan.held = 1 if plan.path == "/keys" else n
    return plan


# -- the iteration ----------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    kind: str  # ok | cancelled | a TokenSDKError's class name | unexpected ...
    value: Any = None


class Callers:
    """Runs the callers, each in its own cancel scope, and records how each ended."""

    def __init__(self, tg: anyio.abc.TaskGroup) -> None:
        self._tg = tg
        self.scopes: list[anyio.CancelScope] = []
        self.tasks: list[asyncio.Task[Any] | None] = []
        self.outcomes: dict[int, Outcome] = {}
        self._all_done = anyio.Event()

    def start(self, work: Sequence[Callable[[], Awaitable[Any]]]) -> None:
        for index, call in enumerate(work, start=len(self.scopes)):
            scope = anyio.CancelScope()
            self.scopes.append(scope)
            self.tasks.append(None)
            self._tg.start_soon(self._run, index, scope, call)

    async def _run(
        self, index: int, scope: anyio.CancelScope, call: Callable[[], Awaitable[Any]]
    ) -> None:
        self.tasks[index] = asyncio.current_task()
        outcome = Outcome("cancelled")
        with scope:
            try:
                outcome = Outcome("ok", await call())
            except TokenSDKError as exc:
                outcome = Outcome(type(exc).__name__, exc)
            except Exception as exc:  # a bug: recorded, and the outcome check fails
                outcome = Outcome(f"unexpected {exc!r}", exc)
        self.outcomes[index] = outcome
        if len(self.outcomes) == len(self.scopes):
            self._all_done.set()

    async def wait(self) -> None:
        await self._all_done.wait()


def leftover_tasks(before: set[asyncio.Task[Any]]) -> list[asyncio.Task[Any]]:
    """Tasks started since ``before`` that still run, the service's connections aside."""
    accept = asyncio.selector_events.BaseSelectorEventLoop._accept_connection2  # type: ignore[attr-defined]
    serving = {RequestHandler.start.__code__, RequestHandler._handle_request.__code__}
    serving.add(accept.__code__)  # the service accepting a connection
    current = asyncio.current_task()
    return [
        task
        for task in asyncio.all_tasks() - before
        if task is not current and getattr(task.get_coro(), "cr_code", None) not in serving
    ]


@pytest.mark.timeout(180 + ITERATIONS)  # the suite's guard, stretched for long runs
@pytest.mark.parametrize("op", OPERATIONS)
async def test_cancel_and_close_at_seeded_points(op: str, tmp_path: Path) -> None:
    for iteration in range(ITERATIONS):
        plan = draw(op, iteration)
        where = f"TOKENSDK_SEED={SEED} {op} iteration {iteration}: {plan}"
        # A service and a clock of its own: the service may still be finishing the
        # requests of the previous iteration's cancelled callers, and counting them.
        clock = ManualClock()
        try:
            with anyio.fail_after(GUARD):
                async with service(
                    clock, access_ttl=60, assets={"door": SIGNER.public_key_hex}
                ) as svc:
                    token = await _issue_asset_token(svc, clock) if op == "validate" else ""
                    await _iteration(svc, clock, plan, tmp_path / f"{iteration}.json", token, where)
        except TimeoutError:
            pytest.fail(f"hung for {GUARD}s: {where}")


async def _iteration(
    svc: RunningService, clock: ManualClock, plan: Plan, path: Path, token: str, where: str
) -> None:
    store: StateStore = FileStore(path) if plan.store == "file" else MemoryStore()
    gate = Gate()
    session = Session(
        svc.url,
        clock=clock,
        store=store,
        retry=RETRY,
        timeout=GUARD,
        rng=random.Random(0),
        attempt_hook=gate,
    )
    hold = Hold(0)  # none held before the point
    stats = svc.stats
    before_tasks = set(asyncio.all_tasks())
    async with anyio.create_task_group() as tg:
        callers = Callers(tg)
        async with session:
            events = session.events()
            if plan.op != "login":
                await session.login("alice", PASSWORDS["alice"])
            old = session.credentials
            counts = _counts(svc)
            if plan.point != "start":
                point = "sent" if plan.point == "in flight" else plan.point
                hold = gate.hold(plan.path, point, plan.held)
            if plan.op == "refresh":
                assert old is not None
                # The timer's refresh starts as the clock passes its due time: the
                # callers join it (the mandatory window, 6 s for 60 s tokens) or it
                # runs on its own while they get the current token at once.
                due = session.next_refresh
                assert due is not None
                target = old.access_deadline - 1.0 if plan.mode == "mandatory" else due
                clock.advance(target - clock.monotonic())
            callers.start([_work(session, plan, call, token) for call in plan.calls])
            if plan.point == "start":
                _cancel(callers, plan)
            else:
                await hold.wait_held(plan.held)
                if plan.point == "in flight":
                    hold.open()
                    for _ in range(plan.steps):
                        await anyio.lowlevel.checkpoint()
                _cancel(callers, plan)
            if not plan.close:
                hold.open()
                await callers.wait()
                await _settle(plan, events)
            # else: leaving the block closes the session right at the point
        hold.open()  # held callers of a closed session go on (and fail typed)
    check = _CHECKS[plan.op]
    check(plan, callers.outcomes, session, old, _deltas(svc, counts), where)
    # Complete and final: what the session ended with, nothing older, nothing torn
    # (and nothing at all if its state never changed).
    snapshot = session.snapshot
    expected = snapshot_to_document(snapshot) if snapshot.revision else None
    assert await store.load() == expected, f"store != state: {where}"
    assert not leftover_tasks(before_tasks), f"tasks left: {where}"
    assert stats.expired_bearers == 0, where
    assert stats.refresh_reuses == 0, where  # no refresh token was ever sent twice


# -- what each caller does ----------------------------------------------------------


def _work(session: Session, plan: Plan, call: str, token: str) -> Callable[[], Awaitable[Any]]:
    if call == "login":
        return lambda: session.login("alice", PASSWORDS["alice"])
    if call == "access_token":
        return session.access_token
    if call == "token_refresh":
        return session.token_refresh
    if call.startswith("mac "):
        name = call.removeprefix("mac ")
        return lambda: session.token_store.request_access_token(name, Authentication.possession())
    if call == "asset":
        return lambda: session.access_tokens.request("door", SIGNER)
    return lambda: session.validate_access_token(token, remote=plan.remote)


def _cancel(callers: Callers, plan: Plan) -> None:
    for index in plan.cancelled:
        callers.scopes[index].cancel()


async def _settle(plan: Plan, events: EventStream) -> None:
    """Wait for the work the session does for nobody (its callers all cancelled)."""
    if plan.op == "refresh":
        await _wait_for(events, EventType.REFRESHED)
    elif plan.op == "mac":
        for _ in set(plan.calls):  # a creation per name
            await _wait_for(events, EventType.MAC_TOKEN_ADDED)


async def _wait_for(events: EventStream, kind: EventType) -> None:
    async for event in events:
        if event.type is kind:
            return
        # Failing here beats waiting for the guard.
        assert event.type not in (EventType.REFRESH_FAILED, EventType.SESSION_LOST), event


# -- what the service saw -----------------------------------------------------------

_COUNTED = ("logins", "refreshes", "mac_tokens_created", "asset_tokens_issued")


def _counts(svc: RunningService) -> dict[str, int]:
    counts = {name: getattr(svc.stats, name) for name in _COUNTED}
    counts["keys"] = svc.stats.requests_by_path["/v1/keys"]
    # A login or a rotation stores one refresh token; a retry (a request sent again
    # with its idempotency key) stores none and counts as a refresh all the same.
    counts["refresh_tokens"] = len(svc.state.refresh_tokens)
    return counts


def _deltas(svc: RunningService, before: dict[str, int]) -> dict[str, int]:
    return {name: value - before[name] for name, value in _counts(svc).items()}


# -- the checks, one per operation ----------------------------------------------------


def _allowed(plan: Plan, index: int, *, blocks: bool = True, closed_ok: bool = False) -> set[str]:
    """The outcomes caller ``index`` may get under ``plan``.

    Args:
        blocks: The caller is blocked on the held request when the cancel (or
            the close) comes, so it cannot have finished before.
        closed_ok: The caller needs no commit, so it may still finish after the
            session closed.
    """
    cancelled = index in plan.cancelled
    early = not blocks or plan.point == "in flight"  # may have finished already
    if cancelled:
        allowed = {"cancelled", "ok"} if early else {"cancelled"}
        if plan.close:
            # anyio delivers a cancellation at the caller's next checkpoint: one not
            # started yet, or woken already, runs on to it and may meet the closed
            # session first.
            allowed.add("SessionClosed")
        return allowed
    if not plan.close:
        return {"ok"}
    if closed_ok or early:
        return {"ok", "SessionClosed"}
    return {"SessionClosed"}


def _check_outcomes(
    plan: Plan,
    outcomes: dict[int, Outcome],
    where: str,
    also: frozenset[str] = frozenset(),
    **allowed: Any,
) -> list[Any]:
    assert sorted(outcomes) == list(range(len(plan.calls))), where
    results = []
    for index, outcome in sorted(outcomes.items()):
        ok = _allowed(plan, index, **allowed) | also
        assert outcome.kind in ok, f"caller {index} got {outcome}, not one of {ok}: {where}"
        if outcome.kind == "ok":
            results.append(outcome.value)
    return results


def _check_login(
    plan: Plan,
    outcomes: dict[int, Outcome],
    session: Session,
    old: Credentials | None,
    deltas: dict[str, int],
    where: str,
) -> None:
    ok = _check_outcomes(plan, outcomes, where)
    creds = session.credentials
    # Logged in exactly when a caller's login got through: a login whose caller
    # went away (or whose session closed) before its answer is never taken.
    assert (session.status is SessionStatus.ACTIVE) == bool(ok), where
    assert (creds is not None) == bool(ok), where
    assert creds is None or creds.username == "alice", where
    if plan.point == "sent":  # the ones held were never sent, the others got through
        assert deltas["logins"] == len(ok), where
    elif plan.point == "answered":  # the service logged every one of them in
        assert deltas["logins"] == len(plan.calls), where
    else:
        assert deltas["logins"] >= len(ok), where


def _check_refresh(
    plan: Plan,
    outcomes: dict[int, Outcome],
    session: Session,
    old: Credentials | None,
    deltas: dict[str, int],
    where: str,
) -> None:
    assert old is not None, where
    new = session.credentials
    assert new is not None, where
    # One rotation for any number of callers (and the timer): never two. The caller
    # that flies the refresh (in its own task) may be cancelled mid-request: the
    # session sends it again with the same idempotency key, and the service answers
    # that retry with the pair it minted (a refresh request, no rotation).
    rotations = deltas["refresh_tokens"] - deltas["logins"]
    assert rotations <= 1, f"{deltas}: {where}"
    assert deltas["refreshes"] <= 2, f"{deltas}: {where}"
    if new != old:
        assert rotations == 1, where
    if not plan.close:
        assert rotations == 1, f"{deltas}: {where}"
        assert new != old, where
    elif plan.point == "sent":
        assert deltas["refreshes"] == 0, where
        assert new == old, where
    elif plan.point == "answered":
        # The service rotated, the SDK never saw the answer: it keeps the pair it
        # had (the refresh token now refused; the next refresh says so, typed).
        assert deltas["refreshes"] == 1, where
        assert new == old, where
    for index, outcome in outcomes.items():
        fast = plan.mode == "background" and plan.calls[index] == "access_token"
        assert outcome.kind in _allowed(plan, index, blocks=not fast), (
            f"caller {index} got {outcome}: {where}"
        )
        if outcome.kind != "ok":
            continue
        if fast:
            # Before the mandatory window, a caller gets the current token at once,
            # before any answer to the refresh can have come back.
            assert outcome.value == old.access_token, where
        elif plan.calls[index] == "access_token":
            assert outcome.value == new.access_token, where
        else:
            assert outcome.value == new, where


def _check_mac(
    plan: Plan,
    outcomes: dict[int, Outcome],
    session: Session,
    old: Credentials | None,
    deltas: dict[str, int],
    where: str,
) -> None:
    _check_outcomes(plan, outcomes, where)
    names = {call.removeprefix("mac ") for call in plan.calls}
    tokens = session.snapshot.mac_tokens
    # One creation per name, whoever waits for it and whoever was cancelled.
    assert deltas["mac_tokens_created"] <= len(names), where
    if not plan.close:
        assert set(tokens) == names, where
        assert deltas["mac_tokens_created"] == len(names), where
    elif plan.point in ("sent", "answered"):
        assert not tokens, where
        assert deltas["mac_tokens_created"] == (len(names) if plan.point == "answered" else 0)
    for index, outcome in outcomes.items():
        if outcome.kind == "ok":
            assert tokens[plan.calls[index].removeprefix("mac ")] == outcome.value, where


def _check_asset(
    plan: Plan,
    outcomes: dict[int, Outcome],
    session: Session,
    old: Credentials | None,
    deltas: dict[str, int],
    where: str,
) -> None:
    # A caller whose key fetch was cancelled must not fail the ones waiting for it.
    ok = _check_outcomes(plan, outcomes, where)
    items = session.snapshot.access_tokens
    # Each token a caller got was issued once; on a shared store (a FileStore) the
    # requests for one asset run under the fleet's lock, and a later caller may take
    # the token an earlier one just obtained instead of asking again.
    assert deltas["asset_tokens_issued"] >= len({item.token for item in ok}), where
    # One key fetch, and another only after a fetching caller went away.
    assert deltas["keys"] <= 1 + len(plan.cancelled), where
    if ok and not plan.close:
        (item,) = items
        assert item in ok, where  # the one put last
    else:
        assert all(item in ok for item in items), where
    assert all(item.asset_id == "door" for item in ok), where


def _check_validate(
    plan: Plan,
    outcomes: dict[int, Outcome],
    session: Session,
    old: Credentials | None,
    deltas: dict[str, int],
    where: str,
) -> None:
    # Validation commits nothing: after a close it may still finish.
    ok = _check_outcomes(plan, outcomes, where, closed_ok=True)
    assert all(info.asset_ids == ("door",) for info in ok), where
    assert not session.snapshot.access_tokens, where
    # One key fetch, and another only after a fetching caller went away.
    assert deltas["keys"] <= 1 + len(plan.cancelled), where
    assert deltas["keys"] or not ok, where


_CHECKS = {
    "login": _check_login,
    "refresh": _check_refresh,
    "mac": _check_mac,
    "asset": _check_asset,
    "validate": _check_validate,
}


async def _issue_asset_token(svc: RunningService, clock: ManualClock) -> str:
    async with Session(svc.url, clock=clock) as issuer:
        await issuer.login("bob", PASSWORDS["bob"])
        return (await issuer.access_tokens.request("door", SIGNER)).token


# -- a key fetch whose caller goes away ---------------------------------------------


@pytest.mark.parametrize("point", ["sent", "answered"])
@pytest.mark.parametrize("call", ["validate", "request"])
async def test_a_caller_queued_behind_a_cancelled_key_fetch_gets_the_keys(
    clock: ManualClock, call: str, point: str
) -> None:
    """The caller fetching the keys is cancelled; the one queued behind it must succeed.

    ``validate`` checks a token another session was just issued (a fetch that is
    rate-limited), ``request`` runs proof of key for two callers at once (a fetch
    forced: the token comes from the service itself). Both callers look at the
    validator before either fetch starts, then queue on its lock.
    """
    async with service(clock, access_ttl=60, assets={"door": SIGNER.public_key_hex}) as svc:
        token = await _issue_asset_token(svc, clock)
        gate = Gate()
        session = Session(svc.url, clock=clock, retry=RETRY, timeout=GUARD, attempt_hook=gate)
        if call == "request":  # both have their tokens before either validates
            tokens = gate.hold("/assets/token", "answered", 2)
        fetch = gate.hold("/keys", point, 1)  # the first fetch only
        keys_before = svc.stats.requests_by_path["/v1/keys"]
        with anyio.fail_after(GUARD):
            async with session, anyio.create_task_group() as tg:
                await session.login("alice", PASSWORDS["alice"])
                work: Callable[[], Awaitable[object]]
                if call == "validate":
                    work = functools.partial(session.validate_access_token, token)
                else:
                    work = functools.partial(session.access_tokens.request, "door", SIGNER)
                callers = Callers(tg)
                callers.start([work, work])
                if call == "request":
                    await tokens.wait_held(2)
                    tokens.open()
                await fetch.wait_held(1)
                await anyio.wait_all_tasks_blocked()  # no I/O between a token and the lock
                lock = session.access_tokens.validator._lock
                assert lock.statistics().tasks_waiting == 1  # queued behind the fetch
                fetcher = callers.tasks.index(fetch.tasks[0])
                callers.scopes[fetcher].cancel()
                await callers.wait()
        first, second = callers.outcomes[fetcher], callers.outcomes[1 - fetcher]
        assert first.kind == "cancelled"
        assert second.kind == "ok", second
        if call == "validate":
            assert second.value.asset_ids == ("door",)
        else:
            assert second.value.asset_id == "door"
            assert session.snapshot.access_tokens == (second.value,)
        # The second caller fetched the keys itself (the service answered the first
        # one too when its caller went away only after the answer).
        fetched = svc.stats.requests_by_path["/v1/keys"] - keys_before
        assert fetched == (2 if point == "answered" else 1)


async def test_callers_queued_behind_a_failed_key_fetch_get_its_error(
    clock: ManualClock,
) -> None:
    """A valid token whose keys could not be fetched is not a token with an unknown key.

    validate() documents ServiceUnavailable when keys were needed and the service
    could not be reached; UnknownKey (a TokenInvalid) would make AccessTokens drop
    a valid token from the array.
    """
    async with service(clock, access_ttl=60, assets={"door": SIGNER.public_key_hex}) as svc:
        token = await _issue_asset_token(svc, clock)
        url = svc.url
    # The service is gone: its port refuses connections (a real network failure).
    gate = Gate()
    session = Session(url, clock=clock, retry=RETRY, timeout=GUARD, attempt_hook=gate)
    fetch = gate.hold("/keys", "sent", 1)
    with anyio.fail_after(GUARD):
        async with session, anyio.create_task_group() as tg:
            callers = Callers(tg)
            work = functools.partial(session.validate_access_token, token)
            callers.start([work, work])
            await fetch.wait_held(1)
            await anyio.wait_all_tasks_blocked()  # no I/O before the validator's lock
            assert session.access_tokens.validator._lock.statistics().tasks_waiting == 1
            fetch.open()
            await callers.wait()
    kinds = [callers.outcomes[i].kind for i in range(2)]
    assert kinds == ["ServiceUnavailable", "ServiceUnavailable"]

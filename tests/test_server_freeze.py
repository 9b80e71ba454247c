"""Freezing an account ends its sessions at once (issue 10 section 5).

Before the fix a freeze only refused new logins: the account's access and refresh
tokens kept working, and so did its MAC tokens and the creation of new ones.
"""

from __future__ import annotations

import base64
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest
from _service import PASSWORDS, call, login, service

from tokensdk import (
    AccountFrozen,
    Authentication,
    EventType,
    ManualClock,
    RetryConfig,
    Session,
    SessionLost,
    SessionStatus,
)
from tokensdk.mac import build_header
from tokensdk.server import RunningService

pytestmark = pytest.mark.anyio

POSSESSION = {"factors": ["possession"]}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@attrs.define
class Signedin:
    """What a logged-in user holds: a pair and a MAC token (its refresh token rotates)."""

    access: str
    refresh: str
    token_id: str
    secret: str


async def sign_in(http: aiohttp.ClientSession, svc: RunningService, user: str) -> Signedin:
    tokens = await login(http, svc, user)
    status, mac, _ = await call(
        http, svc, "POST", "/v1/tokens/create", POSSESSION, token=tokens["accessToken"]
    )
    assert status == 200, mac
    held = Signedin(
        tokens["accessToken"], tokens["refreshToken"], mac["tokenId"], mac["tokenSecret"]
    )
    assert await outcomes(http, svc, user, held) == WORKING
    return held


async def outcomes(
    http: aiohttp.ClientSession, svc: RunningService, user: str, held: Signedin
) -> dict[str, Any]:
    """Try every credential of ``held`` (the refresh token last: it rotates)."""
    results: dict[str, Any] = {}
    status, body, headers = await call(http, svc, "GET", "/v1/me", token=held.access)
    results["bearer"] = (status, body.get("error"), headers.get("WWW-Authenticate"))
    status, body, _ = await call(
        http, svc, "POST", "/v1/login/with-token", {"username": user, "accessToken": held.access}
    )
    results["login-with-token"] = (status, body.get("error"))
    status, body, _ = await call(
        http, svc, "POST", "/v1/tokens/create", POSSESSION, token=held.access
    )
    results["mac-create"] = (status, body.get("error"))
    now_ms = int(svc.config.clock.time() * 1000)
    header = build_header(held.token_id, base64.b64decode(held.secret), now_ms)
    status, body, _ = await call(
        http, svc, "GET", "/v1/me/token", headers={"X-PowerAuth-Token": header}
    )
    results["mac-header"] = (status, body.get("error"))
    status, body, _ = await call(
        http, svc, "POST", "/v1/refresh", {"username": user, "refreshToken": held.refresh}
    )
    results["refresh"] = (status, body.get("error"))
    if status == 200:
        held.refresh = body["refreshToken"]
    return results


WORKING = {
    "bearer": (200, None, None),
    "login-with-token": (200, None),
    "mac-create": (200, None),
    "mac-header": (200, None),
    "refresh": (200, None),
}
FROZEN = {
    "bearer": (401, "invalid_token", 'Bearer error="invalid_token"'),
    "login-with-token": (403, "account_frozen"),
    "mac-create": (401, "invalid_token"),
    "mac-header": (401, "token_invalid"),
    "refresh": (403, "account_frozen"),
}


async def test_freezing_a_running_account_revokes_its_sessions_at_once(
    http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    async with service(clock) as svc:
        phone, laptop = await sign_in(http, svc, "alice"), await sign_in(http, svc, "alice")
        bob = await sign_in(http, svc, "bob")

        assert svc.freeze_user("alice") == 2

        assert await outcomes(http, svc, "alice", phone) == FROZEN
        assert await outcomes(http, svc, "alice", laptop) == FROZEN
        assert await outcomes(http, svc, "bob", bob) == WORKING
        families = {r.family for r in svc.state.access.values() if r.username == "alice"}
        assert all(svc.state.families[f].revoked for f in families)
        assert not [t for t in svc.state.mac_tokens.values() if t.username == "alice"]
        status, body, _ = await call(
            http, svc, "POST", "/v1/login", {"username": "alice", "password": PASSWORDS["alice"]}
        )
        assert (status, body["error"]) == (403, "account_frozen")
        assert svc.freeze_user("alice") == 0  # again: nothing left to revoke
        assert svc.freeze_user("nobody") == 0


async def test_freezing_at_start_revokes_the_sessions_kept_in_the_database(
    http: aiohttp.ClientSession, clock: ManualClock, tmp_path: Path
) -> None:
    # The reproduction: restarted with --frozen-user, the service refused
    # the password but the saved tokens and MAC token kept working.
    db = str(tmp_path / "s.db")
    async with service(clock, db=db) as svc:
        held = await sign_in(http, svc, "alice")
    async with service(clock, db=db, frozen_users=frozenset({"alice"})) as svc:
        assert await outcomes(http, svc, "alice", held) == FROZEN
    # Frozen in the database, unfrozen by configuration: the old sessions stay dead.
    async with service(clock, db=db) as svc:
        results = await outcomes(http, svc, "alice", held)
        assert results["bearer"][0] == results["mac-header"][0] == 401
        assert results["refresh"] == (401, "invalid_token")


async def test_a_frozen_account_is_refused_even_where_no_family_was_revoked(
    http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    # Frozen by other means (an operator's edit, another instance): the check at
    # authentication refuses it all the same.
    async with service(clock) as svc:
        held = await sign_in(http, svc, "alice")
        record = svc.state.users["alice"]
        svc.state.users.put("alice", attrs.evolve(record, frozen=True))

        assert await outcomes(http, svc, "alice", held) == FROZEN

        svc.state.users.put("alice", record)
        assert await outcomes(http, svc, "alice", held) == WORKING


async def test_the_sdk_session_ends_and_is_not_retried(clock: ManualClock) -> None:
    relogins: list[Session] = []

    async def relogin(session: Session) -> tuple[str, str]:
        relogins.append(session)
        return "alice", PASSWORDS["alice"]

    async with (
        service(clock) as svc,
        Session(
            svc.url,
            clock=clock,
            relogin=relogin,
            retry=RetryConfig(initial=0.1, maximum=0.5, jitter=0.0),
            rng=random.Random(1),
        ) as session,
    ):
        events = session.events()
        await session.login("alice", PASSWORDS["alice"])
        await session.token_store.request_access_token("main", Authentication.possession())
        svc.freeze_user("alice")

        with pytest.raises(SessionLost) as lost:
            await session.token_refresh()

        assert lost.value.reason == "account_frozen"
        assert session.status is SessionStatus.NEEDS_LOGIN
        assert session.credentials is None
        assert relogins == [session]  # tried once: the 403 is final
        assert svc.stats.requests_by_path["/v1/refresh"] == 1
        assert svc.stats.requests_by_path["/v1/login"] == 2  # the login and the relogin
        with pytest.raises(AccountFrozen):
            await session.login("alice", PASSWORDS["alice"])
        await events.aclose()
        reasons = [e.detail for e in [e async for e in events] if e.type is EventType.SESSION_LOST]
        assert reasons == ["account_frozen"]


async def test_the_sdk_resume_from_a_saved_pair_is_lost(clock: ManualClock) -> None:
    async with service(clock) as svc:
        async with Session(svc.url, clock=clock) as first:
            await first.login("alice", PASSWORDS["alice"])
            saved = first.credentials
        assert saved is not None
        svc.freeze_user("alice")
        async with Session(svc.url, clock=clock) as second:
            with pytest.raises(SessionLost) as lost:
                await second.login_with_token(saved)
            assert lost.value.reason == "account_frozen"
            assert second.status is SessionStatus.NEEDS_LOGIN

"""Refresh retries with an idempotency key get the first answer again; anything else is reuse.

One test per reproduction of issue 10 section 1 (a replayed refresh request took
over the session); each failed on the service before the fix, as its comment says.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from _service import call, login, service

from tokensdk import ManualClock
from tokensdk.server import RunningService
from tokensdk.server._state import token_digest
from tokensdk.server._vault import SealError, derive_key, record_aad, unseal

pytestmark = pytest.mark.anyio

KEY = "k1"
HOLDER = "cd" * 32  # an Ed25519 public key is any 32 bytes that decode as a point
LABEL = "tokensdk refresh-retry answer v1"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def refresh(
    http: aiohttp.ClientSession, svc: RunningService, token: str, key: str | None = KEY
) -> tuple[int, Any]:
    body = {"username": "alice", "refreshToken": token}
    if key is not None:
        body["idempotencyKey"] = key
    status, answer, _ = await call(http, svc, "POST", "/v1/refresh", body)
    return status, answer


async def me(http: aiohttp.ClientSession, svc: RunningService, access: str) -> int:
    return (await call(http, svc, "GET", "/v1/me", token=access))[0]


def database_bytes(directory: Path) -> bytes:
    """Every byte of the database and its side files (not the key file)."""
    return b"".join(p.read_bytes() for p in directory.glob("s.db*") if p.suffix != ".key")


def pair(answer: dict[str, Any]) -> tuple[str, str]:
    return answer["accessToken"], answer["refreshToken"]


async def assert_revoked(
    http: aiohttp.ClientSession, svc: RunningService, *answers: dict[str, Any]
) -> None:
    """No pair of the family works any more."""
    for answer in answers:
        assert await me(http, svc, answer["accessToken"]) == 401
        status, error = await refresh(http, svc, answer["refreshToken"], key=None)
        assert (status, error["error"]) == (401, "invalid_token")


# -- (a) a replay gets the same answer -----------------------------------------------


async def test_replay_within_the_window_gets_the_same_pair(
    http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    # Before: a replay 5 s later minted a new pair and withdrew the first (A1 got 401).
    async with service(clock) as svc:
        first = await login(http, svc)
        status, answer = await refresh(http, svc, first["refreshToken"])
        assert status == 200
        clock.advance(5.5)

        status, again = await refresh(http, svc, first["refreshToken"])

        assert status == 200
        assert pair(again) == pair(answer)
        # Lifetimes count from the retry, rounded down.
        assert (again["accessExpire"], again["refreshExpire"]) == (300 - 6, 86400 - 6)
        assert again["username"] == "alice"
        assert await me(http, svc, answer["accessToken"]) == 200
        assert len(svc.state.access) == 2  # the login's and the one answer's: nothing minted
        assert svc.stats.refresh_reuses == 0


# -- (b) then the second user of R1 trips reuse --------------------------------------


@pytest.mark.parametrize("client_first", [True, False], ids=["client-first", "thief-first"])
async def test_after_a_replay_the_second_use_of_the_refresh_token_revokes_the_family(
    http: aiohttp.ClientSession, clock: ManualClock, client_first: bool
) -> None:
    # Before: the thief's replay withdrew the client's pair (the client's R1 got
    # invalid_token, nothing was revoked) and the thief's pair kept working.
    async with service(clock) as svc:
        first = await login(http, svc)
        _, client = await refresh(http, svc, first["refreshToken"])
        clock.advance(5)
        status, thief = await refresh(http, svc, first["refreshToken"])
        assert status == 200

        assert pair(thief) == pair(client)
        # Each party refreshes R1 with a key of its own.
        first_user, second_user = ("client", "thief") if client_first else ("thief", "client")
        status, winner = await refresh(http, svc, client["refreshToken"], key=first_user)
        assert status == 200
        status, error = await refresh(http, svc, thief["refreshToken"], key=second_user)

        assert (status, error["error"]) == (401, "refresh_token_reused")
        assert svc.stats.refresh_reuses == 1
        await assert_revoked(http, svc, winner, client, thief)


# -- (c) the window is fixed ---------------------------------------------------------


async def test_replays_do_not_extend_the_window(
    http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    # Before: each replay restarted a 60 s window; one 31 s after the first success got
    # a new pair.
    async with service(clock) as svc:
        first = await login(http, svc)
        _, answer = await refresh(http, svc, first["refreshToken"])
        for step in (10, 10, 9.5):  # at 10, 20 and 29.5 s
            clock.advance(step)
            status, again = await refresh(http, svc, first["refreshToken"])
            assert (status, pair(again)) == (200, pair(answer))

        clock.advance(0.5)  # exactly 30 s after the first success: closed
        status, error = await refresh(http, svc, first["refreshToken"])

        assert (status, error["error"]) == (401, "refresh_token_reused")
        await assert_revoked(http, svc, answer)


async def test_replays_at_50_100_150_seconds_are_refused(
    http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    # The reproduction: before, all three got 200 and a working pair.
    async with service(clock) as svc:
        first = await login(http, svc)
        _, answer = await refresh(http, svc, first["refreshToken"])
        outcomes = []
        for _ in range(3):
            clock.advance(50)
            status, body = await refresh(http, svc, first["refreshToken"])
            outcomes.append((status, body["error"]))

        assert outcomes == [
            (401, "refresh_token_reused"),
            (401, "invalid_token"),  # the family is revoked
            (401, "invalid_token"),
        ]
        await assert_revoked(http, svc, answer)


async def test_window_is_configurable(http: aiohttp.ClientSession, clock: ManualClock) -> None:
    async with service(clock, idempotency_window=10.0) as svc:
        first = await login(http, svc)
        _, answer = await refresh(http, svc, first["refreshToken"])
        clock.advance(9.5)
        status, again = await refresh(http, svc, first["refreshToken"])
        assert (status, pair(again)) == (200, pair(answer))
        clock.advance(0.5)
        status, error = await refresh(http, svc, first["refreshToken"])
        assert (status, error["error"]) == (401, "refresh_token_reused")


async def test_an_answer_to_a_keyed_refresh_names_the_window(
    http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    """The client learns that a retry with its key is answered, and for how long."""
    async with service(clock, idempotency_window=12.0) as svc:
        first = await login(http, svc)
        assert "idempotencyWindow" not in first  # a login has no key
        status, answer = await refresh(http, svc, first["refreshToken"])
        assert (status, answer["idempotencyWindow"]) == (200, 12.0)
        status, again = await refresh(http, svc, first["refreshToken"])  # a retry
        assert (status, again["idempotencyWindow"]) == (200, 12.0)
        async with http.post(
            svc.url + "/v1/refresh",
            json={"username": "alice", "refreshToken": answer["refreshToken"]},
        ) as response:
            assert response.status == 200
            assert "idempotencyWindow" not in await response.json()  # no key, no window


async def test_window_zero_turns_the_extension_off(
    http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    """Window 0: the service of contract v1 alone; a key is ignored, a resend is reuse."""
    async with service(clock, idempotency_window=0) as svc:
        first = await login(http, svc)
        status, answer = await refresh(http, svc, first["refreshToken"])
        assert status == 200
        assert "idempotencyWindow" not in answer
        status, error = await refresh(http, svc, first["refreshToken"])
        assert (status, error["error"]) == (401, "refresh_token_reused")
        await assert_revoked(http, svc, answer)


@pytest.mark.parametrize("window", [-1.0, 30.5, float("nan"), float("inf")])
def test_window_out_of_range_is_refused(window: float) -> None:
    from tokensdk.server._state import ServiceState

    with pytest.raises(ValueError, match="idempotency_window"):
        ServiceState(idempotency_window=window)


# -- (d) using the answer closes the window --------------------------------------------


async def _use(
    http: aiohttp.ClientSession, svc: RunningService, how: str, answer: dict[str, Any]
) -> None:
    """Use a token of ``answer`` the way ``how`` names."""
    access = answer["accessToken"]
    if how == "me":
        result = await call(http, svc, "GET", "/v1/me", token=access)
    elif how == "login-with-token":
        body = {"username": "alice", "accessToken": access}
        result = await call(http, svc, "POST", "/v1/login/with-token", body)
    elif how == "mac-create":
        body = {"factors": ["possession"]}
        result = await call(http, svc, "POST", "/v1/tokens/create", body, token=access)
    elif how == "mac-remove":
        body = {"tokenId": "00000000-0000-4000-8000-000000000000"}
        result = await call(http, svc, "POST", "/v1/tokens/remove", body, token=access)
        assert result[0] == 404  # authenticated, then found nothing to remove
        return
    elif how == "asset-register":
        body = {"assetId": "door", "publicKey": HOLDER}
        result = await call(http, svc, "POST", "/v1/assets/register", body, token=access)
    else:
        assert how == "refresh"
        result = await call(
            http,
            svc,
            "POST",
            "/v1/refresh",
            {"username": "alice", "refreshToken": answer["refreshToken"]},
        )
    assert result[0] in (200, 201), result


@pytest.mark.parametrize(
    "how",
    ["me", "login-with-token", "mac-create", "mac-remove", "asset-register", "refresh"],
)
async def test_using_a_token_of_the_answer_closes_the_window(
    http: aiohttp.ClientSession, clock: ManualClock, how: str
) -> None:
    # Before: using A1 (at any endpoint) left the window open; a later replay got a
    # new pair. (Refreshing with R1 closed it already: that case pins it.)
    async with service(clock) as svc:
        first = await login(http, svc)
        _, answer = await refresh(http, svc, first["refreshToken"])
        await _use(http, svc, how, answer)
        clock.advance(1)

        status, error = await refresh(http, svc, first["refreshToken"])

        assert (status, error["error"]) == (401, "refresh_token_reused")
        await assert_revoked(http, svc, answer)


# -- (e) a retry is a refresh: expiry holds -----------------------------------------


async def test_replay_after_the_new_refresh_token_expired_is_refused(
    http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    # The reproduction (--refresh-ttl 20): before, after R1 was token_expired,
    # the (R0, K) replay returned a working pair.
    async with service(clock, refresh_ttl=20, access_ttl=10) as svc:
        first = await login(http, svc)
        clock.advance(5)
        _, answer = await refresh(http, svc, first["refreshToken"])
        clock.advance(21)
        status, error = await refresh(http, svc, answer["refreshToken"])
        assert (status, error["code"], error["error"]) == (401, 701, "token_expired")

        status, error = await refresh(http, svc, first["refreshToken"])

        # Presenting R1 showed the answer arrived: the replay is reuse.
        assert (status, error["error"]) == (401, "refresh_token_reused")
        assert len(svc.state.access) == 2  # nothing minted


@pytest.mark.parametrize(
    ("refreshed_at", "replayed_at"),
    [(1, 22), (15, 21)],
    ids=["family-expired", "refresh-token-expired"],
)
async def test_replay_of_an_expired_refresh_is_token_expired(
    http: aiohttp.ClientSession, clock: ManualClock, refreshed_at: float, replayed_at: float
) -> None:
    # Within the window, but the family (first case) or R0 itself (second case: it
    # expired at 20) is past its time. Before: the replay skipped every expiry check
    # and revived the family with a fresh pair.
    async with service(clock, refresh_ttl=20, access_ttl=10) as svc:
        first = await login(http, svc)
        clock.advance(refreshed_at)
        assert (await refresh(http, svc, first["refreshToken"]))[0] == 200
        clock.advance(replayed_at - refreshed_at)

        status, error = await refresh(http, svc, first["refreshToken"])

        assert (status, error["code"], error["error"]) == (401, 701, "token_expired")
        assert len(svc.state.access) == 2  # nothing minted
        assert svc.state.refresh_tokens[token_digest(first["refreshToken"])].answer is None


# -- (f) a copy of the database reveals no answer ------------------------------------


async def test_database_copy_holds_no_token_and_no_readable_answer(
    http: aiohttp.ClientSession, clock: ManualClock, tmp_path: Path
) -> None:
    db = tmp_path / "s.db"
    async with service(clock, db=str(db)) as svc:
        first = await login(http, svc)
        _, answer = await refresh(http, svc, first["refreshToken"], key="a-guessable-key")
    raw = database_bytes(tmp_path)
    for token in (*pair(first), *pair(answer)):
        assert token.encode() not in raw
    assert b"a-guessable-key" not in raw

    digest = token_digest(first["refreshToken"])
    with sqlite3.connect(db) as conn:
        (value,) = conn.execute(
            "SELECT value FROM refresh_tokens WHERE key = ?", (digest,)
        ).fetchone()
    record = json.loads(value)
    assert record["idempotency"] == token_digest("a-guessable-key")
    sealed = record["answer"]
    assert sealed.startswith("v1:")
    aad = record_aad("refresh_tokens", digest)
    # Only R0 and K together open it: not the key file, not a digest, not R0 alone.
    service_key = (tmp_path / "s.db.key").read_bytes()
    for wrong in (
        service_key,
        derive_key(LABEL, first["refreshToken"], "another-key"),
        derive_key(LABEL, digest, token_digest("a-guessable-key")),
        derive_key(LABEL, first["refreshToken"] + "a-guessable-key"),
    ):
        with pytest.raises(SealError):
            unseal(wrong, sealed, aad)
    opened = unseal(derive_key(LABEL, first["refreshToken"], "a-guessable-key"), sealed, aad)
    assert json.loads(opened) == {
        "accessToken": answer["accessToken"],
        "refreshToken": answer["refreshToken"],
    }
    # Bound to its record: the same value under another record key does not open.
    with pytest.raises(SealError):
        unseal(
            derive_key(LABEL, first["refreshToken"], "a-guessable-key"),
            sealed,
            record_aad("refresh_tokens", token_digest(answer["refreshToken"])),
        )


async def test_replay_works_across_a_restart(
    http: aiohttp.ClientSession, clock: ManualClock, tmp_path: Path
) -> None:
    db = str(tmp_path / "s.db")
    async with service(clock, db=db) as svc:
        first = await login(http, svc)
        _, answer = await refresh(http, svc, first["refreshToken"])
    clock.advance(3)
    async with service(clock, db=db) as svc:
        status, again = await refresh(http, svc, first["refreshToken"])
        assert (status, pair(again)) == (200, pair(answer))


# -- (g) and anything else is reuse ---------------------------------------------------


@pytest.mark.parametrize(
    ("second_key", "advance", "use_successor"),
    [(None, 0, False), ("other", 0, False), ("k1", 31, False), ("k1", 0, True)],
    ids=["no-key", "other-key", "after-window", "successor-used"],
)
async def test_anything_else_is_reuse_and_revokes_the_family(
    http: aiohttp.ClientSession,
    clock: ManualClock,
    second_key: str | None,
    advance: float,
    use_successor: bool,
) -> None:
    # The old service answered these as reuse too; pinned so it stays that way.
    async with service(clock) as svc:
        first = await login(http, svc)
        _, second = await refresh(http, svc, first["refreshToken"])
        if use_successor:
            assert (await refresh(http, svc, second["refreshToken"], key=None))[0] == 200
        clock.advance(advance)

        status, error = await refresh(http, svc, first["refreshToken"], key=second_key)

        assert (status, error["error"]) == (401, "refresh_token_reused")
        assert svc.stats.refresh_reuses == 1
        await assert_revoked(http, svc, second)


async def test_a_refresh_without_key_keeps_no_answer(
    http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    async with service(clock) as svc:
        first = await login(http, svc)
        status, _ = await refresh(http, svc, first["refreshToken"], key=None)
        assert status == 200
        record = svc.state.refresh_tokens[token_digest(first["refreshToken"])]
        assert (record.used, record.answer, record.idempotency) == (True, None, None)
        status, error = await refresh(http, svc, first["refreshToken"], key=None)
        assert (status, error["error"]) == (401, "refresh_token_reused")


async def test_bad_idempotency_key_is_a_json_error(
    http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    async with service(clock) as svc:
        first = await login(http, svc)
        body = {"username": "alice", "refreshToken": first["refreshToken"], "idempotencyKey": 5}
        status, error, _ = await call(http, svc, "POST", "/v1/refresh", body)
        assert (status, error["error"]) == (400, "invalid_request")


async def test_the_kept_answer_is_never_in_a_repr(
    http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    async with service(clock) as svc:
        first = await login(http, svc)
        assert (await refresh(http, svc, first["refreshToken"]))[0] == 200
        record = svc.state.refresh_tokens[token_digest(first["refreshToken"])]
        assert record.answer is not None
        assert record.answer not in repr(record)
        assert "answer" not in repr(record)

"""The service's pure core: state rules and the rate limiter, no sockets, time passed in."""

from __future__ import annotations

import hashlib

import pytest

from tokensdk.server._db import MemoryPersistence
from tokensdk.server._ratelimit import SlidingWindowLimiter
from tokensdk.server._state import (
    ApiError,
    AssetRecord,
    BearerRejected,
    ServiceState,
    _revocation_key,
    ha1_digest,
    make_user_record,
    one_time_key_answer,
    token_digest,
    verify_password,
)

T0 = 1_700_000_000.0


def test_limiter_window_and_retry_after() -> None:
    limiter = SlidingWindowLimiter(limit=2, window=10.0)
    assert limiter.retry_after("k", 0.0) is None
    limiter.record("k", 0.0)
    limiter.record("k", 4.0)
    assert limiter.retry_after("k", 4.0) == 6
    assert limiter.retry_after("k", 9.5) == 1  # rounded up, never 0
    assert limiter.retry_after("k", 10.0) is None  # the first event left the window
    assert limiter.retry_after("other", 4.0) is None
    limiter.record("k", 11.0)
    limiter.reset("k")
    assert limiter.retry_after("k", 11.0) is None


def test_limiter_memory_is_bounded() -> None:
    limiter = SlidingWindowLimiter(limit=3, window=1.0)
    for i in range(1000):
        limiter.record(f"user{i}", float(i) / 1000)
        limiter.record("hot", float(i) / 1000)
    assert len(limiter._events["hot"]) == 3
    limiter.purge(5.0)
    assert limiter._events == {}


def test_limiter_sweeps_idle_keys_once_per_window() -> None:
    limiter = SlidingWindowLimiter(limit=3, window=10.0)
    for i in range(1000):
        limiter.record(f"user{i}", i / 1000)
    assert len(limiter) == 1000
    # The first call (at 0.0) swept an empty table; the next sweep is due at 10.0
    # and drops the keys whose events (at <= 0.5) left the window.
    assert limiter.retry_after("somebody", 10.5) is None
    assert len(limiter) == 499
    # No sweep before the next window: a check stays O(1), however large the table.
    limiter.record("user999", 11.5)
    assert len(limiter) == 499
    assert limiter.retry_after("user999", 20.5) is None
    assert len(limiter) == 1  # only the key recorded at 11.5 remains
    for _ in range(3):
        limiter.record("user999", 20.5)
    assert limiter.retry_after("user999", 20.5) == 10


def test_password_hashing() -> None:
    record = make_user_record("alice", "pw", "realm", 2**10, frozen=False)
    assert verify_password(record, "pw", 2**10)
    assert not verify_password(record, "pW", 2**10)
    assert not verify_password(None, "pw", 2**10)
    assert record.ha1 == hashlib.sha256(b"alice:realm:pw").hexdigest()
    assert "pw" not in repr(record)
    assert make_user_record("alice", "pw", "realm", 2**10, False).hash != record.hash  # salted


def test_one_time_key_formula() -> None:
    ha1 = ha1_digest("u", "r", "p")
    expected = hashlib.sha256(("k|" + hashlib.sha256(b"u:r:p").hexdigest()).encode()).hexdigest()
    assert one_time_key_answer("k", ha1) == expected


def _state() -> ServiceState:
    state = ServiceState(access_ttl=10, refresh_ttl=100)
    state.add_user("alice", make_user_record("alice", "pw", "tokensdk", 2**10, False))
    return state


def test_rotation_reuse_and_expiry() -> None:
    state = _state()
    first = state.login("alice", T0)
    second = state.refresh("alice", first.refresh_token, T0 + 1)
    assert state.authenticate_bearer(first.access_token, T0 + 2).username == "alice"
    with pytest.raises(ApiError) as caught:
        state.refresh("alice", first.refresh_token, T0 + 3)
    assert caught.value.error == "refresh_token_reused"
    with pytest.raises(BearerRejected) as rejected:
        state.authenticate_bearer(second.access_token, T0 + 3)
    assert not rejected.value.expired

    third = state.login("alice", T0)
    with pytest.raises(BearerRejected) as rejected:
        state.authenticate_bearer(third.access_token, T0 + 10)
    assert rejected.value.expired
    with pytest.raises(ApiError) as caught:
        state.refresh("alice", third.refresh_token, T0 + 100)
    assert (caught.value.error, caught.value.code) == ("token_expired", 701)


def test_expired_records_answer_expired_until_retention_then_go() -> None:
    state = _state()
    pair = state.login("alice", T0)
    state.maybe_purge(T0 + 101)  # within retention: kept
    with pytest.raises(ApiError) as caught:
        state.login_with_token("alice", pair.access_token, T0 + 101)
    assert caught.value.error == "token_expired"
    state.maybe_purge(T0 + 100 + state.retention + 61)
    assert len(state.access) == len(state.refresh_tokens) == len(state.families) == 0
    with pytest.raises(ApiError) as caught:
        state.login_with_token("alice", pair.access_token, T0 + 5000)
    assert caught.value.error == "invalid_token"


class _CountingPersistence(MemoryPersistence):
    """Counts the deletions each purge pass hands to the writer."""

    def __init__(self) -> None:
        self.deletes = 0

    def delete(self, kind: str, key: str) -> None:
        self.deletes += 1


def test_purge_deletes_in_bounded_batches() -> None:
    # A service restarted after a quiet day: 13,000 families expired at once, each
    # with its tokens and a MAC token. No pass may delete more than PURGE_BATCH
    # records (their deletions are that operation's transaction), and operations
    # keep purging until the backlog is gone, without waiting a minute between.
    db = _CountingPersistence()
    state = ServiceState(access_ttl=10, refresh_ttl=100, db=db)
    for _ in range(13_000):
        pair = state.login("alice", T0)
        state.create_mac_token(state.access[token_digest(pair.access_token)].family, "alice", ())
    records = sum(
        len(t) for t in (state.access, state.refresh_tokens, state.families, state.mac_tokens)
    )
    assert records == 52_000
    late = T0 + 100 + state.retention + 1
    passes = 0
    while len(state.families):
        before = db.deletes
        state.maybe_purge(late)
        assert db.deletes - before <= ServiceState.PURGE_BATCH
        passes += 1
        assert passes <= records // ServiceState.PURGE_BATCH + 1
    assert db.deletes == records
    assert len(state.access) == len(state.refresh_tokens) == len(state.mac_tokens) == 0
    # Once the backlog is gone, passes are once a minute again.
    before = db.deletes
    state.login("alice", late)
    state.maybe_purge(late + 59)
    assert db.deletes == before


def test_purge_takes_mac_tokens_before_their_family() -> None:
    state = _state()
    for _ in range(3):
        pair = state.login("alice", T0)
        family = state.access[token_digest(pair.access_token)].family
        for _ in range(2):
            state.create_mac_token(family, "alice", ("possession",))
    late = T0 + 100 + 1
    # 3 access and 3 refresh tokens go first, then MAC tokens, then the families.
    assert not state.purge(late, limit=7)
    assert len(state.families) == 3
    assert len(state.mac_tokens) == 5
    assert state.purge(late, limit=100)
    assert len(state.families) == len(state.mac_tokens) == 0


def test_one_time_keys() -> None:
    state = _state()
    ha1 = ha1_digest("alice", "tokensdk", "pw")
    key = state.new_one_time_key("alice", T0)
    assert state.use_one_time_key("alice", one_time_key_answer(key, ha1).upper(), T0)
    assert not state.use_one_time_key("alice", one_time_key_answer(key, ha1), T0)
    key = state.new_one_time_key("alice", T0)
    assert not state.use_one_time_key("alice", "\u00e9" * 64, T0)  # non-ASCII: no crash
    assert not state.use_one_time_key("alice", one_time_key_answer(key, ha1), T0)


def test_challenge_never_issued_vs_long_expired() -> None:
    state = _state()
    state.assets.put("a", AssetRecord(public_key="00" * 32))
    fake = {"assetId": "a", "timestamp": str(int(T0)), "nonce": "n"}
    with pytest.raises(ApiError) as caught:
        state.check_challenge(fake, T0)
    assert caught.value.error == "invalid_signature"
    with pytest.raises(ApiError) as caught:
        state.check_challenge(fake, T0 + 300)
    assert caught.value.error == "challenge_expired"
    for timestamp in ("x", "9" * 400, "9" * 5000):
        with pytest.raises(ApiError):
            state.check_challenge({**fake, "timestamp": timestamp}, T0)


def test_revocation_key_ignores_spelling() -> None:
    body = "QUJD" * 30
    token = f"v4.public.{body}.e30"
    assert _revocation_key(token) == _revocation_key(f"v4.public.{body}==.e30")
    assert _revocation_key(token) == _revocation_key(f"v4.public.{body[:5]}\n{body[5:]}.e30")

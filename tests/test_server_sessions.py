"""The reference service, status and renewable session tokens, over real loopback HTTP."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio
import pytest
from _service import PASSWORDS, call, login, service

from tokensdk import ManualClock
from tokensdk.aiohttp import _invalid_token
from tokensdk.server import STATS_KEY, RunningService
from tokensdk.server._app import SERVICE_KEY

pytestmark = pytest.mark.anyio


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _answer(key: str, username: str, password: str, realm: str = "tokensdk") -> str:
    return _sha(key + "|" + _sha(f"{username}:{realm}:{password}"))


def _assert_error(body: Any, error: str, code: int) -> None:
    assert body["error"] == error
    assert body["code"] == code
    assert isinstance(body["message"], str)


async def test_status(http: aiohttp.ClientSession, clock: ManualClock) -> None:
    async with service(clock, realm="example") as svc:
        status, body, _ = await call(http, svc, "GET", "/v1/status")
    assert status == 200
    assert body["serverTime"] == 1_700_000_000_000
    assert body["realm"] == "example"
    assert isinstance(body["version"], str)
    assert svc.url.startswith("http://127.0.0.1:")
    assert not svc.url.endswith("/")


async def test_login_me_and_stats(http: aiohttp.ClientSession, clock: ManualClock) -> None:
    async with service(clock, access_ttl=120, refresh_ttl=3600) as svc:
        tokens = await login(http, svc)
        assert tokens["username"] == "alice"
        assert tokens["accessExpire"] == 120
        assert tokens["refreshExpire"] == 3600
        assert tokens["accessToken"] != tokens["refreshToken"]
        status, body, _ = await call(http, svc, "GET", "/v1/me", token=tokens["accessToken"])
        assert (status, body) == (200, {"username": "alice"})
    assert svc.stats is svc.app[STATS_KEY]
    assert svc.stats.logins == 1
    assert svc.stats.requests_by_path["/v1/me"] == 1
    assert svc.stats.rejected_bearers == 0


async def test_tokens_stored_as_digests_and_passwords_hashed(
    http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    async with service(clock) as svc:
        tokens = await login(http, svc)
        state = svc.state
        assert tokens["accessToken"] not in state.access
        assert _sha(tokens["accessToken"]) in state.access
        assert _sha(tokens["refreshToken"]) in state.refresh_tokens
        record = state.users["alice"]
        assert "wonderland" not in repr(record)
        assert "wonderland" not in {record.hash, record.salt, record.ha1}


@pytest.mark.parametrize(
    ("username", "password"), [("alice", "wrong"), ("mallory", "wonderland"), ("", "")]
)
async def test_login_invalid_credentials_indistinguishable(
    http: aiohttp.ClientSession, clock: ManualClock, username: str, password: str
) -> None:
    async with service(clock) as svc:
        status, body, _ = await call(
            http, svc, "POST", "/v1/login", {"username": username, "password": password}
        )
    assert status == 401
    assert body == {
        "error": "invalid_credentials",
        "code": 401,
        "message": "invalid username or credentials",
    }


async def test_login_frozen(http: aiohttp.ClientSession, clock: ManualClock) -> None:
    async with service(clock, frozen_users=frozenset({"bob"})) as svc:
        status, body, _ = await call(
            http, svc, "POST", "/v1/login", {"username": "bob", "password": "builder"}
        )
        _assert_error(body, "account_frozen", 403)
        assert status == 403
        # A wrong password on a frozen account reveals nothing about the freeze.
        status, body, _ = await call(
            http, svc, "POST", "/v1/login", {"username": "bob", "password": "nope"}
        )
        assert status == 401


async def test_rate_limit_per_username(http: aiohttp.ClientSession, clock: ManualClock) -> None:
    async with service(clock, login_rate_limit=3, login_rate_window=60.0) as svc:
        for _ in range(3):
            status, _, _ = await call(
                http, svc, "POST", "/v1/login", {"username": "alice", "password": "x"}
            )
            assert status == 401
        status, body, headers = await call(
            http, svc, "POST", "/v1/login", {"username": "alice", "password": "wonderland"}
        )
        assert status == 429
        _assert_error(body, "rate_limited", 429)
        assert int(headers["Retry-After"]) == 60
        clock.advance(30)
        status, _, headers = await call(
            http, svc, "POST", "/v1/login", {"username": "alice", "password": "wonderland"}
        )
        assert (status, int(headers["Retry-After"])) == (429, 30)
        # Another user is not affected by alice's failures.
        await login(http, svc, "bob")
        clock.advance(30)
        await login(http, svc, "alice")
        assert svc.stats.rate_limited == 2


async def test_rate_limiters_forget_idle_keys(
    http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    async with service(clock, login_rate_limit=2, ip_rate_limit=1000) as svc:
        inner = svc.app[SERVICE_KEY]
        limiters = (inner.login_limiter, inner.ip_limiter, inner.key_limiter)
        # An attacker sprays usernames: each one is a limiter key.
        for i in range(30):
            status, _, _ = await call(
                http, svc, "POST", "/v1/login", {"username": f"spray{i}", "password": "x"}
            )
            assert status == 401
            status, _, _ = await call(
                http, svc, "POST", "/v1/login/one-time-key", {"username": f"spray{i}"}
            )
            assert status == 200
        assert [len(limiter) for limiter in limiters] == [30, 1, 30]
        clock.advance(60)  # the default window: every sprayed key is idle now
        await _assert_limited_after_two_failures(http, svc)
        status, _, _ = await call(http, svc, "POST", "/v1/login/one-time-key", {"username": "bob"})
        assert status == 200
        assert [len(limiter) for limiter in limiters] == [1, 1, 1]  # alice's, its IP's, bob's
        clock.advance(60)
        await login(http, svc, "bob")
        assert [len(limiter) for limiter in limiters] == [0, 0, 1]  # the key limiter: no call yet
        # Forgetting idle keys changes nothing for a key under attack.
        await _assert_limited_after_two_failures(http, svc)
    assert svc.stats.rate_limited == 2


async def _assert_limited_after_two_failures(
    http: aiohttp.ClientSession, svc: RunningService
) -> None:
    for _ in range(2):
        status, _, _ = await call(
            http, svc, "POST", "/v1/login", {"username": "alice", "password": "x"}
        )
        assert status == 401
    status, body, headers = await call(
        http, svc, "POST", "/v1/login", {"username": "alice", "password": "wonderland"}
    )
    assert status == 429
    _assert_error(body, "rate_limited", 429)
    assert headers["Retry-After"] == "60"


async def test_rate_limit_per_ip(http: aiohttp.ClientSession, clock: ManualClock) -> None:
    async with service(clock, login_rate_limit=100, ip_rate_limit=4) as svc:
        for i in range(4):
            await call(http, svc, "POST", "/v1/login", {"username": f"u{i}", "password": "x"})
        status, _, headers = await call(
            http, svc, "POST", "/v1/login", {"username": "bob", "password": "builder"}
        )
        assert status == 429
        assert int(headers["Retry-After"]) >= 1


async def test_one_time_key_login(http: aiohttp.ClientSession, clock: ManualClock) -> None:
    async with service(clock, realm="r1") as svc:
        _, body, _ = await call(http, svc, "POST", "/v1/login/one-time-key", {"username": "bob"})
        key = body["key"]
        answer = _answer(key, "bob", "builder", realm="r1")
        status, tokens, _ = await call(
            http,
            svc,
            "POST",
            "/v1/login/with-one-time-key",
            {"username": "bob", "hash": answer},
        )
        assert status == 200
        assert tokens["username"] == "bob"
        # Single use.
        status, body, _ = await call(
            http,
            svc,
            "POST",
            "/v1/login/with-one-time-key",
            {"username": "bob", "hash": answer},
        )
        assert status == 401
        _assert_error(body, "invalid_credentials", 401)


async def test_one_time_key_newest_wins_and_expiry(
    http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    async with service(clock) as svc:

        async def new_key() -> str:
            _, body, _ = await call(
                http, svc, "POST", "/v1/login/one-time-key", {"username": "alice"}
            )
            return str(body["key"])

        async def use(key: str) -> int:
            status, _, _ = await call(
                http,
                svc,
                "POST",
                "/v1/login/with-one-time-key",
                {"username": "alice", "hash": _answer(key, "alice", "wonderland")},
            )
            return status

        old, new = await new_key(), await new_key()
        assert await use(old) == 401
        # The failed attempt consumed the pending key too: no guessing at it.
        assert await use(new) == 401
        key = await new_key()
        clock.advance(299)
        assert await use(key) == 200
        key = await new_key()
        clock.advance(300)
        assert await use(key) == 401


async def test_one_time_key_unknown_user_gets_a_useless_key(
    http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    async with service(clock) as svc:
        status, body, _ = await call(
            http, svc, "POST", "/v1/login/one-time-key", {"username": "nobody"}
        )
        assert status == 200
        status, _, _ = await call(
            http,
            svc,
            "POST",
            "/v1/login/with-one-time-key",
            {"username": "nobody", "hash": _answer(body["key"], "nobody", "")},
        )
        assert status == 401


async def test_one_time_key_single_use_under_concurrency(
    http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    async with service(clock, login_rate_limit=1000) as svc:
        _, body, _ = await call(http, svc, "POST", "/v1/login/one-time-key", {"username": "bob"})
        answer = _answer(body["key"], "bob", "builder")
        results: list[int] = []

        async def use() -> None:
            status, _, _ = await call(
                http,
                svc,
                "POST",
                "/v1/login/with-one-time-key",
                {"username": "bob", "hash": answer},
            )
            results.append(status)

        # 100 concurrent uses, as the issue asks; aiohttp's pool holds 100 connections.
        async with anyio.create_task_group() as tg:
            for _ in range(100):
                tg.start_soon(use)
    assert sorted(results) == [200] + [401] * 99


async def test_one_time_key_rate_limited(http: aiohttp.ClientSession, clock: ManualClock) -> None:
    async with service(clock, login_rate_limit=2) as svc:
        for _ in range(2):
            status, _, _ = await call(
                http, svc, "POST", "/v1/login/one-time-key", {"username": "bob"}
            )
            assert status == 200
        status, body, headers = await call(
            http, svc, "POST", "/v1/login/one-time-key", {"username": "bob"}
        )
        assert status == 429
        _assert_error(body, "rate_limited", 429)
        assert int(headers["Retry-After"]) >= 1


async def test_login_with_token(http: aiohttp.ClientSession, clock: ManualClock) -> None:
    async with service(clock, access_ttl=100) as svc:
        tokens = await login(http, svc)
        clock.advance(30.5)
        status, body, _ = await call(
            http,
            svc,
            "POST",
            "/v1/login/with-token",
            {"username": "alice", "accessToken": tokens["accessToken"]},
        )
        assert (status, body) == (200, {"username": "alice", "accessExpire": 69})
        for username, token in [("bob", tokens["accessToken"]), ("alice", "forged")]:
            status, body, _ = await call(
                http,
                svc,
                "POST",
                "/v1/login/with-token",
                {"username": username, "accessToken": token},
            )
            assert status == 401
            _assert_error(body, "invalid_token", 401)
        clock.advance(70)
        status, body, _ = await call(
            http,
            svc,
            "POST",
            "/v1/login/with-token",
            {"username": "alice", "accessToken": tokens["accessToken"]},
        )
        assert status == 401
        _assert_error(body, "token_expired", 701)


async def _refresh(
    http: aiohttp.ClientSession, svc: RunningService, token: str, username: str = "alice"
) -> tuple[int, Any]:
    status, body, _ = await call(
        http, svc, "POST", "/v1/refresh", {"username": username, "refreshToken": token}
    )
    return status, body


async def test_refresh_rotates_and_reuse_revokes_family(
    http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    async with service(clock) as svc:
        first = await login(http, svc)
        other = await login(http, svc)  # another family of the same user
        status, second = await _refresh(http, svc, first["refreshToken"])
        assert status == 200
        assert second["refreshToken"] != first["refreshToken"]
        assert second["accessToken"] != first["accessToken"]
        # The previous access token stays valid until its own expiry.
        status, _, _ = await call(http, svc, "GET", "/v1/me", token=first["accessToken"])
        assert status == 200
        # Reuse of the old refresh token: theft; the whole family goes.
        status, body = await _refresh(http, svc, first["refreshToken"])
        assert status == 401
        _assert_error(body, "refresh_token_reused", 401)
        for token in (first["accessToken"], second["accessToken"]):
            status, _, headers = await call(http, svc, "GET", "/v1/me", token=token)
            assert status == 401
            assert headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
        status, body = await _refresh(http, svc, second["refreshToken"])
        _assert_error(body, "invalid_token", 401)
        # The other family is untouched.
        status, _, _ = await call(http, svc, "GET", "/v1/me", token=other["accessToken"])
        assert status == 200
    assert svc.stats.refreshes == 1
    assert svc.stats.refresh_reuses == 1
    assert svc.stats.rejected_bearers == 2
    assert svc.stats.expired_bearers == 0


async def test_refresh_errors(http: aiohttp.ClientSession, clock: ManualClock) -> None:
    async with service(clock, refresh_ttl=1000) as svc:
        tokens = await login(http, svc)
        status, body = await _refresh(http, svc, "forged")
        assert status == 401
        _assert_error(body, "invalid_token", 401)
        status, body = await _refresh(http, svc, tokens["refreshToken"], username="bob")
        _assert_error(body, "invalid_token", 401)
        clock.advance(1000)
        status, body = await _refresh(http, svc, tokens["refreshToken"])
        assert status == 401
        _assert_error(body, "token_expired", 701)


async def test_expired_bearer_counted(http: aiohttp.ClientSession, clock: ManualClock) -> None:
    async with service(clock, access_ttl=10) as svc:
        tokens = await login(http, svc)
        clock.advance(9.9)
        status, _, _ = await call(http, svc, "GET", "/v1/me", token=tokens["accessToken"])
        assert status == 200
        clock.advance(0.1)
        status, body, headers = await call(http, svc, "GET", "/v1/me", token=tokens["accessToken"])
        assert status == 401
        _assert_error(body, "invalid_token", 401)
        assert headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
        status, _, _ = await call(http, svc, "GET", "/v1/me", token="garbage")
        assert status == 401
        status, _, headers = await call(http, svc, "GET", "/v1/me")
        assert status == 401
    assert svc.stats.rejected_bearers == 2
    assert svc.stats.expired_bearers == 1


async def test_www_authenticate_tells_missing_from_rejected(
    http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    async with service(clock, realm='Acme "prod"', access_ttl=10) as svc:
        tokens = await login(http, svc)
        clock.advance(10)
        # No credentials: RFC 6750 section 3.1, a challenge without an error code.
        missing: list[dict[str, str]] = [
            {},
            {"Authorization": "Basic YWxpY2U6d29uZGVybGFuZA=="},
            {"Authorization": "Bearer"},
            {"Authorization": "Bearer   "},
        ]
        # A bearer presented and refused: the contract's challenge, exactly.
        rejected = [
            {"Authorization": "Bearer forged"},
            {"Authorization": f"bearer {tokens['accessToken']}"},  # expired
        ]
        no_error, refused = 'Bearer realm="Acme \\"prod\\""', 'Bearer error="invalid_token"'
        for method, path in [("GET", "/v1/me"), ("POST", "/v1/logout")]:
            for headers, challenge in [
                *((h, no_error) for h in missing),
                *((h, refused) for h in rejected),
            ]:
                async with http.request(method, svc.url + path, headers=headers) as response:
                    assert response.status == 401, headers
                    assert response.headers.getall("WWW-Authenticate") == [challenge], headers
                    _assert_error(await response.json(), "invalid_token", 401)
                    # What the SDK's aiohttp middleware refreshes on: a refused bearer only.
                    assert _invalid_token(response) is (challenge == refused)
    assert svc.stats.rejected_bearers == 4


async def test_logout_revokes_family(http: aiohttp.ClientSession, clock: ManualClock) -> None:
    async with service(clock) as svc:
        first = await login(http, svc)
        _, second = await _refresh(http, svc, first["refreshToken"])
        status, body, _ = await call(http, svc, "POST", "/v1/logout", token=second["accessToken"])
        assert (status, body) == (204, None)
        for token in (first["accessToken"], second["accessToken"]):
            status, _, _ = await call(http, svc, "GET", "/v1/me", token=token)
            assert status == 401
        status, body = await _refresh(http, svc, second["refreshToken"])
        _assert_error(body, "invalid_token", 401)
        status, body, _ = await call(http, svc, "POST", "/v1/logout", token=second["accessToken"])
        assert status == 401


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"", "application/json"),
        (b"[1, 2]", "application/json"),
        (b'"alice"', "application/json"),
        (b'{"username": 1, "password": "x"}', "application/json"),
        (b'{"username": "alice"}', "application/json"),
        (b'{"username": "alice", "password": null}', "application/json"),
        (b"\xff\xfe", "application/json"),
        (b"[" * 100_00 + b"]" * 100_00, "application/json"),
        (b"username=alice", "application/x-www-form-urlencoded"),
    ],
)
async def test_bad_bodies_get_json_400(
    http: aiohttp.ClientSession, clock: ManualClock, data: bytes, content_type: str
) -> None:
    async with service(clock) as svc:
        status, body, headers = await call(
            http, svc, "POST", "/v1/login", data=data, headers={"Content-Type": content_type}
        )
    assert status == 400
    assert headers["Content-Type"].startswith("application/json")
    _assert_error(body, "invalid_request", 400)


async def test_unknown_route_wrong_method_oversize(
    http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    async with service(clock, max_body=1024) as svc:
        status, body, _ = await call(http, svc, "GET", "/v1/nope")
        assert status == 404
        _assert_error(body, "not_found", 404)
        status, body, _ = await call(http, svc, "GET", "/")
        assert status == 404
        status, body, headers = await call(http, svc, "GET", "/v1/login")
        assert status == 405
        _assert_error(body, "method_not_allowed", 405)
        assert "POST" in headers["Allow"]
        big = {"username": "alice", "password": "x" * 2000}
        status, body, _ = await call(http, svc, "POST", "/v1/login", big)
        assert status == 413
        _assert_error(body, "payload_too_large", 413)
    assert svc.stats.requests_by_path["<unmatched>"] == 3  # 404, 404, 405


async def test_passwords_with_colons_and_unicode(
    http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    async with service(clock, users={"zoë": "pa:ss:wörd"}) as svc:
        status, _, _ = await call(
            http, svc, "POST", "/v1/login", {"username": "zoë", "password": "pa:ss:wörd"}
        )
        assert status == 200


async def test_sqlite_restart_keeps_users_and_families(
    http: aiohttp.ClientSession, clock: ManualClock, tmp_path: Any
) -> None:
    db = str(tmp_path / "service.db")
    async with service(clock, db=db, users={"carol": "c4rol"}) as svc:
        status, tokens, _ = await call(
            http, svc, "POST", "/v1/login", {"username": "carol", "password": "c4rol"}
        )
        assert status == 200
        spent = tokens["refreshToken"]
        status, tokens = await _refresh(http, svc, spent, username="carol")
        assert status == 200, tokens
    # Restart with no configured users: carol and her family survive.
    async with service(clock, db=db, users={}) as svc:
        status, body, _ = await call(http, svc, "GET", "/v1/me", token=tokens["accessToken"])
        assert (status, body) == (200, {"username": "carol"})
        status, _, _ = await call(
            http, svc, "POST", "/v1/login", {"username": "carol", "password": "c4rol"}
        )
        assert status == 200
        status, body = await _refresh(http, svc, spent, username="carol")
        _assert_error(body, "refresh_token_reused", 401)
    async with service(clock, db=db, users={}) as svc:
        status, _, _ = await call(http, svc, "GET", "/v1/me", token=tokens["accessToken"])
        assert status == 401


def test_default_users_fixture_matches() -> None:
    assert PASSWORDS == {"alice": "wonderland", "bob": "builder"}

"""Refresh retries with an idempotency key are served; anything else stays reuse."""

from __future__ import annotations

import aiohttp
import pytest
from _service import call, login, service

from tokensdk import ManualClock

pytestmark = pytest.mark.anyio


async def test_retry_with_the_same_key_gets_a_new_pair_and_withdraws_the_unseen_one(
    clock: ManualClock,
) -> None:
    async with service(clock) as svc, aiohttp.ClientSession() as http:
        first = await login(http, svc)
        body = {"username": "alice", "refreshToken": first["refreshToken"], "idempotencyKey": "k1"}
        status, lost, _ = await call(http, svc, "POST", "/v1/refresh", body)
        assert status == 200

        status, retried, _ = await call(http, svc, "POST", "/v1/refresh", body)

        assert status == 200
        assert retried["refreshToken"] != lost["refreshToken"]
        status, _, _ = await call(http, svc, "GET", "/v1/me", token=lost["accessToken"])
        assert status == 401  # the pair nobody received is withdrawn
        status, _, _ = await call(http, svc, "GET", "/v1/me", token=retried["accessToken"])
        assert status == 200


@pytest.mark.parametrize(
    ("second_key", "advance", "use_successor"),
    [(None, 0, False), ("other", 0, False), ("k1", 61, False), ("k1", 0, True)],
    ids=["no-key", "other-key", "after-grace", "successor-used"],
)
async def test_anything_else_is_reuse_and_revokes_the_family(
    clock: ManualClock, second_key: str | None, advance: float, use_successor: bool
) -> None:
    async with service(clock) as svc, aiohttp.ClientSession() as http:
        first = await login(http, svc)
        body = {"username": "alice", "refreshToken": first["refreshToken"], "idempotencyKey": "k1"}
        _, second, _ = await call(http, svc, "POST", "/v1/refresh", body)
        if use_successor:
            again = {"username": "alice", "refreshToken": second["refreshToken"]}
            assert (await call(http, svc, "POST", "/v1/refresh", again))[0] == 200
        clock.advance(advance)
        replay = {"username": "alice", "refreshToken": first["refreshToken"]}
        if second_key is not None:
            replay["idempotencyKey"] = second_key

        status, error, _ = await call(http, svc, "POST", "/v1/refresh", replay)

        assert (status, error["error"]) == (401, "refresh_token_reused")
        assert svc.stats.refresh_reuses == 1


async def test_bad_idempotency_key_is_a_json_error(clock: ManualClock) -> None:
    async with service(clock) as svc, aiohttp.ClientSession() as http:
        first = await login(http, svc)
        body = {"username": "alice", "refreshToken": first["refreshToken"], "idempotencyKey": 5}
        status, error, _ = await call(http, svc, "POST", "/v1/refresh", body)
        assert (status, error["error"]) == (400, "invalid_request")

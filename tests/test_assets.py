"""Asset access tokens through the session: proof of key, validation, the observable array."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from _service import PASSWORDS, service

from tokensdk import (
    AssetToken,
    EventType,
    InvalidCredentials,
    ManualClock,
    MemoryStore,
    NotFound,
    Session,
    SessionSnapshot,
    TokenExpired,
    TokenRevoked,
    UnknownKey,
)
from tokensdk._assets import Ed25519Signer, TokenValidator, validate_access_token
from tokensdk.server import RunningService

pytestmark = pytest.mark.anyio

SIGNER = Ed25519Signer.from_seed(bytes(range(32)))


@asynccontextmanager
async def asset_service(clock: ManualClock, **kwargs: Any) -> AsyncIterator[RunningService]:
    async with service(clock, assets={"sensor-1": SIGNER.public_key_hex}, **kwargs) as svc:
        yield svc


@asynccontextmanager
async def open_session(
    svc: RunningService, clock: ManualClock, **kwargs: Any
) -> AsyncIterator[Session]:
    async with Session(svc.url, clock=clock, rng=random.Random(3), **kwargs) as session:
        await session.login("alice", PASSWORDS["alice"])
        yield session


async def test_proof_of_key_adds_a_token_that_validates_locally_and_remotely(
    clock: ManualClock,
) -> None:
    seen: list[SessionSnapshot] = []
    async with asset_service(clock) as svc, open_session(svc, clock, on_change=seen.append) as s:
        events = s.events()

        item = await s.access_tokens.request("sensor-1", SIGNER)

        assert list(s.access_tokens) == [item]
        assert s.access_tokens.find("sensor-1") == item
        assert item.expires_at == pytest.approx(clock.time() + 900, abs=1)
        assert item.token not in repr(item)
        info = await s.access_tokens.validate(item.token, remote=True)
        assert info.asset_ids == ("sensor-1",)
        async with TokenValidator(svc.url, clock=clock, remote=True) as standalone:
            assert (await validate_access_token(item.token, standalone)).asset_ids == ("sensor-1",)
        assert s.access_tokens.headers_for("sensor-1") == {"Authorization": f"Bearer {item.token}"}
        await s.changes_delivered()
        assert seen[-1].access_tokens == (item,)
        async for event in events:
            if event.type is EventType.ACCESS_TOKEN_ADDED:
                assert event.detail == "sensor-1"
                break


async def test_wrong_key_and_unknown_asset_are_refused(clock: ManualClock) -> None:
    async with asset_service(clock) as svc, open_session(svc, clock) as s:
        with pytest.raises(InvalidCredentials):
            await s.access_tokens.request("sensor-1", Ed25519Signer.generate())
        with pytest.raises(NotFound):
            await s.access_tokens.request("no-such-asset", SIGNER)
        assert len(s.access_tokens) == 0


async def test_revoked_token_is_removed_when_validated_remotely(clock: ManualClock) -> None:
    async with asset_service(clock) as svc, open_session(svc, clock) as s:
        item = await s.access_tokens.request("sensor-1", SIGNER)
        assert await s.access_tokens.revoke("sensor-1")
        assert len(s.access_tokens) == 0
        s.access_tokens._put(item)  # as if restored from an old save

        with pytest.raises(TokenRevoked):
            await s.access_tokens.validate(item.token, remote=True)

        assert len(s.access_tokens) == 0
        removed = await s.access_tokens.revalidate(remote=True)
        assert removed == []


async def test_expiry_removes_the_token_with_a_change(clock: ManualClock) -> None:
    async with asset_service(clock) as svc, open_session(svc, clock) as s:
        events = s.events()
        item = await s.access_tokens.request("sensor-1", SIGNER)

        clock.advance(900)
        async for event in events:
            if event.type is EventType.ACCESS_TOKEN_REMOVED:
                break

        assert len(s.access_tokens) == 0
        with pytest.raises(TokenExpired):
            await s.access_tokens.validator.validate(item.token)


async def test_renew_requests_a_fresh_token_before_expiry(clock: ManualClock) -> None:
    async with asset_service(clock) as svc, open_session(svc, clock) as s:
        events = s.events()
        first = await s.access_tokens.request("sensor-1", SIGNER, renew=True)

        clock.advance(900 - 60)
        async for event in events:
            if event.type is EventType.ACCESS_TOKEN_REPLACED:
                break

        second = s.access_tokens.find("sensor-1")
        assert second is not None
        assert second.token != first.token
        assert svc.stats.asset_tokens_issued == 2


async def test_key_rotation_old_tokens_still_validate_and_unknown_kid_fetches_once(
    clock: ManualClock,
) -> None:
    async with asset_service(clock) as svc, open_session(svc, clock) as s:
        old = await s.access_tokens.request("sensor-1", SIGNER)
        validator = TokenValidator(svc.url, clock=clock, key_refresh_interval=5)
        await validator.validate(old.token)
        fetches = validator.key_fetches
        svc.rotate_key()
        clock.advance(6)
        new = await s.access_tokens.request("sensor-1", SIGNER)

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(validator.validate, new.token)

        assert validator.key_fetches == fetches + 1
        assert (await validator.validate(old.token)).asset_ids == ("sensor-1",)
        # right after a fetch, an unknown kid is refused without another fetch
        svc.rotate_key()
        newest = await s.access_tokens.request("sensor-1", SIGNER)  # trusted: fetches
        for _ in range(20):
            with pytest.raises(UnknownKey):
                await validator.validate(newest.token)
        assert validator.key_fetches == fetches + 1
        clock.advance(6)
        assert (await validator.validate(newest.token)).asset_ids == ("sensor-1",)
        await validator.aclose()


async def test_restored_array_is_revalidated_and_dead_entries_dropped(clock: ManualClock) -> None:
    async with asset_service(clock) as svc:
        async with open_session(svc, clock) as first:
            good = await first.access_tokens.request("sensor-1", SIGNER)
        saved: list[Any] = [
            {"assetId": "sensor-1", "token": good.token, "expiresAt": good.expires_at},
            {"assetId": "expired", "token": "v4.public.x", "expiresAt": clock.time() - 1},
            {"assetId": "forged", "token": good.token[:-4] + "AAAA", "expiresAt": good.expires_at},
        ]
        async with Session(svc.url, clock=clock, access_tokens=saved) as second:
            events = second.events()
            assert [t.asset_id for t in second.access_tokens] == ["sensor-1", "forged"]
            async for event in events:
                if event.type is EventType.ACCESS_TOKEN_REMOVED:
                    break
            assert [t.asset_id for t in second.access_tokens] == ["sensor-1"]


async def test_restored_token_without_expiry_learns_it_and_expires(clock: ManualClock) -> None:
    async with asset_service(clock) as svc:
        async with open_session(svc, clock) as first:
            good = await first.access_tokens.request("sensor-1", SIGNER)
        async with Session(
            svc.url, clock=clock, access_tokens=[{"assetId": "sensor-1", "token": good.token}]
        ) as second:
            events = second.events()
            await second.access_tokens.revalidate()
            assert second.access_tokens[0].expires_at == good.expires_at

            clock.advance(900)
            async for event in events:
                if event.type is EventType.ACCESS_TOKEN_REMOVED:
                    break
            assert len(second.access_tokens) == 0


async def test_array_is_persisted_through_the_store(clock: ManualClock) -> None:
    store = MemoryStore()
    async with asset_service(clock) as svc:
        async with open_session(svc, clock, store=store) as first:
            item = await first.access_tokens.request("sensor-1", SIGNER)
        async with Session(svc.url, clock=clock, store=store) as second:
            assert list(second.access_tokens) == [item]


async def test_many_tokens_are_removed_in_expiry_order_on_one_timer_heap(
    clock: ManualClock,
) -> None:
    count = 100_000
    now = clock.time()
    order = list(range(count))
    random.Random(5).shuffle(order)
    items = tuple(AssetToken(f"a{i}", f"t{i}", now + 10 + i * 0.01) for i in order)
    async with asset_service(clock) as svc, Session(svc.url, clock=clock) as s:
        events = s.events(buffer=count + 10)
        s._hub.commit(access_tokens=items)
        for item in items:
            s.access_tokens._schedule(item)
        assert len(s._scheduler) == count  # one heap entry per token, no task per token

        removed: list[str] = []
        for _ in range(11):
            clock.advance(100)
            await anyio.wait_all_tasks_blocked()
        while len(removed) < count:
            event = await events.__anext__()
            if event.type is EventType.ACCESS_TOKEN_REMOVED:
                assert event.detail is not None
                removed.append(event.detail)

        assert removed == [f"a{i}" for i in range(count)]
        assert len(s.access_tokens) == 0

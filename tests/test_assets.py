"""Asset access tokens through the session: proof of key, validation, the observable array."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import anyio
import attrs
import pytest
from _proxy import FaultProxy, unavailable
from _service import PASSWORDS, call, service
from aiohttp import web

from tokensdk import (
    AssetToken,
    EventType,
    InvalidCredentials,
    InvalidInput,
    ManualClock,
    MemoryStore,
    NativeBackend,
    NotFound,
    RetryConfig,
    ServiceUnavailable,
    Session,
    SessionSnapshot,
    TokenExpired,
    TokenRevoked,
    TokenSDKError,
    UnknownKey,
)
from tokensdk._assets import Ed25519Signer, TokenValidator, validate_access_token
from tokensdk.server import RunningService

pytestmark = pytest.mark.anyio

SIGNER = Ed25519Signer.from_seed(bytes(range(32)))
SIGNER_2 = Ed25519Signer.from_seed(bytes(range(1, 33)))


@asynccontextmanager
async def asset_service(clock: ManualClock, **kwargs: Any) -> AsyncIterator[RunningService]:
    assets = {"sensor-1": SIGNER.public_key_hex, "sensor-2": SIGNER_2.public_key_hex}
    async with service(clock, assets=assets, **kwargs) as svc:
        yield svc


@asynccontextmanager
async def open_session(
    svc: RunningService | FaultProxy, clock: ManualClock, **kwargs: Any
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


async def test_a_token_issued_mid_millisecond_is_valid_at_once(clock: ManualClock) -> None:
    # The service writes iat in whole milliseconds: rounded up, it would lie in the
    # future of the very clock that issued it, and the SDK (no leeway) would refuse it.
    async with asset_service(clock) as svc, open_session(svc, clock) as s:
        clock.advance(0.0006)
        item = await s.access_tokens.request("sensor-1", SIGNER)
        assert (await s.validate_access_token(item.token)).asset_ids == ("sensor-1",)


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


async def test_a_key_fetch_whose_caller_was_cancelled_does_not_fail_the_next_caller(
    clock: ManualClock,
) -> None:
    async with asset_service(clock) as svc, open_session(svc, clock) as s:
        token = (await s.access_tokens.request("sensor-1", SIGNER)).token
        proxy = FaultProxy(svc.url)
        proxy.only_paths = {"/v1/keys"}
        gate = anyio.Event()

        async def held(request: web.Request) -> web.StreamResponse:
            await gate.wait()
            return await unavailable(request)

        proxy.fail_next(1, held)
        async with proxy.running():
            validator = TokenValidator(proxy.url, clock=clock)
            results: list[object] = []

            first_scope = anyio.CancelScope()

            async def first() -> None:
                with first_scope:
                    await validator.validate(token)

            async def second() -> None:
                results.append(await validator.validate(token))

            with anyio.fail_after(30):  # only keeps a regression from hanging the suite
                async with anyio.create_task_group() as tg:
                    tg.start_soon(first)
                    await proxy.wait_for("/v1/keys")  # the first caller's fetch is held
                    tg.start_soon(second)
                    await anyio.wait_all_tasks_blocked()  # queued behind that fetch
                    first_scope.cancel()
            gate.set()
            # The first caller's fetch never came back: the second one fetched
            # (at once, not after the rate-limit interval) and got the keys.
            assert [getattr(r, "asset_ids", r) for r in results] == [("sensor-1",)]
            assert validator.key_fetches == 2
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


# -- expiry and wall-clock steps -----------------------------------------------------------


def token_arrays(seen: list[SessionSnapshot]) -> list[tuple[AssetToken, ...]]:
    """The successive values of the array in ``seen`` (commits that left it alone skipped)."""
    arrays: list[tuple[AssetToken, ...]] = []
    for snapshot in seen:
        if not arrays or arrays[-1] != snapshot.access_tokens:
            arrays.append(snapshot.access_tokens)
    return arrays


async def test_after_expiry_the_token_is_invalid_locally_and_remotely_and_removed(
    clock: ManualClock,
) -> None:
    seen: list[SessionSnapshot] = []
    async with asset_service(clock) as svc, open_session(svc, clock, on_change=seen.append) as s:
        events = s.events()
        item = await s.access_tokens.request("sensor-1", SIGNER)

        clock.advance(900)
        await anyio.wait_all_tasks_blocked()

        assert len(s.access_tokens) == 0
        async for event in events:  # the removal was announced (it is already queued)
            if event.type is EventType.ACCESS_TOKEN_REMOVED:
                assert event.detail == "sensor-1"
                break
        await s.changes_delivered()
        assert token_arrays(seen)[-2:] == [(item,), ()]
        with pytest.raises(TokenExpired):
            s.access_tokens.validator.validate_local(item.token)
        with pytest.raises(TokenExpired):
            await s.access_tokens.validate(item.token, remote=True)
        # With leeway the local check passes, so the verdict is the service's own.
        async with TokenValidator(svc.url, clock=clock, remote=True, leeway=60) as lenient:
            await lenient.refresh_keys()
            assert lenient.validate_local(item.token).asset_ids == ("sensor-1",)
            with pytest.raises(TokenExpired):
                await lenient.validate(item.token)


async def test_remote_validation_of_an_expired_token_maps_701_to_token_expired(
    clock: ManualClock,
) -> None:
    async with asset_service(clock) as svc, open_session(svc, clock) as s:
        item = await s.access_tokens.request("sensor-1", SIGNER)
        clock.advance(901)
        async with aiohttp.ClientSession() as http:
            status, body, _ = await call(
                http, svc, "POST", "/v1/assets/validate", {"token": item.token}
            )
        assert (status, body["error"], body["code"]) == (401, "token_expired", 701)

        async with TokenValidator(svc.url, clock=clock, remote=True, leeway=3600) as validator:
            await validator.refresh_keys()
            assert validator.validate_local(item.token).asset_ids == ("sensor-1",)
            with pytest.raises(TokenExpired):
                await validator.validate(item.token)


async def test_wall_clock_stepped_back_does_not_keep_a_token_past_its_deadline(
    clock: ManualClock,
) -> None:
    # The service keeps its own clock: stepping the client's wall clock back does
    # not give the token more life on the service.
    service_clock = ManualClock()
    seen: list[SessionSnapshot] = []

    def advance(seconds: float) -> None:
        service_clock.advance(seconds)
        clock.advance(seconds)

    async with (
        asset_service(service_clock) as svc,
        open_session(svc, clock, on_change=seen.append) as s,
    ):
        item = await s.access_tokens.request("sensor-1", SIGNER)
        clock.jump_wall(-100)

        advance(899)
        await anyio.wait_all_tasks_blocked()
        assert list(s.access_tokens) == [item]  # not dropped early

        advance(2)  # past the deadline; the client's wall clock still says 99 s to go
        await anyio.wait_all_tasks_blocked()
        assert len(s.access_tokens) == 0
        with pytest.raises(LookupError):
            s.access_tokens.headers_for("sensor-1")
        await s.changes_delivered()
        assert token_arrays(seen)[-2:] == [(item,), ()]
        # It was right to drop it: locally it still looks fine, the service says expired.
        assert s.access_tokens.validator.validate_local(item.token).asset_ids == ("sensor-1",)
        with pytest.raises(TokenExpired):
            await s.access_tokens.validate(item.token, remote=True)

        advance(300)  # and it does not come back
        await anyio.wait_all_tasks_blocked()
        assert len(s.access_tokens) == 0


async def test_a_sweep_also_removes_tokens_the_wall_clock_says_have_expired(
    clock: ManualClock,
) -> None:
    seen: list[SessionSnapshot] = []
    async with asset_service(clock) as svc, open_session(svc, clock, on_change=seen.append) as s:
        first = await s.access_tokens.request("sensor-1", SIGNER)
        clock.advance(100)
        second = await s.access_tokens.request("sensor-2", SIGNER_2)
        clock.jump_wall(150)  # the wall clock now puts second's expiry 50 s before first's

        clock.advance(800)  # first's deadline on both clocks; second's only on the wall clock
        await anyio.wait_all_tasks_blocked()

        assert second.expires_at is not None
        assert second.expires_at <= clock.time()
        assert len(s.access_tokens) == 0
        await s.changes_delivered()
        assert token_arrays(seen)[-2:] == [(first, second), ()]  # one change removed both


class UnpluggedAfter:
    """Signs ``count`` times, then fails (a hardware key that was unplugged)."""

    def __init__(self, count: int, error: type[Exception] = TokenSDKError) -> None:
        self._left = count
        self._error = error
        self.failed = anyio.Event()

    async def sign(self, message: bytes) -> bytes:
        if self._left == 0:
            self.failed.set()
            raise self._error("the key is unplugged")
        self._left -= 1
        return await SIGNER.sign(message)


# A signer is the application's code: any exception it raises must leave the session
# running (not tear down its task group), and the old token served until it dies.
@pytest.mark.parametrize("error", [TokenSDKError, RuntimeError])
async def test_a_failed_renewal_keeps_the_token_only_until_its_deadline(
    clock: ManualClock, error: type[Exception]
) -> None:
    signer = UnpluggedAfter(1, error)
    async with asset_service(clock) as svc, open_session(svc, clock) as s:
        item = await s.access_tokens.request("sensor-1", signer, renew=True)
        clock.jump_wall(-100)

        clock.advance(900 - 60)  # renewal time; it fails
        await signer.failed.wait()
        await anyio.wait_all_tasks_blocked()
        assert list(s.access_tokens) == [item]  # the old token serves until it dies

        clock.advance(61)  # its deadline, though the wall clock says 99 s are left
        await anyio.wait_all_tasks_blocked()
        assert len(s.access_tokens) == 0
        assert await s.access_token()  # the session itself is unharmed


# -- revalidation ------------------------------------------------------------------------


async def test_revalidate_removes_what_it_found_invalid_before_the_service_failed(
    clock: ManualClock,
) -> None:
    seen: list[SessionSnapshot] = []
    async with asset_service(clock) as svc:
        proxy = FaultProxy(svc.url)
        proxy.only_paths = {"/v1/assets/validate"}

        async def forward(request: web.Request) -> web.StreamResponse:
            status, headers, payload = await proxy.forward(request)
            return web.Response(body=payload, status=status, headers=headers)

        async with (
            proxy.running(),
            open_session(
                proxy, clock, on_change=seen.append, retry=RetryConfig(max_attempts=1)
            ) as s,
        ):
            events = s.events()
            revoked = await s.access_tokens.request("sensor-1", SIGNER)
            good = await s.access_tokens.request("sensor-2", SIGNER_2)
            async with aiohttp.ClientSession() as http:
                status, _, _ = await call(
                    http, svc, "POST", "/v1/assets/revoke", {"token": revoked.token}
                )
            assert status == 204
            await s.changes_delivered()
            before = len(seen)
            # The first remote check (revoked's) reaches the service; then it is down.
            proxy.fail_next(1, forward)
            proxy.sticky = unavailable

            with pytest.raises(ServiceUnavailable):
                await s.access_tokens.revalidate(remote=True)

            assert list(s.access_tokens) == [good]
            assert proxy.seen["/v1/assets/validate"] == 2
            await s.changes_delivered()
            assert [snapshot.access_tokens for snapshot in seen[before:]] == [(good,)]
            async for event in events:
                if event.type is EventType.ACCESS_TOKEN_REMOVED:
                    assert event.detail == "sensor-1"
                    break

            proxy.sticky = None  # back up: the rest is checked next time
            assert await s.access_tokens.revalidate(remote=True) == []
            assert list(s.access_tokens) == [good]


# -- proof of key: contract errors ---------------------------------------------------------


class ChallengeThief:
    """Signs, but first spends the challenge itself (a replay that got there first)."""

    def __init__(self, svc: RunningService, http: aiohttp.ClientSession) -> None:
        self._svc = svc
        self._http = http

    async def sign(self, message: bytes) -> bytes:
        signature = await SIGNER.sign(message)
        body = {"challenge": json.loads(message), "signature": signature.hex()}
        status, answer, _ = await call(self._http, self._svc, "POST", "/v1/assets/token", body)
        assert status == 200, answer
        return signature


class SlowSigner:
    """Takes longer than the challenge lives (a hardware key waiting for a touch)."""

    def __init__(self, clock: ManualClock, seconds: float) -> None:
        self._clock = clock
        self._seconds = seconds

    async def sign(self, message: bytes) -> bytes:
        self._clock.advance(self._seconds)
        return await SIGNER.sign(message)


async def test_a_used_challenge_is_refused_with_challenge_used(clock: ManualClock) -> None:
    async with (
        asset_service(clock) as svc,
        open_session(svc, clock) as s,
        aiohttp.ClientSession() as http,
    ):
        with pytest.raises(InvalidCredentials) as caught:
            await s.access_tokens.request("sensor-1", ChallengeThief(svc, http))

        assert (caught.value.status, caught.value.error) == (401, "challenge_used")
        assert "challenge_used" in str(caught.value)
        assert len(s.access_tokens) == 0
        assert svc.stats.asset_tokens_issued == 1  # the thief's, not ours


async def test_an_expired_challenge_is_refused_with_challenge_expired(clock: ManualClock) -> None:
    async with asset_service(clock) as svc, open_session(svc, clock) as s:
        with pytest.raises(InvalidCredentials) as caught:
            await s.access_tokens.request("sensor-1", SlowSigner(clock, 301))

        assert (caught.value.status, caught.value.error) == (401, "challenge_expired")
        assert "challenge_expired" in str(caught.value)
        assert len(s.access_tokens) == 0
        assert svc.stats.asset_tokens_issued == 0
        # A signer within the 300 s gets its token.
        item = await s.access_tokens.request("sensor-1", SlowSigner(clock, 299))
        assert list(s.access_tokens) == [item]


async def test_a_validator_fetches_keys_below_the_backends_api_root(clock: ManualClock) -> None:
    """TokenValidator(url) keeps meaning the contract's /v1; a backend names its own root."""

    @attrs.frozen
    class Versioned(NativeBackend):
        api_path: str = attrs.field(default="/api/v2", init=False)

    seen: list[str] = []

    async def keys(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.json_response({"keys": []})

    app = web.Application()
    app.router.add_get("/api/v2/keys", keys)
    app.router.add_get("/v1/keys", keys)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with TokenValidator(Versioned(url), clock=clock) as versioned:
            await versioned.refresh_keys()
        async with TokenValidator(url + "/", clock=clock) as native:
            await native.refresh_keys()
    finally:
        await runner.cleanup()
    assert seen == ["/api/v2/keys", "/v1/keys"]
    with pytest.raises(InvalidInput):
        TokenValidator("ftp://example.com")

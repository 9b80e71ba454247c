"""Transport: tenacity's retry loop, one backoff, the attempt hook, a closed transport."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from aiohttp import web
from conftest import autojump

from tokensdk import (
    InvalidCredentials,
    InvalidState,
    ManualClock,
    RateLimited,
    RetryConfig,
    ServiceError,
    ServiceUnavailable,
    SessionClosed,
)
from tokensdk._backend import ErrorDetails, native_error_details
from tokensdk._transport import Backoff, Transport

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def answering(
    *answers: tuple[int, dict[str, str]], body: object = None
) -> AsyncIterator[str]:
    """A loopback service answering POST /v1/x with ``answers`` in turn, then 200 {}."""
    queue = list(answers)

    async def handle(request: web.Request) -> web.Response:
        if queue:
            status, headers = queue.pop(0)
            error = {"error": "busy"} if body is None else body
            return web.json_response(error, status=status, headers=headers)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/v1/x", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    finally:
        await runner.cleanup()


class Attempts:
    """An attempt hook recording (path, clock time) of every attempt."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.seen: list[tuple[str, float]] = []

    @asynccontextmanager
    async def __call__(self, method: str, path: str) -> AsyncIterator[None]:
        self.seen.append((path, self.clock.monotonic()))
        yield


NO_JITTER = RetryConfig(initial=1.0, maximum=8.0, jitter=0.0, max_attempts=4)


async def test_a_call_is_retried_with_backoff_until_its_attempts_run_out(
    clock: ManualClock,
) -> None:
    hook = Attempts(clock)
    async with answering(*[(503, {})] * 4) as url, anyio.create_task_group() as tg:
        tg.start_soon(autojump, clock)
        transport = Transport(url, clock, retry=NO_JITTER, hook=hook, timeout=100.0)
        start = clock.monotonic()
        with pytest.raises(ServiceUnavailable):
            await transport.call("POST", "/x", {})
        await transport.aclose()
        tg.cancel_scope.cancel()
    # Attempt 1 failed, then waits of 1, 2 and 4 s: tenacity numbers from attempt 1.
    assert [(p, t - start) for p, t in hook.seen] == [
        ("/x", 0.0),
        ("/x", 1.0),
        ("/x", 3.0),
        ("/x", 7.0),
    ]


async def test_a_call_stops_retrying_at_its_deadline(clock: ManualClock) -> None:
    hook = Attempts(clock)
    async with answering(*[(503, {})] * 4) as url, anyio.create_task_group() as tg:
        tg.start_soon(autojump, clock)
        transport = Transport(url, clock, retry=NO_JITTER, hook=hook)
        with pytest.raises(ServiceUnavailable):
            await transport.call("POST", "/x", {}, deadline=clock.monotonic() + 2.5)
        await transport.aclose()
        tg.cancel_scope.cancel()
    assert len(hook.seen) == 2  # the third attempt would start 3 s in: past the deadline


async def test_retry_after_is_waited_and_remembered_for_the_path(clock: ManualClock) -> None:
    hook = Attempts(clock)
    async with answering((429, {"Retry-After": "5"})) as url, anyio.create_task_group() as tg:
        tg.start_soon(autojump, clock)
        transport = Transport(url, clock, retry=NO_JITTER, hook=hook, timeout=100.0)
        start = clock.monotonic()
        assert (await transport.call("POST", "/x", {})).body == {"ok": True}
        assert [t - start for _, t in hook.seen] == [0.0, 5.0]  # not the 1 s backoff
        await transport.aclose()
        tg.cancel_scope.cancel()


async def test_a_call_without_retry_makes_one_attempt(clock: ManualClock) -> None:
    hook = Attempts(clock)
    async with answering((503, {})) as url:
        transport = Transport(url, clock, retry=NO_JITTER, hook=hook)
        with pytest.raises(ServiceUnavailable):
            await transport.call("POST", "/x", {}, retry=False)
        await transport.aclose()
    assert len(hook.seen) == 1


async def test_a_closed_transport_fails_fast(clock: ManualClock) -> None:
    hook = Attempts(clock)
    async with answering() as url:
        transport = Transport(url, clock, retry=NO_JITTER, hook=hook)
        await transport.aclose()
        with pytest.raises(SessionClosed):
            await transport.call("POST", "/x", {})
    assert len(hook.seen) <= 1  # no retry, no backoff sleep on the manual clock


def test_one_backoff_for_calls_and_the_background_refresh() -> None:
    config = RetryConfig(initial=0.5, maximum=4.0, multiplier=2.0, jitter=0.5)
    backoff = Backoff(config, random.Random(3))
    assert [backoff.after(n, ServiceUnavailable("x")) for n in range(1, 6)] == _series(
        config, random.Random(3), 5
    )
    # The service's Retry-After wins over a shorter backoff, never over a longer one.
    assert Backoff(config, random.Random(3)).after(1, RateLimited("x", retry_after=30.0)) == 30.0
    flat = Backoff(RetryConfig(initial=9.0, maximum=9.0, jitter=0.0))
    assert flat.after(1, RateLimited("x", retry_after=1.0)) == 9.0


def _series(config: RetryConfig, rng: random.Random, count: int) -> list[float]:
    return [config.backoff(n, rng) for n in range(1, count + 1)]


def oauth_error_details(status: int, body: object) -> ErrorDetails:
    """RFC 6749's error body, as an OAuth 2.0 backend would read it."""
    if not isinstance(body, dict):
        return ErrorDetails()
    return ErrorDetails(error=body["error"], message=body.get("error_description", ""))


async def test_the_backend_reads_the_error_body_the_transport_types_the_status(
    clock: ManualClock,
) -> None:
    oauth = {"error": "invalid_grant", "error_description": "refresh token revoked"}
    async with answering((400, {}), (401, {}), body=oauth) as url:
        transport = Transport(url, clock, error_details=oauth_error_details)
        with pytest.raises(ServiceError) as caught:
            await transport.call("POST", "/x", {})
        assert (caught.value.status, caught.value.error, caught.value.code) == (
            400,
            "invalid_grant",
            400,
        )
        assert "refresh token revoked" in str(caught.value)
        with pytest.raises(InvalidCredentials):
            await transport.call("POST", "/x", {})
        await transport.aclose()


async def test_without_a_backend_reader_only_the_status_counts(clock: ManualClock) -> None:
    contract = {"error": "invalid_state", "code": 491, "message": "no"}
    async with answering((491, {}), (491, {}), body=contract) as url:
        bare = Transport(url, clock)
        with pytest.raises(InvalidState) as caught:  # the contract's 491 is typed
            await bare.call("POST", "/x", {})
        assert (caught.value.error, caught.value.code) == ("", 491)
        native = Transport(url, clock, error_details=native_error_details)
        with pytest.raises(InvalidState) as caught:
            await native.call("POST", "/x", {})
        assert (caught.value.error, caught.value.code) == ("invalid_state", 491)
        await bare.aclose()
        await native.aclose()

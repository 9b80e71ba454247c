"""Rows that need no service: MAC headers (5), PASETO validation (6), the scheduler (7)."""

from __future__ import annotations

import asyncio
import binascii
import gc
import hmac
import os
import time
import tracemalloc
import uuid
from collections.abc import Callable

import anyio
import anyio.lowlevel
import pyseto
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from benchmarks._harness import Row, at_least, at_most, compare_sync, fmt_ratio, fmt_time, spread
from tokensdk import ManualClock, SystemClock
from tokensdk._paseto import (
    KeySet,
    SigningKey,
    ValidationCache,
    b64url_decode,
    pre_auth_encode,
    sign_asset_token,
    verify_access_token,
)
from tokensdk._scheduler import Scheduler
from tokensdk.mac import build_header

__all__ = [
    "floor_header",
    "mac_concurrency_rows",
    "mac_header_rows",
    "paseto_rows",
    "scheduler_rows",
]


# -- 5: MAC header generation -----------------------------------------------------------


def floor_header(token_id: str, secret: bytes, timestamp_ms: int) -> str:
    """The least work a PowerAuth 3.3 header can cost: nonce, HMAC, 2 Base64, format."""
    nonce = os.urandom(16)
    digest = hmac.digest(secret, b"%b&%d&3.3" % (nonce, timestamp_ms), "sha256")
    return (
        f'PowerAuth version="3.3", token_id="{token_id}", '
        f'token_digest="{binascii.b2a_base64(digest, newline=False).decode()}", '
        f'nonce="{binascii.b2a_base64(nonce, newline=False).decode()}", '
        f'timestamp="{timestamp_ms}"'
    )


def mac_header_rows(quick: bool) -> list[Row]:
    """Row 5: ``build_header`` vs its floor."""
    token_id, secret = str(uuid.uuid4()), os.urandom(16)
    ts = int(time.time() * 1000)
    # Same shape as the real header (the floor is a faithful copy of the format).
    assert len(floor_header(token_id, secret, ts)) == len(build_header(token_id, secret, ts))
    cmp = compare_sync(
        {
            "sdk": lambda: build_header(token_id, secret, ts),
            "floor": lambda: floor_header(token_id, secret, ts),
        },
        number=2_000 if quick else 20_000,
        rounds=7 if quick else 25,
    )
    ratio = cmp.ratio("sdk", "floor")
    return [
        at_most(
            "5",
            "MAC header: build_header vs floor (urandom+HMAC+2 b64+format)",
            ratio,
            1.3,
            cmp.medians("sdk", "floor"),
        )
    ]


async def mac_concurrency_rows(
    quick: bool, generate: Callable[[], object] | None = None, how: str = "build_header"
) -> list[Row]:
    """Row 5b: headers per second from 1, 10 and 1,000 concurrent tasks."""
    if generate is None:
        token_id, secret = str(uuid.uuid4()), os.urandom(16)

        async def generate_async() -> object:
            return build_header(token_id, secret, int(time.time() * 1000))

        agen: Callable[[], object] = generate_async
    else:
        agen = generate
    total = 5_000 if quick else 50_000
    rates = []
    for tasks in (1, 10, 1_000):
        per_task = max(total // tasks, 1)

        async def worker(n: int = per_task) -> None:
            for _ in range(n):
                await agen()  # type: ignore[misc]
                await anyio.lowlevel.checkpoint()  # let the other tasks in, as real code would

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(tasks):
                tg.start_soon(worker)
        rates.append(per_task * tasks / (time.perf_counter() - start))
    return [
        Row(
            "5b",
            f"MAC headers/s from 1 / 10 / 1,000 tasks ({how})",
            " / ".join(f"{r / 1000:.0f}k" for r in rates),
            "",
            None,
            "each task yields after every header",
        )
    ]


# -- 6: PASETO validation ----------------------------------------------------------------


def paseto_rows(quick: bool) -> list[Row]:
    """Row 6: uncached validation vs pyseto and raw Ed25519; cached vs uncached."""
    key = SigningKey.generate()
    token = sign_asset_token(key, "asset-1", time.time())
    now = time.time() + 1.0  # iat is rounded to the millisecond
    keys = KeySet.of(key.public_key)
    raw = Ed25519PublicKey.from_public_bytes(key.public_key.raw)
    pem = raw.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pkey = pyseto.Key.new(version=4, purpose="public", key=pem)
    # What a raw verifier checks: PAE(header, message, footer, implicit) and the signature.
    body_b64, footer_b64 = token[len("v4.public.") :].split(".")
    body, footer = b64url_decode(body_b64), b64url_decode(footer_b64)
    message, signature = body[:-64], body[-64:]
    pae = pre_auth_encode(b"v4.public.", message, footer, b"")
    raw.verify(signature, pae)
    pyseto.decode(pkey, token)
    verify_access_token(token, keys, now)
    cache = ValidationCache()
    verify_access_token(token, keys, now, cache=cache)
    number, rounds = (300, 7) if quick else (2_000, 25)
    cmp = compare_sync(
        {
            "sdk": lambda: verify_access_token(token, keys, now),
            "pyseto": lambda: pyseto.decode(pkey, token),
            "raw": lambda: raw.verify(signature, pae),
            "cached": lambda: verify_access_token(token, keys, now, cache=cache),
        },
        number=number,
        rounds=rounds,
    )
    vs_pyseto = cmp.ratio("sdk", "pyseto")
    vs_raw = cmp.ratio("sdk", "raw")
    speedup = cmp.speedup("cached", "sdk")
    return [
        at_most(
            "6a",
            "validate_access_token (uncached) vs pyseto.decode",
            vs_pyseto,
            1.15,
            cmp.medians("sdk", "pyseto"),
        ),
        Row(
            "6b",
            "validate_access_token (uncached) vs raw Ed25519 verify",
            fmt_ratio(vs_raw),
            "",
            None,
            f"raw verify {fmt_time(cmp.median('raw'))} (floor)",
        ),
        at_least(
            "6c",
            "validate_access_token cached vs uncached (speed-up)",
            speedup,
            100,
            cmp.medians("cached"),
        ),
    ]


# -- 7: the scheduler at scale -------------------------------------------------------------


def _noop() -> None:
    pass


def _bytes_per(n: int, fill: Callable[[int], object]) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        keep = fill(n)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del keep
    return (after - before) / n


async def _scale_async(quick: bool) -> list[Row]:
    n = 20_000 if quick else 100_000
    n_time = n
    n_tasks = 2_000 if quick else 10_000
    rounds = 2 if quick else 7
    loop = asyncio.get_running_loop()
    base = loop.time() + 3600.0
    clock = ManualClock()

    def fill_scheduler(count: int) -> Scheduler:
        sched = Scheduler(clock)
        mono = clock.monotonic() + 3600.0
        for i in range(count):
            sched.call_at(mono + i * 0.001, _noop)
        return sched

    def fill_call_at(count: int) -> list[asyncio.TimerHandle]:
        return [loop.call_at(base + i * 0.001, _noop) for i in range(count)]

    async def sleeper(deadline: float) -> None:
        await asyncio.sleep(deadline - loop.time())

    def fill_tasks(count: int) -> list[asyncio.Task[None]]:
        return [loop.create_task(sleeper(base + i * 0.001)) for i in range(count)]

    async def settle_tasks(tasks: list[asyncio.Task[None]]) -> None:
        await asyncio.sleep(0)  # the tasks start and register their timers
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # Memory: the timer handles themselves (tasks are measured once they sleep).
    sched_b = _bytes_per(n, fill_scheduler)
    call_at_b = _bytes_per(n, fill_call_at)
    for handle in fill_call_at(0):
        handle.cancel()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    tasks = fill_tasks(n_tasks)
    await asyncio.sleep(0)
    tasks_b = (tracemalloc.get_traced_memory()[0] - before) / n_tasks
    tracemalloc.stop()
    await settle_tasks(tasks)

    # Time per token, interleaved rounds.
    times: dict[str, list[float]] = {"sched": [], "call_at": [], "tasks": []}
    gc.collect()
    gc.disable()  # a collection in the middle of a fill is noise, not scheduling cost
    for _ in range(rounds):
        start = time.perf_counter()
        s = fill_scheduler(n_time)
        times["sched"].append((time.perf_counter() - start) / n_time)
        del s
        start = time.perf_counter()
        handles = fill_call_at(n_time)
        times["call_at"].append((time.perf_counter() - start) / n_time)
        for h in handles:
            h.cancel()
        del handles
        start = time.perf_counter()
        tasks = fill_tasks(n_tasks)
        await asyncio.sleep(0)
        times["tasks"].append((time.perf_counter() - start) / n_tasks)
        await settle_tasks(tasks)
    gc.enable()
    sched_t = spread(times["sched"])
    call_at_t = spread(times["call_at"])[0]
    tasks_t = spread(times["tasks"])[0]

    # Wake-ups when nothing is due: a manual-clock minute and a real-clock interval.
    idle_manual = Scheduler(clock)
    for i in range(n):
        idle_manual.call_at(clock.monotonic() + 3600 + i, _noop)
    real = SystemClock()
    idle_real = Scheduler(real)
    for i in range(n):
        idle_real.call_at(real.monotonic() + 3600 + i, _noop)
    real_seconds = 0.2 if quick else 2.0
    async with anyio.create_task_group() as tg:
        tg.start_soon(idle_manual.run)
        tg.start_soon(idle_real.run)
        await anyio.sleep(0.01)
        w_manual, w_real = idle_manual.wakeups, idle_real.wakeups
        for _ in range(60):
            clock.advance(1.0)
            await anyio.lowlevel.checkpoint()
        await anyio.sleep(real_seconds)
        w_manual = idle_manual.wakeups - w_manual
        w_real = idle_real.wakeups - w_real
        tg.cancel_scope.cancel()
    return [
        Row(
            "7a",
            f"Scheduler memory per token ({n:,} timers)",
            f"{sched_b:.0f} B",
            "<= 400 B",
            sched_b <= 400,
            f"loop.call_at {call_at_b:.0f} B, task per token {tasks_b:.0f} B",
        ),
        Row(
            "7b",
            f"Scheduler time per token scheduled ({n:,} timers)",
            f"{sched_t[0] * 1e6:.2f} µs [{sched_t[1] * 1e6:.2f}-{sched_t[2] * 1e6:.2f}]",
            "<= 5 µs",
            sched_t[0] <= 5e-6,
            f"loop.call_at {call_at_t * 1e6:.2f} µs, task per token {tasks_t * 1e6:.1f} µs",
        ),
        Row(
            "7c",
            f"Scheduler wake-ups with nothing due ({n:,} far timers)",
            f"{w_manual} per simulated minute, {w_real} in {real_seconds:g} s real",
            "0",
            w_manual == 0 and w_real == 0,
            "",
        ),
    ]


async def scheduler_rows(quick: bool) -> list[Row]:
    """Row 7: memory, time and idle wake-ups of the scheduler for 100,000 tokens."""
    return await _scale_async(quick)

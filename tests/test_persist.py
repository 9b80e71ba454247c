"""CoalescingSaver: few writes for many submits, one write in flight, nothing lost on close."""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from tokensdk import StoreError
from tokensdk._persist import CoalescingSaver
from tokensdk.stores import FileStore, MemoryStore, StateStore

pytestmark = pytest.mark.anyio


class GatedStore:
    """A MemoryStore whose writes wait at a gate the test opens (to hold a write in flight)."""

    def __init__(self) -> None:
        self.inner = MemoryStore()
        self.gate = anyio.Event()
        self.entered = anyio.Event()
        self.calls: list[dict[str, Any] | None] = []
        self.in_flight = 0
        self.max_in_flight = 0

    def open_gate(self) -> None:
        self.gate.set()

    async def _enter(self, document: Mapping[str, Any] | None) -> None:
        self.calls.append(None if document is None else dict(document))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.entered.set()
        try:
            await self.gate.wait()
        finally:
            self.in_flight -= 1

    async def load(self) -> dict[str, Any] | None:
        return await self.inner.load()

    async def save(self, document: Mapping[str, Any]) -> None:
        await self._enter(document)
        await self.inner.save(document)

    async def clear(self) -> None:
        await self._enter(None)
        await self.inner.clear()


class FailingStore:
    """A MemoryStore that fails its next ``failures`` writes, like a full disk."""

    def __init__(self, failures: int) -> None:
        self.inner = MemoryStore()
        self.failures = failures

    async def load(self) -> dict[str, Any] | None:
        return await self.inner.load()

    async def save(self, document: Mapping[str, Any]) -> None:
        await anyio.lowlevel.checkpoint()
        if self.failures:
            self.failures -= 1
            raise StoreError("cannot write state file: No space left on device")
        await self.inner.save(document)

    async def clear(self) -> None:
        await self.inner.clear()


def _raise(error: BaseException) -> None:
    raise AssertionError(f"unexpected store error: {error!r}")


async def test_burst_of_submits_makes_few_writes() -> None:
    store = MemoryStore()
    saver = CoalescingSaver(store, on_error=_raise)
    async with anyio.create_task_group() as tg:
        tg.start_soon(saver.run)
        for seq in range(10_000):
            saver.submit({"seq": seq})
        await saver.flush()
        assert saver.idle
        tg.cancel_scope.cancel()
    assert store.document == {"seq": 9_999}
    assert saver.writes <= 2


async def test_burst_through_a_file_store(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "state.json")
    saver = CoalescingSaver(store, on_error=_raise)
    async with anyio.create_task_group() as tg:
        tg.start_soon(saver.run)
        for seq in range(10_000):
            saver.submit({"seq": seq, "payload": "x" * 100})
            if seq % 10 == 0:
                await anyio.lowlevel.checkpoint()  # let the writer run mid-burst
        await saver.flush()
        tg.cancel_scope.cancel()
    assert await store.load() == {"seq": 9_999, "payload": "x" * 100}
    # Each write takes a worker thread round trip; submits meanwhile coalesce.
    assert saver.writes < 1_000


async def test_one_write_in_flight_and_the_newest_pending_goes_next() -> None:
    store = GatedStore()
    saver = CoalescingSaver(store, on_error=_raise)
    async with anyio.create_task_group() as tg:
        tg.start_soon(saver.run)
        saver.submit({"seq": 1})
        await store.entered.wait()
        for seq in range(2, 100):
            saver.submit({"seq": seq})
        tg.start_soon(saver.flush)  # a flush racing the loop must not add a write
        await anyio.wait_all_tasks_blocked()
        assert store.calls == [{"seq": 1}]
        store.open_gate()
        await saver.flush()
        tg.cancel_scope.cancel()
    assert store.calls == [{"seq": 1}, {"seq": 99}]
    assert store.max_in_flight == 1
    assert saver.writes == 2
    assert store.inner.document == {"seq": 99}


async def test_flush_waits_for_the_write_in_flight() -> None:
    store = GatedStore()
    saver = CoalescingSaver(store, on_error=_raise)
    flushed = anyio.Event()

    async def flush() -> None:
        await saver.flush()
        flushed.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(saver.run)
        saver.submit({"seq": 1})
        tg.start_soon(flush)
        await store.entered.wait()
        await anyio.wait_all_tasks_blocked()
        assert not flushed.is_set()
        assert not saver.idle
        store.open_gate()
        await flushed.wait()
        assert store.inner.document == {"seq": 1}
        tg.cancel_scope.cancel()


async def test_flush_without_the_loop_writes_directly() -> None:
    store = MemoryStore({"seq": 0})
    saver = CoalescingSaver(store, on_error=_raise)
    await saver.flush()  # nothing submitted: nothing to do
    assert saver.writes == 0
    saver.submit({"seq": 1})
    saver.submit({"seq": 2})
    assert store.document == {"seq": 0}
    await saver.flush()
    assert store.document == {"seq": 2}
    assert saver.writes == 1
    saver.submit(None)  # None clears the store
    await saver.flush()
    assert store.document is None
    assert saver.writes == 2


@pytest.mark.parametrize("newer", [False, True], ids=["same", "newer pending"])
async def test_flush_after_cancel_writes_the_interrupted_document(newer: bool) -> None:
    store = GatedStore()
    saver = CoalescingSaver(store, on_error=_raise)
    async with anyio.create_task_group() as tg:
        tg.start_soon(saver.run)
        saver.submit({"seq": 1})
        await store.entered.wait()
        if newer:
            saver.submit({"seq": 2})
        tg.cancel_scope.cancel()  # the session closes mid-write
    assert store.inner.document is None  # the interrupted write did not happen
    store.open_gate()
    await saver.flush()
    assert store.inner.document == ({"seq": 2} if newer else {"seq": 1})
    assert saver.idle


async def test_errors_are_reported_and_later_saves_work() -> None:
    store = FailingStore(failures=2)
    errors: list[BaseException] = []
    saver = CoalescingSaver(store, on_error=errors.append)
    async with anyio.create_task_group() as tg:
        tg.start_soon(saver.run)
        saver.submit({"seq": 1})
        await saver.flush()  # a failed write still completes the flush
        assert [type(e) for e in errors] == [StoreError]
        assert saver.idle
        saver.submit({"seq": 2})
        await saver.flush()
        assert len(errors) == 2
        assert store.inner.document is None
        saver.submit({"seq": 3})
        await saver.flush()
        tg.cancel_scope.cancel()
    assert store.inner.document == {"seq": 3}
    assert len(errors) == 2
    assert saver.writes == 3


async def test_a_failing_error_handler_does_not_stop_the_saver(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FailingStore(failures=1)

    def on_error(error: BaseException) -> None:
        raise RuntimeError("handler bug")

    saver = CoalescingSaver(store, on_error=on_error)
    async with anyio.create_task_group() as tg:
        tg.start_soon(saver.run)
        with caplog.at_level(logging.ERROR, logger="tokensdk"):
            saver.submit({"seq": 1})
            await saver.flush()
        assert "error handler failed" in caplog.text
        saver.submit({"seq": 2})
        await saver.flush()
        tg.cancel_scope.cancel()
    assert store.inner.document == {"seq": 2}


async def test_close_at_random_points_never_loses_the_last_document() -> None:
    rng = random.Random(1234)
    for _ in range(200):
        store = MemoryStore()
        saver = CoalescingSaver(store, on_error=_raise)
        last = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(saver.run)
            for seq in range(rng.randrange(1, 30)):
                last = None if rng.random() < 0.1 else {"seq": seq}
                saver.submit(last)
                for _ in range(rng.randrange(3)):
                    await anyio.lowlevel.checkpoint()
            tg.cancel_scope.cancel()
        await saver.flush()
        assert store.document == last


def test_stores_satisfy_the_protocol() -> None:
    assert isinstance(GatedStore(), StateStore)
    assert isinstance(FailingStore(0), StateStore)
    assert "writes=0" in repr(CoalescingSaver(MemoryStore(), on_error=_raise))


class GatedClearMemoryStore(MemoryStore):
    """A MemoryStore (so: saves without waiting) whose clear waits at a gate."""

    __slots__ = ("entered", "gate")

    def __init__(self) -> None:
        super().__init__({"seq": -1})
        self.gate = anyio.Event()
        self.entered = anyio.Event()

    async def clear(self) -> None:
        self.entered.set()
        await self.gate.wait()
        await super().clear()


async def test_a_store_that_saves_without_waiting_is_written_once_per_burst() -> None:
    store = MemoryStore()
    saver = CoalescingSaver(store, on_error=_raise)
    async with anyio.create_task_group() as tg:
        tg.start_soon(saver.run)
        for seq in range(1_000):
            saver.submit({"seq": seq})
        assert store.document is None  # written from a loop callback, not inside submit
        await anyio.lowlevel.checkpoint()
        assert (store.document, saver.writes, saver.idle) == ({"seq": 999}, 1, True)
        tg.cancel_scope.cancel()


async def test_a_deferred_saver_writes_only_when_flushed() -> None:
    """A store that cannot outlive the process is written at flush, not per change."""
    store = MemoryStore()
    saver = CoalescingSaver(store, on_error=_raise, deferred=True)
    async with anyio.create_task_group() as tg:
        tg.start_soon(saver.run)
        for seq in range(100):
            saver.submit({"seq": seq})
        for _ in range(5):
            await anyio.lowlevel.checkpoint()
        assert (store.document, saver.writes, saver.idle) == (None, 0, False)
        await saver.flush()
        assert (store.document, saver.writes, saver.idle) == ({"seq": 99}, 1, True)
        saver.submit(None)  # a clear waits for the flush too
        await anyio.lowlevel.checkpoint()
        assert store.document == {"seq": 99}
        await saver.flush()
        assert (store.document, saver.writes) == (None, 2)
        tg.cancel_scope.cancel()


async def test_a_save_never_overtakes_a_clear_in_flight() -> None:
    store = GatedClearMemoryStore()
    saver = CoalescingSaver(store, on_error=_raise)
    async with anyio.create_task_group() as tg:
        tg.start_soon(saver.run)
        saver.submit(None)
        await store.entered.wait()
        saver.submit({"seq": 1})
        for _ in range(5):
            await anyio.lowlevel.checkpoint()
        assert store.document == {"seq": -1}  # the clear has not finished: nothing moved
        store.gate.set()
        await saver.flush()
        assert store.document == {"seq": 1}
        tg.cancel_scope.cancel()

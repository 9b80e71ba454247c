"""One timer heap serves many deadlines on a moved clock."""

from __future__ import annotations

import anyio
import pytest

from tokensdk import ManualClock
from tokensdk._scheduler import Scheduler


def test_run_due_fires_in_deadline_order_and_skips_cancelled(clock: ManualClock) -> None:
    scheduler = Scheduler(clock)
    fired: list[int] = []
    now = clock.monotonic()
    timers = [scheduler.call_at(now + d, lambda d=d: fired.append(d)) for d in (5, 1, 3, 2, 4)]
    timers[2].cancel()  # deadline 3

    clock.advance(2.5)
    assert scheduler.run_due() == 2
    clock.advance(10)
    scheduler.run_due()

    assert fired == [1, 2, 4, 5]
    assert len(scheduler) == 0


def test_failing_callback_does_not_stop_others(clock: ManualClock) -> None:
    scheduler = Scheduler(clock)
    fired: list[str] = []

    def boom() -> None:
        raise RuntimeError("boom")

    scheduler.call_later(1, boom)
    scheduler.call_later(1, lambda: fired.append("ok"))
    clock.advance(1)
    scheduler.run_due()

    assert fired == ["ok"]


def test_cancelled_entries_are_compacted(clock: ManualClock) -> None:
    scheduler = Scheduler(clock)
    timers = [scheduler.call_later(100 + i, lambda: None) for i in range(1000)]
    for timer in timers[:900]:
        timer.cancel()

    scheduler.run_due()

    assert len(scheduler._heap) == 100
    assert len(scheduler) == 100


@pytest.mark.anyio
async def test_runner_sleeps_until_the_next_deadline_only(clock: ManualClock) -> None:
    scheduler = Scheduler(clock)
    order: list[int] = []
    done = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(scheduler.run)
        await anyio.wait_all_tasks_blocked()
        for i in range(1000):
            scheduler.call_later(60 + i, lambda i=i: order.append(i))
        scheduler.call_later(2000, done.set)
        await anyio.wait_all_tasks_blocked()
        wakeups_before = scheduler.wakeups
        assert clock.next_deadline == clock.monotonic() + 60  # sleeping for the earliest only

        # an earlier deadline added later wakes the runner and is served first
        scheduler.call_later(1, lambda: order.append(-1))
        await anyio.wait_all_tasks_blocked()
        clock.advance(1)
        await anyio.wait_all_tasks_blocked()
        assert order == [-1]

        clock.advance(3000)
        await done.wait()
        tg.cancel_scope.cancel()

    assert order == [-1, *range(1000)]
    assert scheduler.wakeups - wakeups_before <= 4

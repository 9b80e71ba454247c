"""The session's task group (tokensdk._tasks), without a session or a network."""

from __future__ import annotations

import asyncio

import pytest

from tokensdk import SessionClosed
from tokensdk._tasks import SessionTasks

pytestmark = pytest.mark.anyio


async def test_work_runs_while_open_and_is_refused_or_dropped_after_close() -> None:
    tasks = SessionTasks()
    with pytest.raises(SessionClosed):
        tasks.require_open()
    ran: list[str] = []
    cancelled = asyncio.Event()

    async def service() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    async def work(name: str) -> None:
        ran.append(name)

    await tasks.start(service)
    tasks.spawn(work, "spawned")
    tasks.soon(lambda: work("soon"))
    await asyncio.sleep(0)
    assert ran == ["spawned", "soon"]
    tasks.close()
    with pytest.raises(SessionClosed):
        tasks.spawn(work, "late")
    tasks.soon(lambda: work("late"))  # dropped, not raised
    await tasks.cancel_and_wait()
    assert cancelled.is_set()
    assert ran == ["spawned", "soon"]
    with pytest.raises(SessionClosed, match="entered once"):
        tasks.start(service)


async def test_a_failed_service_is_raised_by_cancel_and_wait() -> None:
    tasks = SessionTasks()

    async def broken() -> None:
        raise ValueError("broken")

    await tasks.start(broken)
    await asyncio.sleep(0)
    tasks.close()
    with pytest.raises(ExceptionGroup) as caught:
        await tasks.cancel_and_wait()
    assert caught.group_contains(ValueError)


async def test_groups_close_in_any_order() -> None:
    first, second = SessionTasks(), SessionTasks()

    async def idle() -> None:
        await asyncio.Event().wait()

    await first.start(idle)
    await second.start(idle)
    for tasks in (first, second):  # not LIFO: the groups live in tasks of their own
        tasks.close()
        await tasks.cancel_and_wait()

"""Shared fixtures: the anyio backend, a manual clock."""

from __future__ import annotations

import pytest

from tokensdk import ManualClock


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


async def autojump(clock: ManualClock) -> None:
    """Advance ``clock`` to the next sleeper whenever every task is blocked.

    Run it in a task group for tests whose code under test sleeps on the clock
    (backoff); cancel the group to stop it.
    """
    import anyio

    while True:
        await anyio.wait_all_tasks_blocked()
        if not clock.advance_to_next():
            await clock.wait_for_sleeper()

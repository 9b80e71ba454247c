"""The session's background work: one anyio task group, run by a task of its own.

Everything a session does in the background (the timer heap, change dispatch,
coalesced saving, the refresher, fleet watching, clock syncs) runs in one task group
that :class:`SessionTasks` starts when the session is entered and cancels and awaits
when it is left. The group lives in a task of its own, not in the caller's, so that
sessions can be closed in any order. Components start work through
:meth:`SessionTasks.spawn` (refused once the session is closed) or
:meth:`SessionTasks.soon` (dropped once it is closed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
from anyio.abc import TaskGroup

from tokensdk._errors import SessionClosed

__all__ = ["SessionTasks"]


class SessionTasks:
    """The task group of one session, entered once: start, then close and cancel."""

    def __init__(self) -> None:
        self._tg: TaskGroup | None = None
        self._closing: TaskGroup | None = None
        self._runner: asyncio.Future[None] | None = None
        self._closed = False

    def start(self, *services: Callable[[], Coroutine[Any, Any, Any]]) -> asyncio.Future[None]:
        """Start the task group running ``services``; await the answer until it runs.

        Raises:
            SessionClosed: The group was started before (a Session is entered once).
        """
        if self._runner is not None or self._closed:
            raise SessionClosed("a Session can be entered once")
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # The task group lives in a task of its own, started here and awaited by
        # cancel_and_wait: entered by hand in the caller's task, its cancel scope would
        # have to be left in LIFO order with every other scope of that task, and
        # sessions closed in any other order raised RuntimeError. asyncio, not
        # anyio: aiohttp ties tokensdk to asyncio, and no anyio primitive starts a
        # task outside a task group.
        self._runner = asyncio.ensure_future(self._own_task_group(started, services))
        return started

    async def _own_task_group(
        self,
        started: asyncio.Future[None],
        services: tuple[Callable[[], Coroutine[Any, Any, Any]], ...],
    ) -> None:
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                for service in services:
                    tg.start_soon(service)
                started.set_result(None)
        finally:
            if not started.done():
                started.set_exception(SessionClosed("the session could not start"))

    def close(self) -> None:
        """Take no more work: :meth:`require_open` raises, :meth:`soon` drops it."""
        self._closing, self._tg = self._tg, None
        self._closed = True

    async def cancel_and_wait(self) -> None:
        """Cancel the background work and wait until it ended; raise what it raised."""
        tg, self._closing = self._closing, None
        runner = self._runner
        if tg is not None:
            tg.cancel_scope.cancel()
        if runner is not None:
            # Shielded: a close that is itself cancelled still waits for the
            # background work to end, as leaving a task group does.
            with anyio.CancelScope(shield=True):
                await asyncio.wait([runner])
            error = None if runner.cancelled() else runner.exception()
            if error is not None:
                raise error

    def require_open(self) -> None:
        """Raise SessionClosed unless the session is open."""
        if self._tg is None:
            raise SessionClosed("use the session inside 'async with'")

    def soon(self, func: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Start ``func()`` in the session's task group, unless it is closed."""
        if self._tg is not None:
            self._tg.start_soon(func)

    def spawn(self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Start ``func(*args)`` in the session's task group (SessionClosed if not open)."""
        self.require_open()
        assert self._tg is not None
        self._tg.start_soon(func, *args)

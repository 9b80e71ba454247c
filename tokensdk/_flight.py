"""One operation that any number of callers wait for (single flight)."""

from __future__ import annotations

import asyncio
import copy
from typing import Generic, TypeVar

import attrs

__all__ = ["Flight", "fresh_error"]

_T = TypeVar("_T")


@attrs.define(eq=False)
class Flight(Generic[_T]):
    """The outcome of one operation, shared by every caller that joined it.

    The operation runs in the owner's task group (or, for a refresh that may be
    sent again, in the first caller's task until that caller is cancelled: see
    ``RefreshEngine``), so a waiter's cancellation only stops that waiter;
    :meth:`finish` sets the outcome once.

    ``done`` is a plain asyncio event: a flight is made per refresh, and asyncio's
    event costs a sixth of anyio's to create (aiohttp ties tokensdk to asyncio, and
    anyio's cancel scopes cancel a wait on it like any other).
    """

    done: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)
    value: _T | None = attrs.field(default=None, init=False)
    error: BaseException | None = attrs.field(default=None, init=False)

    def finish(self, value: _T | None = None, error: BaseException | None = None) -> None:
        """Set the outcome and wake the waiters; later calls do nothing."""
        if not self.done.is_set():
            self.value, self.error = value, error
            self.done.set()

    async def wait(self) -> _T:
        """Wait for the outcome; return the value or raise (a copy of) the error."""
        await self.done.wait()
        return self.result()

    def result(self) -> _T:
        """Return the value or raise the error of a finished flight."""
        if self.error is not None:
            raise fresh_error(self.error)
        assert self.value is not None
        return self.value


def fresh_error(error: BaseException) -> BaseException:
    """A copy of ``error`` without its traceback, for one of many waiters to raise."""
    # Many waiters raise the outcome of one operation: give each its own exception
    # object so their tracebacks do not pile up on a shared one.
    try:
        clone = copy.copy(error)
    except Exception:
        return error
    clone.__traceback__ = None
    return clone

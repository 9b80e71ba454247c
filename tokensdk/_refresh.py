"""The refresh engine: one refresh at a time, on a timer, retried.

:class:`RefreshEngine` is the machinery around a refresh, not the refresh itself
(the session gives it ``do_refresh``, which talks to the service or the fleet):

- **single flight**: callers that need a refresh while one is under way join it;
- **the refresher task**: one long-lived task in the session's task group flies
  every posted refresh, so a caller's cancellation only stops that caller's wait;
  once the service said a refresh may be sent twice (it honours the idempotency
  key: :meth:`RefreshEngine.fly_inline`), the first caller flies it in its own task
  instead and posts it only if it is cancelled (two task switches less per refresh);
- **the refresh timer**: the background refresh scheduled before the token expires;
- **background retries**: a failed background refresh is tried again after the
  same backoff as a call's retries, while the session is active.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio

from tokensdk._clock import Clock
from tokensdk._errors import InvalidClient, SessionClosed, SessionLost, TokenSDKError
from tokensdk._flight import Flight
from tokensdk._models import Credentials, EventType, SessionStatus
from tokensdk._observable import StateHub
from tokensdk._scheduler import Scheduler, Timer
from tokensdk._transport import Backoff

__all__ = ["HandOff", "RefreshEngine"]

log = logging.getLogger("tokensdk")


class HandOff(BaseException):
    """Raised inside a refresh flown in a caller's task: let the refresher task finish it.

    A BaseException, so that no ``except Exception`` on the way swallows it.
    """


class RefreshEngine:
    """Single flight, the refresher task, the refresh timer and background retries.

    Args:
        do_refresh: Performs one refresh (the session's; it raises what callers get).
        hub: The session's state hub.
        clock: The session's clock.
        scheduler: The session's timer heap.
        backoff: The backoff between background retries.
        shared: The session is a fleet member (a flight remembers the pair it replaces).
        inline: A refresh may run in the task of the caller that starts it (see
            :meth:`fly_inline`).
        require_open: Raises SessionClosed unless the session is open.
        start_soon: Starts a background task if the session is open (else nothing).

    Attributes:
        wanted: In fleet mode, the active pair the current flight replaces.
        failures: Background refreshes failed in a row since the pair was installed.
    """

    def __init__(
        self,
        do_refresh: Callable[[], Awaitable[Credentials]],
        *,
        hub: StateHub,
        clock: Clock,
        scheduler: Scheduler,
        backoff: Backoff,
        shared: bool,
        require_open: Callable[[], None],
        start_soon: Callable[[Callable[[], Coroutine[Any, Any, Any]]], None],
        inline: bool = False,
    ) -> None:
        self._do_refresh = do_refresh
        self._hub = hub
        self._clock = clock
        self._scheduler = scheduler
        self._backoff = backoff
        self._shared = shared
        self._require_open = require_open
        self._start_soon = start_soon
        self.wanted: Credentials | None = None
        self.failures = 0
        self._flight: Flight[Credentials] | None = None
        # A flight waits for the refresher task (see run), which sleeps on _wake
        # meanwhile: a bare asyncio future, resolved once per refresh, costs less
        # than an event's waiter bookkeeping (anyio has no cheaper primitive; its
        # cancel scopes cancel a wait on a future like any other).
        self._posted = False
        self._wake: asyncio.Future[None] | None = None
        self._inline = inline and not shared
        self._here: Flight[Credentials] | None = None  # the flight a caller's task flies
        # Its deadline, none until the session closes: closing cancels the refresh
        # flown in a caller's task, as it cancels the refresher task, so that caller
        # gets SessionClosed at once instead of after its request (or its retries)
        # ran out. asyncio's timeout, not an anyio cancel scope: entering a scope
        # per refresh cost 6% of a refresh round trip (benchmark row 3); the stdlib
        # timeout delivers its cancellation inside the block or not at all, and
        # nests with anyio's scopes (both count with Task.uncancel).
        self._here_deadline: asyncio.Timeout | None = None
        self._timer: Timer | None = None

    # -- single flight ---------------------------------------------------------------

    async def refresh(self) -> Credentials:
        """Refresh, or join the refresh under way (SessionClosed if the session is not open)."""
        flight = self._flight
        if flight is None:
            self._require_open()
            # Flight(), not Flight[Credentials](): calling the subscripted alias goes
            # through typing and costs a few microseconds per refresh.
            flight = self._flight = Flight()
            if self._shared:
                snapshot = self._hub.snapshot
                active = snapshot.status is SessionStatus.ACTIVE
                self.wanted = snapshot.credentials if active else None
            if self._inline:
                return await self._fly_here(flight)
            self._post()
        return await flight.wait()

    def fly_inline(self, allowed: bool) -> None:
        """Whether a refresh may run in the task of the caller that starts it.

        Only where sending a refresh again is safe: the service said it answers a
        retry with the same idempotency key as a retry. A caller cancelled
        mid-request then hands the flight to the refresher task, which sends it
        again. Saves two task switches per refresh. Never in fleet mode.
        """
        self._inline = allowed and not self._shared

    def hand_off(self) -> None:
        """Raise :class:`HandOff` if the refresh runs in a caller's task.

        Called before work that a caller's cancellation must not cut short and that
        may not be repeated (the application's relogin hook).
        """
        if self._here is not None:
            raise HandOff

    def _post(self) -> None:
        self._posted = True
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def _fly_here(self, flight: Flight[Credentials]) -> Credentials:
        # The first caller flies the refresh in its own task; others join the flight.
        # Cancelled mid-refresh, it hands the flight to the refresher task, which
        # runs it again: the pending refresh keeps its idempotency key, so the
        # service answers a request it already served as a retry (same pair).
        self._here = flight
        deadline = self._here_deadline = asyncio.timeout(None)
        try:
            async with deadline:
                value = await self._do_refresh()
        except HandOff:
            self._here = self._here_deadline = None
            if not flight.done.is_set():
                self._post()
        except Exception as exc:
            self._here = self._here_deadline = None
            # Expired: the session closed (see abandon), which finished the flight;
            # its SessionClosed is raised below, as after a hand-off.
            if not deadline.expired():
                self._finish(flight, error=exc)
                if flight.error is exc:
                    raise
        except BaseException:
            self._here = self._here_deadline = None
            if not flight.done.is_set():
                self._post()  # cancelled: the others still wait for this refresh
            raise
        else:
            self._here = self._here_deadline = None
            self._finish(flight, value=value)
            return flight.result()
        # Handed to the refresher task, or ended otherwise (the session closed): the
        # flight's outcome, raised outside the handler (no HandOff in its context).
        return await flight.wait()

    async def run(self) -> None:
        """Fly every posted refresh, one at a time, until the session closes.

        One long-lived task in the session's task group runs the refreshes: waking it
        costs a fifth of starting a task per refresh, and a caller's cancellation
        still only stops that caller's wait.
        """
        loop = asyncio.get_running_loop()
        while True:
            if not self._posted:
                self._wake = wake = loop.create_future()
                try:
                    await wake
                finally:
                    self._wake = None
            self._posted = False
            flight = self._flight
            if flight is not None and not flight.done.is_set():
                await self._fly(flight)

    def abandon(self, error: BaseException) -> None:
        """End the refresh under way, if any, with ``error`` (the session closes).

        A refresh flown in a caller's task is cancelled there: that caller gets
        ``error`` now, like the callers waiting with it.
        """
        if self._flight is not None:
            self._finish(self._flight, error=error)
        deadline = self._here_deadline
        if deadline is not None:
            # Entered (it is cleared in the same step its block exits): expire it now.
            deadline.reschedule(asyncio.get_running_loop().time())

    def _finish(
        self,
        flight: Flight[Credentials],
        *,
        value: Credentials | None = None,
        error: BaseException | None = None,
    ) -> None:
        if self._flight is flight:
            self._flight = None
        flight.finish(value, error)

    async def _fly(self, flight: Flight[Credentials]) -> None:
        try:
            value = await self._do_refresh()
        except anyio.get_cancelled_exc_class():
            self._finish(flight, error=SessionClosed("the session was closed"))
            raise
        except Exception as exc:
            self._finish(flight, error=exc)
        else:
            self._finish(flight, value=value)

    # -- the timer and background retries ---------------------------------------------

    @property
    def next_refresh(self) -> float | None:
        """Monotonic time of the next scheduled background refresh, if any."""
        timer = self._timer
        return None if timer is None or timer.cancelled else timer.deadline

    def schedule(self, at: float) -> None:
        """Run a background refresh at monotonic time ``at`` (replacing the one scheduled)."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._scheduler.call_at(at, self._due)

    def unschedule(self) -> None:
        """Cancel the scheduled background refresh, if any."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _due(self) -> None:
        self._start_soon(self._background)

    async def _background(self) -> None:
        try:
            await self.refresh()
        except SessionLost:
            pass  # already reported by the session's loss
        except InvalidClient as exc:
            # Configuration, not weather: trying again later cannot help. Callers of
            # access_token() get the error; nothing is scheduled.
            log.warning("tokensdk: background refresh refused: the client is not accepted")
            self._hub.emit(self._hub.event(EventType.REFRESH_FAILED, type(exc).__name__, exc))
        except TokenSDKError as exc:
            self.failures += 1
            delay = self._backoff.after(self.failures, exc)
            log.warning(
                "tokensdk: background refresh failed (%s); next try in %.1fs",
                type(exc).__name__,
                delay,
            )
            self._hub.emit(self._hub.event(EventType.REFRESH_FAILED, type(exc).__name__, exc))
            if self._hub.snapshot.status is SessionStatus.ACTIVE:
                self.schedule(self._clock.monotonic() + delay)

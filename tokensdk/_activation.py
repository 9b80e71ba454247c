"""The activation: one refresh of the current token pair, its loss, and the relogin hook.

An activation is what a login starts: a token pair the session serves and renews until
a logout, a new login or the service's refusal ends it. :class:`Activation` runs one
refresh of it with the refresh's idempotency key (written to a durable store before
the request leaves, kept in memory otherwise and handed to the store at close),
recognises a result that a logout or a new login overtook, wipes what belonged to a
lost activation, and asks the application's relogin hook for a new one. It decides
none of the rest: the session gives it ``install``/``uninstall`` (the pair the hot
path serves and its refresh timer), the :class:`RefreshEngine` runs it one at a time,
and in fleet mode the :class:`Fleet` runs it under the shared lock.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable

from tokensdk._calls import BackendCalls
from tokensdk._context import SessionContext
from tokensdk._errors import (
    InvalidInput,
    SessionLost,
    StoreError,
    StoreUnavailable,
    TokenSDKError,
)
from tokensdk._fleet import Conflict, Fleet
from tokensdk._models import Credentials, EventType, PendingRefresh, SessionStatus

__all__ = ["Activation"]

log = logging.getLogger("tokensdk")


class Activation:
    """One refresh of the current activation, its loss, and the relogin hook.

    Args:
        context: The session's hub, clock, lifecycle facts and transport.
        calls: The session's calls to its backend.
        fleet: The session's side of the shared state (its write and claim).
        shared: The session is a fleet member.
        durable: The store outlives the process (the refresh key is saved first).
        flush: Waits until the session's state is saved.
        saving: Whether the store has not been given the newest state yet.
        store_failed: Reports a store error the session carries on after.
        install: Makes a pair the served pair and schedules its refresh.
        uninstall: Stops serving a pair.
        relogin: The application's relogin hook, bound to the session; or None.
        hand_off: Called before the relogin hook runs: moves a refresh flown in a
            caller's task to the session's (see :meth:`RefreshEngine.hand_off`).
        fly_inline: Told after each refresh whether the service honours the
            idempotency key (see :meth:`RefreshEngine.fly_inline`).
        login: Logs in with a username and password (for the hook's answer).
    """

    def __init__(
        self,
        context: SessionContext,
        *,
        calls: BackendCalls,
        fleet: Fleet,
        shared: bool,
        durable: bool,
        flush: Callable[[], Awaitable[None]],
        saving: Callable[[], bool],
        store_failed: Callable[[BaseException], None],
        install: Callable[[Credentials], None],
        uninstall: Callable[[], None],
        relogin: Callable[[], Awaitable[tuple[str, str] | None]] | None,
        login: Callable[[str, str], Awaitable[None]],
        hand_off: Callable[[], None],
        fly_inline: Callable[[bool], None],
    ) -> None:
        self._hub = context.hub
        self._clock = context.clock
        self._life = context.lifecycle
        self._transport = context.transport
        self._calls = calls
        self._fleet = fleet
        self._shared = shared
        self._durable = durable
        self._flush = flush
        self._saving = saving
        self._store_failed = store_failed
        self._install = install
        self._uninstall = uninstall
        self._relogin = relogin
        self._login = login
        self._hand_off = hand_off
        self._fly_inline = fly_inline
        # A store that cannot outlive the process gets the pending refresh only at
        # close (see refresh_once); until then it is kept here.
        self._unsaved_pending: PendingRefresh | None = None

    def keep_unfinished_refresh(self) -> None:
        """Hand the store the key of a refresh that did not finish (the session closes)."""
        # A refresh that did not finish may have rotated the pair on the service: a
        # later session on the same (in-process) store must retry it with its key.
        pending, self._unsaved_pending = self._unsaved_pending, None
        snapshot = self._hub.snapshot
        if (
            pending is not None
            and snapshot.credentials is not None
            and snapshot.credentials.refresh_token == pending.refresh_token
            and snapshot.pending_refresh is None
        ):
            self._hub.commit(pending_refresh=pending)

    async def refresh_once(self) -> Credentials:
        """Refresh the pair once (or relogin, or lose it); raises what callers get.

        Raises:
            Conflict: In fleet mode, a sibling wrote the state before the refresh
                was sent: reload and decide again.
        """
        snapshot = self._hub.snapshot
        creds = snapshot.credentials
        generation = self._life.generation
        if snapshot.status is SessionStatus.LOGGED_OUT:
            # A logout overtook this refresh (one a cancelled caller handed to the
            # refresher task, flown again after the logout): it ends as a refresh the
            # logout overtook, never by asking the relogin hook to undo the logout.
            return self._stale_refresh()
        if snapshot.status is SessionStatus.NEEDS_LOGIN or creds is None:
            return await self.try_relogin(self._life.lost_reason)
        await self._calls.discover()
        now_mono, now_wall = self._clock.monotonic(), self._clock.time()
        if creds.refresh_left(now_wall, now_mono) <= 0:
            await self.lose("token_expired", generation)
            return await self.try_relogin("token_expired")
        # Retry no longer than the current token lives, but give one attempt room.
        deadline = max(
            now_mono + creds.access_left(now_wall, now_mono), now_mono + self._transport.timeout
        )
        # Extension (see PROTOCOL): one key per refresh token, kept until the new pair
        # is installed, so any retry after a lost answer, by this call, a later one or
        # the next process after a crash, gets the same answer instead of tripping
        # reuse detection. A durable store has it before the request leaves.
        if creds.refresh_token is None and self._calls.backend.refresh(creds, "") is None:
            # An access token alone (a password grant without offline_access): nothing
            # to renew it with. Serve it while it lives; the session ends with it.
            if creds.access_left(now_wall, now_mono) > 0:
                return creds
            await self.lose("token_expired", generation)
            return await self.try_relogin("token_expired")
        pending = snapshot.pending_refresh or self._unsaved_pending
        if pending is None or pending.refresh_token != creds.refresh_token:
            pending = PendingRefresh(creds.refresh_token or "", secrets.token_hex(16), now_wall)
            if self._shared:
                # Written now, under the lease, or not sent: a member that dies after
                # sending leaves the key to whoever takes the lease next.
                self._hub.commit(pending_refresh=pending)
                try:
                    await self._fleet.write()
                except StoreUnavailable:
                    raise
                except StoreError as exc:
                    self._store_failed(exc)  # an unusable file: as a single session
                if self._hub.snapshot.pending_refresh is not pending:
                    raise Conflict  # a sibling wrote meanwhile: reload and decide again
                if generation != self._life.generation:
                    return self._stale_refresh()
            elif self._durable:
                self._hub.commit(pending_refresh=pending)
                await self._flush()
                if generation != self._life.generation:
                    return self._stale_refresh()
            else:
                # Nothing the store holds survives the process: writing the key first
                # would only cost a commit and an encoding per refresh. It reaches the
                # store at close if the refresh is still unfinished (see
                # keep_unfinished_refresh), for a later session of this process on
                # the same store.
                self._unsaved_pending = pending
        elif self._durable and not self._shared and self._saving():
            # A run cancelled while writing the key (a caller's, see RefreshEngine):
            # the key still goes to the store before the request leaves.
            await self._flush()
            if generation != self._life.generation:
                return self._stale_refresh()
        call = self._calls.backend.refresh(creds, pending.idempotency_key)
        if call is None:  # a backend that cannot renew these credentials
            await self.lose("token_expired", generation)
            return await self.try_relogin("token_expired")
        try:
            reply = await self._calls.send(call, deadline=deadline)
        except TokenSDKError as exc:
            gone = self._calls.gone(exc)
            if gone is None:
                raise
            await self.lose(gone.reason, generation)
            return await self.try_relogin(gone.reason)
        backend = self._calls.backend
        new = backend.grant(reply.body, wall=reply.sent_wall, monotonic=reply.sent_monotonic)
        new = new.renewed_from(creds)
        # The next refresh may fly in its caller's task only if this service said a
        # retry with the key is answered as one (a contract-v1 service would take the
        # re-send of a cancelled caller's refresh for reuse). Asked on every answer:
        # a service restarted without the extension is followed at once.
        retry_window = getattr(backend, "retry_window", None)
        self._fly_inline(retry_window is not None and retry_window(reply.body) is not None)
        if generation != self._life.generation:
            return self._stale_refresh()
        # Installing the pair and forgetting the pending refresh are one commit, so
        # the store never holds the new pair with a retry of the old one, or the
        # reverse. (An event nobody receives is not built.)
        hub = self._hub
        hub.commit(
            *((hub.event(EventType.REFRESHED, new.username),) if hub.observed else ()),
            credentials=new,
            status=SessionStatus.ACTIVE,
            pending_refresh=None,
        )
        self._unsaved_pending = None
        self._install(new)
        if self._shared:
            self._fleet.claim = True  # the service's newest pair: it wins any write conflict
            try:
                await self._fleet.write()
            except StoreError as exc:
                # The pair is ours and valid; the store learns it when it is back
                # (see _resync), and a sibling retrying the pending key gets it too.
                self._store_failed(exc)
        return new

    def _stale_refresh(self) -> Credentials:
        # A logout or a new login overtook this refresh: its result is stale.
        current = self._hub.snapshot.credentials
        if current is None:
            raise SessionLost(self._life.lost_reason)
        return current

    async def try_relogin(self, reason: str) -> Credentials:
        """Ask the relogin hook for a new activation; SessionLost(reason) without one."""
        if self._relogin is None or self._life.logging_out:
            raise SessionLost(reason)
        self._hand_off()  # the application's hook runs in the session's task
        try:
            answer = await self._relogin()
            if answer is not None:
                if not isinstance(answer, tuple) or len(answer) != 2:
                    raise InvalidInput("relogin must return (username, password) or None")
                await self._login(*answer)
        except Exception as exc:  # the hook is the application's code: any error
            log.warning("tokensdk: relogin failed: %s", type(exc).__name__)
            raise SessionLost(reason) from None
        creds = self._hub.snapshot.credentials
        if creds is None or self._hub.snapshot.status is not SessionStatus.ACTIVE:
            raise SessionLost(reason)
        return creds

    async def lose(self, reason: str, generation: int | None = None) -> None:
        """The activation is gone: wipe what belonged to it and tell everyone."""
        if generation is not None and generation != self._life.generation:
            return
        self._life.generation += 1
        self._uninstall()
        self._life.lost_reason = reason
        self._fleet.claim = True
        log.warning("tokensdk: session lost (%s)", reason)
        self._hub.commit(
            self._hub.event(EventType.SESSION_LOST, reason),
            status=SessionStatus.NEEDS_LOGIN,
            credentials=None,
            mac_tokens={},
            pending_refresh=None,
        )

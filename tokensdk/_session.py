"""The Session: log in once, then always hold a valid access token.

Lifecycle::

    LOGGED_OUT --login*--> ACTIVE --refresh--> ACTIVE
        ^                    |  \\
        |                 logout  refresh/with-token refused (expired, reused, revoked)
        +--------------------+    \\--> NEEDS_LOGIN  (credentials and MAC tokens wiped)

All background work (the timer heap, change dispatch, coalesced saving, refreshes)
lives in one anyio task group owned by ``async with``; leaving the block cancels and
awaits it, flushes the store and closes the HTTP session.

The Session is the facade: it wires the parts, serves the hot path and delegates
the rest. One concept per module: the task group in ``_tasks``; loading the stored
state in ``_restore``; the logins and the logout in ``_logins``; one refresh of the
current pair, its loss and the relogin hook in ``_activation``; single flight, the
refresh timer and background retries in ``_refresh``; the fleet's shared state in
``_fleet``; the calls to the backend in ``_calls``. They receive the
:class:`SessionContext` and explicit callables, never the Session.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio

from tokensdk._activation import Activation
from tokensdk._assets import AccessTokens
from tokensdk._backend import AuthBackend, NativeBackend
from tokensdk._calls import BackendCalls
from tokensdk._clock import Clock, SystemClock
from tokensdk._clocksync import read_clock
from tokensdk._context import Lifecycle, SessionContext
from tokensdk._coordinator import Coordinator, coordinator_for
from tokensdk._dpop import DPoPState
from tokensdk._errors import InvalidInput, NotLoggedIn, SessionClosed, SessionLost
from tokensdk._fleet import Fleet, SharedWriter
from tokensdk._logins import Logins, OneTimeKeyAnswer, one_time_key_answer
from tokensdk._models import (
    AssetToken,
    Credentials,
    EventType,
    SessionSnapshot,
    SessionStatus,
    snapshot_to_document,
)
from tokensdk._observable import ChangeCallback, EventStream, StateHub
from tokensdk._paseto import AccessTokenInfo
from tokensdk._persist import CoalescingSaver
from tokensdk._policy import RefreshPolicy, clamp_plan, plan_refresh
from tokensdk._refresh import RefreshEngine
from tokensdk._restore import asset_list, load_state
from tokensdk._scheduler import Scheduler
from tokensdk._tasks import SessionTasks
from tokensdk._token_store import MacTokenStore
from tokensdk._transport import AttemptHook, Backoff, RetryConfig, Transport
from tokensdk.stores import MemoryStore, StateStore

if TYPE_CHECKING:
    from tokensdk._oauth2 import DeviceCode
    from tokensdk.aiohttp import TokenMiddleware

__all__ = ["Session", "one_time_key_answer"]

log = logging.getLogger("tokensdk")

Relogin = Callable[["Session"], Awaitable[tuple[str, str] | None]]


class Session:
    """An authenticated session that refreshes its tokens in the background.

    Use it as ``async with Session(url, ...) as session:``; log in once, then call
    :meth:`access_token` whenever a token is needed.

    Args:
        backend: The token service: its root URL (``http://127.0.0.1:8080``, the
            reference contract, i.e. ``NativeBackend(url)``) or an :class:`AuthBackend`.
        store: Where the state is persisted (default: memory only).
        on_change: Callback(s) receiving a :class:`SessionSnapshot` after changes,
            in order and never concurrently; sync or async.
        clock: The clock (inject :class:`ManualClock` in tests).
        policy: Refresh windows and jitter.
        retry: Backoff for transient failures.
        timeout: Seconds one HTTP attempt may take.
        relogin: An async callable ``relogin(session)`` called when the session is
            lost: it returns the ``(username, password)`` to log in with, or logs in
            itself (any login method) and returns None.
        http: An aiohttp session for the SDK's own calls (one is created otherwise).
        access_tokens: A saved asset-token array to restore (as persisted by a
            change callback); it replaces what the store holds.
        rng: Random source for jitter (seed it for reproducible schedules).
        attempt_hook: Entered around every HTTP attempt of the session's own calls
            (see :class:`AttemptHook`): to instrument them, or to hold them in tests.
        coordinator: How the processes sharing ``store`` coordinate (see
            :class:`Coordinator`); by default chosen by the store's type: a
            :class:`FileStore` or :class:`RedisStore` is shared (one refresh per
            token window fleet-wide, changes adopted from other members), any other
            store is owned by this process. Give a :class:`StoreCoordinator` to set
            the refresh lease; ``store`` may then be omitted.

    Attributes:
        access_tokens: The observable array of asset access tokens
            (:class:`AccessTokens`).
        token_store: The named MAC tokens (``MacTokenStore``).
        clock_offset: Seconds to add to local wall time to get the service's time
            (see :meth:`sync_clock`); MAC header timestamps include it.
        realm: The service's realm, once a clock sync has read it; else None.
    """

    def __init__(
        self,
        backend: str | AuthBackend,
        *,
        store: StateStore | None = None,
        on_change: ChangeCallback | Sequence[ChangeCallback] | None = None,
        clock: Clock | None = None,
        policy: RefreshPolicy = RefreshPolicy(),
        retry: RetryConfig = RetryConfig(),
        timeout: float = 10.0,
        relogin: Relogin | None = None,
        http: aiohttp.ClientSession | None = None,
        access_tokens: Iterable[AssetToken | Mapping[str, Any]] | None = None,
        rng: random.Random | None = None,
        attempt_hook: AttemptHook | None = None,
        coordinator: Coordinator | None = None,
    ) -> None:
        if timeout <= 0 or not math.isfinite(timeout):
            raise InvalidInput("timeout must be a positive number of seconds")
        self._clock: Clock = clock or SystemClock()
        if store is None:
            store = coordinator.store if coordinator is not None else MemoryStore()
        self._store: StateStore = store
        self._coord = coordinator if coordinator is not None else coordinator_for(store)
        if not isinstance(self._coord, Coordinator) or self._coord.store is not store:
            raise InvalidInput("coordinator must be a Coordinator of the session's store")
        # Fleet mode: other members write the same state (see _fleet.Fleet.refresh).
        self._shared = self._coord.shared
        self._policy = policy
        self._rng = rng or random.Random()
        self._relogin = relogin
        auth: AuthBackend = NativeBackend(backend) if isinstance(backend, str) else backend
        if not isinstance(auth, AuthBackend):
            raise InvalidInput("backend must be a URL or an AuthBackend")
        self._transport = Transport(
            auth.base_url + auth.api_path,
            self._clock,
            http=http,
            timeout=timeout,
            retry=retry,
            hook=attempt_hook,
            error_details=auth.error_details,
        )
        signer = getattr(auth, "dpop", None)
        self._dpop = None if signer is None else DPoPState(signer, self._clock.time)
        self._transport.dpop = self._dpop
        self._calls = BackendCalls(auth, self._transport, self._dpop)
        self._hub = StateHub(self._clock)
        callbacks = [] if on_change is None else [on_change] if callable(on_change) else on_change
        for callback in callbacks:
            self._hub.add_callback(callback)
        self._restore_tokens = None if access_tokens is None else asset_list(access_tokens)
        self._scheduler = Scheduler(self._clock)
        self._life = Lifecycle()
        self._fleet = Fleet(
            coord=self._coord,
            shared=self._shared,
            hub=self._hub,
            clock=self._clock,
            life=self._life,
            flush=lambda: self._saver.flush(),
            timeout=timeout,
            rng=self._rng,
            has_relogin=relogin is not None,
            install=self._install,
            uninstall=self._uninstall,
            refresh_once=lambda: self._activation.refresh_once(),
            store_failed=self._store_failed,
        )
        self._saver = CoalescingSaver(
            SharedWriter(self._store, self._fleet.write) if self._shared else self._store,
            on_error=self._store_failed,
            encode=None if self._shared else snapshot_to_document,
            # A store that cannot outlive the process is read by nobody before a
            # flush (or the close, which flushes): writing it after every change
            # cost an encoding per refresh (benchmark row 3). A shared store is read
            # by the other members at any time, whatever it says of its durability.
            deferred=not self._shared and getattr(store, "durable", True) is False,
        )
        self._hub.add_listener(self._persist)
        self._tasks = SessionTasks()
        self._engine = RefreshEngine(
            self._do_refresh,
            hub=self._hub,
            clock=self._clock,
            scheduler=self._scheduler,
            # The same backoff as a call's retries, jittered by the session's random source.
            backoff=Backoff(retry, self._rng),
            shared=self._shared,
            require_open=self._tasks.require_open,
            start_soon=self._tasks.soon,
        )
        # The hot path reads these three attributes and the two clocks, nothing else.
        self._token: str | None = None
        self._fresh_mono = -math.inf
        self._fresh_wall = -math.inf
        self.realm: str | None = None
        self._on_open: list[Callable[[], Awaitable[None]]] = []
        self._context = SessionContext(
            hub=self._hub,
            clock=self._clock,
            transport=self._transport,
            scheduler=self._scheduler,
            lifecycle=self._life,
            spawn=self._tasks.spawn,
            bearer=self.access_token,
            refresh=self.token_refresh,
            sync_clock=self.sync_clock,
            on_open=self._on_open.append,
            # Through self: discovery replaces the backend with one that knows its endpoints.
            own_call=lambda url: self._calls.backend.own_call(url),
            dpop=self._dpop,
            exclusive=self._fleet.exclusive,
            resources=auth,  # None unless the backend is a ResourceBackend (NativeBackend)
        )
        self.access_tokens = AccessTokens(self._context)
        self.token_store = MacTokenStore(self._context)
        self._activation = Activation(
            self._context,
            calls=self._calls,
            fleet=self._fleet,
            shared=self._shared,
            durable=getattr(self._store, "durable", True) is not False,
            flush=self._saver.flush,
            saving=lambda: not self._saver.idle,
            store_failed=self._store_failed,
            install=self._install,
            uninstall=self._uninstall,
            relogin=None if relogin is None else partial(relogin, self),
            login=self.login,
            hand_off=self._engine.hand_off,
            fly_inline=self._engine.fly_inline,
        )
        self._logins = Logins(
            self._context,
            calls=self._calls,
            fleet=self._fleet,
            engine=self._engine,
            install=self._install,
            uninstall=self._uninstall,
            lose=self._activation.lose,
            require_open=self._tasks.require_open,
            soon=self._tasks.soon,
        )

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> Session:
        started = self._tasks.start(
            self._scheduler.run, self._hub.run, self._saver.run, self._engine.run
        )
        try:
            await started
            await load_state(
                self._context,
                coord=self._coord,
                fleet=self._fleet,
                engine=self._engine,
                restore_tokens=self._restore_tokens,
                install=self._install,
            )
            if self._shared:
                self._tasks.spawn(self._fleet.watch)
            for opened in self._on_open:
                await opened()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._tasks.close()
        self._activation.keep_unfinished_refresh()
        self._hub.freeze()
        try:
            await self._tasks.cancel_and_wait()
        finally:
            with anyio.CancelScope(shield=True):
                self._engine.abandon(SessionClosed("the session was closed"))
                await self._saver.flush()
                await self._hub.drain()
                self._hub.close()
                await self._transport.aclose()

    @property
    def clock_offset(self) -> float:
        """Seconds to add to local wall time to get the service's (see :meth:`sync_clock`)."""
        return self._life.clock_offset

    @clock_offset.setter
    def clock_offset(self, value: float) -> None:
        self._life.clock_offset = value

    # -- state -----------------------------------------------------------------------

    @property
    def snapshot(self) -> SessionSnapshot:
        """The current state as an immutable snapshot."""
        return self._hub.snapshot

    @property
    def status(self) -> SessionStatus:
        """Where the session stands (logged out, active, needs login)."""
        return self._hub.snapshot.status

    @property
    def username(self) -> str | None:
        """The logged-in user, if any."""
        return self._hub.snapshot.username

    @property
    def credentials(self) -> Credentials | None:
        """The current token pair (a frozen snapshot; secrets are redacted in its repr)."""
        return self._hub.snapshot.credentials

    @property
    def next_refresh(self) -> float | None:
        """Monotonic time of the next scheduled background refresh, if any."""
        return self._engine.next_refresh

    def events(self, buffer: int = 1024) -> EventStream:
        """Subscribe to this session's events (an async iterator of :class:`Event`).

        Args:
            buffer: Events held for a slow reader before new ones are dropped.
        """
        return self._hub.subscribe(buffer)

    def middleware(
        self, *, mac_token: str | None = None, asset_id: str | None = None
    ) -> TokenMiddleware:
        """An aiohttp client middleware that authenticates requests with this session.

        ``aiohttp.ClientSession(middlewares=(session.middleware(),))``; see
        :mod:`tokensdk.aiohttp`.

        Args:
            mac_token: Sign with this named MAC token instead of the bearer token.
            asset_id: Present this asset's access token instead of the bearer token.
        """
        from tokensdk.aiohttp import TokenMiddleware

        return TokenMiddleware(
            self._context,
            self.access_tokens,
            self.token_store,
            mac_token=mac_token,
            asset_id=asset_id,
        )

    async def validate_access_token(self, token: str, *, remote: bool = False) -> AccessTokenInfo:
        """Validate an asset access token; an invalid one is removed from the array.

        The same as ``session.access_tokens.validate(token, remote=remote)``: local
        validation with the service's key set (fetched on an unknown ``kid``), and
        remote validation too when ``remote`` is set (catches revocation).

        Args:
            token: The token text.
            remote: Also ask the service.

        Returns:
            What the token grants (``asset_ids``, ``expires_at``, ...).

        Raises:
            TokenInvalid: A subclass saying why (expired, bad signature, unknown key,
                malformed, revoked).
            ServiceUnavailable: Keys or remote validation were needed and the service
                could not be reached.
        """
        return await self.access_tokens.validate(token, remote=remote)

    def add_change_callback(self, callback: ChangeCallback) -> None:
        """Register another change callback."""
        self._hub.add_callback(callback)

    async def changes_delivered(self) -> None:
        """Wait until every change so far has reached the change callbacks."""
        await self._hub.wait_delivered()

    async def flush(self) -> None:
        """Wait until the current state is written to the store."""
        await self._saver.flush()

    def _persist(self, snapshot: SessionSnapshot) -> None:
        self._saver.submit(snapshot)  # encoded when written: bursts cost one encoding

    def _store_failed(self, error: BaseException) -> None:
        log.warning("tokensdk: saving the session state failed: %s", error)
        self._hub.emit(self._hub.event(EventType.STORE_FAILED, type(error).__name__, error))

    # -- the hot path ----------------------------------------------------------------

    async def access_token(self) -> str:
        """Return a valid access token, refreshing first if it is about to expire.

        Returns:
            A bearer token valid for at least the mandatory window.

        Raises:
            NotLoggedIn: No login happened yet.
            SessionLost: The activation is gone; log in again.
            ServiceUnavailable: A needed refresh failed for transient reasons.
        """
        clock = self._clock
        if clock.monotonic() < self._fresh_mono and clock.time() < self._fresh_wall:
            token = self._token
            if token is not None:
                return token
        return (await self._mandatory_refresh()).access_token

    async def _mandatory_refresh(self) -> Credentials:
        snapshot = self._hub.snapshot
        if snapshot.status is SessionStatus.NEEDS_LOGIN and self._relogin is None:
            raise SessionLost(self._life.lost_reason)
        if snapshot.status is SessionStatus.LOGGED_OUT:
            raise NotLoggedIn("log in first")
        return await self._engine.refresh()

    async def token_refresh(self) -> Credentials:
        """Refresh the token pair now (joining a refresh already under way).

        Returns:
            The new credentials.

        Raises:
            NotLoggedIn: No login happened yet.
            SessionLost: The refresh token was refused; log in again.
            ServiceUnavailable: The service stayed unreachable.
        """
        return await self._mandatory_refresh()

    # -- login / logout --------------------------------------------------------------

    async def login(self, username: str, password: str) -> None:
        """Log in with a username and password.

        A login while logged in starts a new token family: the previous pair and its
        MAC tokens are forgotten locally (call :meth:`logout` first to revoke them on
        the service).

        Raises:
            InvalidCredentials: Wrong username or password.
            AccountFrozen: The account is frozen.
            RateLimited: Too many attempts; see ``retry_after``.
            ServiceUnavailable: The service could not be reached.
        """
        await self._logins.login(username, password)

    async def login_client_credentials(self) -> None:
        """Log in as the client itself: the OAuth 2.0 client credentials grant.

        The grant has no refresh token; the session runs it again in the background
        before the access token expires (one at a time, as any refresh).

        Raises:
            InvalidInput: The backend has no such grant (not an OAuth 2.0 backend, or
                a public client).
            InvalidClient: The provider refused the client id or secret.
            ServiceUnavailable: The provider could not be reached.
        """
        await self._logins.login_client_credentials()

    async def login_with_refresh_token(
        self, refresh_token: str, *, username: str | None = None
    ) -> None:
        """Log in with a refresh token obtained elsewhere (a browser flow, a CLI).

        It is redeemed at once (the refresh_token grant); with rotation the provider
        answers with a new one, which the session keeps from then on.

        Args:
            refresh_token: The refresh token.
            username: A name for the account, for events and :attr:`username`.

        Raises:
            InvalidCredentials: The provider refused the refresh token (expired,
                revoked, used).
            InvalidClient: The provider refused the client.
        """
        await self._logins.login_with_refresh_token(refresh_token, username=username)

    async def login_device(
        self,
        on_code: Callable[[DeviceCode], Awaitable[None] | None],
        *,
        username: str | None = None,
    ) -> None:
        """Log in with the device authorization grant (RFC 8628): for CLIs and devices.

        The provider issues a user code; ``on_code`` shows it to the user (with the
        verification URI), who approves on another device. The session polls the
        token endpoint every ``interval`` seconds (five more after each
        ``slow_down``) until the user approves, refuses, or the code expires.

        Args:
            on_code: Receives the :class:`DeviceCode` (sync or async).
            username: A name for the account, for events and :attr:`username`.

        Raises:
            InvalidCredentials: The user refused (``access_denied``) or the code
                expired (``expired_token``).
            InvalidInput: The backend has no device authorization endpoint.
        """
        await self._logins.login_device(on_code, username=username)

    async def login_authorization_code(
        self,
        open_browser: Callable[[str], Awaitable[None] | None],
        *,
        port: int = 0,
        wait_for_user: float = 300.0,
        prompt: str | None = None,
        username: str | None = None,
    ) -> None:
        """Log in through the user's browser: authorization code + PKCE, loopback redirect.

        A listener on ``http://127.0.0.1:<port>/callback`` (RFC 8252 §7.3) receives the
        redirect; the code is redeemed with the PKCE verifier (RFC 7636, S256). The
        ``state`` and the ``iss`` of the answer (RFC 9207) are checked.

        Args:
            open_browser: Receives the authorization URL to open (sync or async),
                e.g. ``webbrowser.open``.
            port: The loopback port (0: any free one; the client must be registered
                for loopback redirects on any port, as native clients are).
            wait_for_user: Seconds to wait for the user (real time).
            prompt: The ``prompt`` parameter (``"consent"`` where the provider wants
                it before it grants ``offline_access``).
            username: A name for the account, for events and :attr:`username`.

        Raises:
            InvalidCredentials: The user or the provider refused.
            TimeoutError: Nobody came back within ``wait_for_user``.
            ProtocolError: The redirect's state or issuer did not match.
        """
        await self._logins.login_authorization_code(
            open_browser,
            port=port,
            wait_for_user=wait_for_user,
            prompt=prompt,
            username=username,
        )

    async def login_with_one_time_key(self, username: str, answer: OneTimeKeyAnswer) -> None:
        """Log in with a one-time key answered by the application's own backend.

        Args:
            username: The account.
            answer: Receives the key and returns the hash (sync or async); see
                :func:`one_time_key_answer` for what the backend computes.

        Raises:
            InvalidCredentials: The answer was wrong, or the key expired.
            RateLimited: Too many keys requested.
        """
        await self._logins.login_with_one_time_key(username, answer)

    async def login_with_token(self, credentials: Credentials | None = None) -> None:
        """Resume from a saved token pair, checking it with the service.

        With no argument the pair restored from the store is used. An expired access
        token falls back to a refresh.

        Args:
            credentials: A saved pair (e.g. ``snapshot.credentials`` persisted earlier).

        Raises:
            NotLoggedIn: There is no saved pair.
            SessionLost: The saved pair is no longer valid; log in again.
        """
        await self._logins.login_with_token(credentials)

    async def logout(self) -> bool:
        """Log out: revoke the token family on the service and forget it locally.

        Local state is cleared even when the service cannot be reached; the answer
        says whether the service revoked the family.

        Returns:
            True when the family is dead on the service (revoked now, or already
            gone), False when the service could not be reached: the tokens stay
            valid there until they expire.
        """
        return await self._logins.logout()

    async def sync_clock(self) -> float:
        """Estimate the offset between the service's clock and ours (``GET /v1/status``).

        Offsets below 2 s are ignored (taken as 0).

        Returns:
            The offset in seconds to add to local wall time.
        """
        before = self._clock.monotonic()
        reply = await self._calls.send(self._calls.backend.status())
        rtt = self._clock.monotonic() - before
        reading = read_clock(reply.body, reply.sent_wall, rtt)
        self.realm = reading.realm if reading.realm is not None else self.realm
        self.clock_offset = reading.offset
        self._hub.emit(self._hub.event(EventType.CLOCK_SYNCED, f"{self.clock_offset:+.3f}s"))
        return self.clock_offset

    # -- refresh ---------------------------------------------------------------------

    def _install(self, creds: Credentials) -> None:
        """Make ``creds`` the served pair and schedule its refresh."""
        now_mono, now_wall = self._clock.monotonic(), self._clock.time()
        plan = plan_refresh(creds.lifetime, creds.access_deadline, self._policy, self._rng)
        window = plan.mandatory_window
        self._token = creds.access_token
        self._fresh_mono = plan.mandatory_at
        self._fresh_wall = creds.access_expires_at - window
        self._engine.failures = 0
        self._engine.schedule(clamp_plan(plan, now_mono, creds.access_expires_at - now_wall))

    def _uninstall(self) -> None:
        self._token = None
        self._fresh_mono = self._fresh_wall = -math.inf
        self._engine.unschedule()

    async def _do_refresh(self) -> Credentials:
        if self._shared:
            return await self._fleet.refresh(self._engine.wanted)
        return await self._activation.refresh_once()

    def __repr__(self) -> str:
        snapshot = self._hub.snapshot
        return (
            f"Session({self._calls.backend.base_url!r}, status={snapshot.status.value},"
            f" username={snapshot.username!r})"
        )

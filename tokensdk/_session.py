"""The Session: log in once, then always hold a valid access token.

Lifecycle::

    LOGGED_OUT --login*--> ACTIVE --refresh--> ACTIVE
        ^                    |  \\
        |                 logout  refresh/with-token refused (expired, reused, revoked)
        +--------------------+    \\--> NEEDS_LOGIN  (credentials and MAC tokens wiped)

All background work (the timer heap, change dispatch, coalesced saving, refreshes)
lives in one anyio task group owned by ``async with``; leaving the block cancels and
awaits it, flushes the store and closes the HTTP session.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import math
import random
import secrets
from collections.abc import (
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from types import TracebackType
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
import attrs
from anyio.abc import TaskGroup

from tokensdk._assets import AccessTokens
from tokensdk._backend import AuthBackend, GrantBackend, Lost, NativeBackend
from tokensdk._calls import BackendCalls
from tokensdk._clock import Clock, SystemClock
from tokensdk._clocksync import read_clock
from tokensdk._context import Lifecycle, SessionContext
from tokensdk._coordinator import Coordinator, coordinator_for
from tokensdk._dpop import DPoPState
from tokensdk._errors import (
    InvalidInput,
    NotLoggedIn,
    SessionClosed,
    SessionLost,
    StoreCorrupt,
    StoreError,
    StoreUnavailable,
    TokenSDKError,
)
from tokensdk._fleet import (
    Conflict,
    Fleet,
    SharedWriter,
)
from tokensdk._logins import check_text, pkce_pair, poll_device
from tokensdk._models import (
    AssetToken,
    Credentials,
    EventType,
    PendingRefresh,
    SessionSnapshot,
    SessionStatus,
    document_to_snapshot,
    snapshot_to_document,
)
from tokensdk._oauth2 import DeviceCode, OAuth2
from tokensdk._observable import ChangeCallback, EventStream, StateHub
from tokensdk._paseto import AccessTokenInfo
from tokensdk._persist import CoalescingSaver
from tokensdk._policy import RefreshPlan, RefreshPolicy, plan_refresh
from tokensdk._refresh import RefreshEngine
from tokensdk._restore import asset_list, restore_state
from tokensdk._scheduler import Scheduler
from tokensdk._token_store import MacTokenStore
from tokensdk._transport import AttemptHook, Backoff, RetryConfig, Transport
from tokensdk.stores import MemoryStore, StateStore

if TYPE_CHECKING:
    from tokensdk.aiohttp import TokenMiddleware

__all__ = ["Session", "one_time_key_answer"]

log = logging.getLogger("tokensdk")

OneTimeKeyAnswer = Callable[[str], Awaitable[str] | str]
Relogin = Callable[["Session"], Awaitable[tuple[str, str] | None]]


def one_time_key_answer(key: str, username: str, realm: str, password: str) -> str:
    """Compute the answer to a one-time login key, for the application's own backend.

    ``sha256hex(key + "|" + sha256hex(username + ":" + realm + ":" + password))``.

    Args:
        key: The key the service issued.
        username: The account.
        realm: The service's realm (``GET /v1/status``).
        password: The account's password (held by the backend, never the client).

    Returns:
        The lowercase hex hash to send as ``hash``.
    """
    inner = hashlib.sha256(f"{username}:{realm}:{password}".encode()).hexdigest()
    return hashlib.sha256(f"{key}|{inner}".encode()).hexdigest()


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
            refresh_once=self._refresh_once,
            store_failed=self._store_failed,
        )
        self._saver = CoalescingSaver(
            SharedWriter(self._store, self._fleet.write) if self._shared else self._store,
            on_error=self._store_failed,
            encode=None if self._shared else snapshot_to_document,
            # A store that cannot outlive the process is read by nobody before a
            # flush (or the close, which flushes): writing it after every change
            # cost an encoding per refresh (benchmark row 3).
            deferred=getattr(store, "durable", True) is False,
        )
        self._hub.add_listener(self._persist)
        self._tg: TaskGroup | None = None
        self._runner: asyncio.Future[None] | None = None
        self._closed = False
        self._engine = RefreshEngine(
            self._do_refresh,
            hub=self._hub,
            clock=self._clock,
            scheduler=self._scheduler,
            # The same backoff as a call's retries, jittered by the session's random source.
            backoff=Backoff(retry, self._rng),
            shared=self._shared,
            require_open=self._require_open,
            start_soon=self._soon,
            # The native contract's idempotency key makes a re-send safe: a refresh
            # runs in its caller's task (see RefreshEngine); OAuth 2.0 has no such key.
            inline=getattr(auth, "idempotent_refresh", False) is True,
        )
        # A store that cannot outlive the process gets the pending refresh only at
        # close (see _refresh_once); until then it is kept here.
        self._durable = getattr(self._store, "durable", True) is not False
        self._unsaved_pending: PendingRefresh | None = None
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
            spawn=self._spawn,
            bearer=self.access_token,
            refresh=self.token_refresh,
            sync_clock=self.sync_clock,
            on_open=self._on_open.append,
            # Through self: discovery replaces the backend with one that knows its endpoints.
            own_call=lambda url: self._calls.backend.own_call(url),
            dpop=self._dpop,
            exclusive=self._fleet.exclusive,
        )
        self.access_tokens = AccessTokens(self._context)
        self.token_store = MacTokenStore(self._context)

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> Session:
        if self._runner is not None or self._closed:
            raise SessionClosed("a Session can be entered once")
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # The task group lives in a task of its own, started here and awaited by
        # __aexit__: entered by hand in the caller's task, its cancel scope would
        # have to be left in LIFO order with every other scope of that task, and
        # sessions closed in any other order raised RuntimeError. asyncio, not
        # anyio: aiohttp ties tokensdk to asyncio, and no anyio primitive starts a
        # task outside a task group.
        self._runner = asyncio.ensure_future(self._own_task_group(started))
        try:
            await started
            await self._load()
            if self._shared:
                self._spawn(self._fleet.watch)
            for opened in self._on_open:
                await opened()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _own_task_group(self, started: asyncio.Future[None]) -> None:
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._scheduler.run)
                tg.start_soon(self._hub.run)
                tg.start_soon(self._saver.run)
                tg.start_soon(self._engine.run)
                started.set_result(None)
        finally:
            if not started.done():
                started.set_exception(SessionClosed("the session could not start"))

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tg, self._tg = self._tg, None
        runner = self._runner
        self._closed = True
        self._keep_unfinished_refresh()
        self._hub.freeze()
        try:
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
        finally:
            with anyio.CancelScope(shield=True):
                self._engine.abandon(SessionClosed("the session was closed"))
                await self._saver.flush()
                await self._hub.drain()
                self._hub.close()
                await self._transport.aclose()

    def _keep_unfinished_refresh(self) -> None:
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

    def _require_open(self) -> None:
        if self._tg is None:
            raise SessionClosed("use the session inside 'async with'")

    def _soon(self, func: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Start ``func()`` in the session's task group, unless it is closed."""
        if self._tg is not None:
            self._tg.start_soon(func)

    def _spawn(self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Start ``func(*args)`` in the session's task group (SessionClosed if not open)."""
        self._require_open()
        assert self._tg is not None
        self._tg.start_soon(func, *args)

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

    async def _quarantine(self, error: StoreCorrupt) -> StoreError:
        quarantine = getattr(self._store, "quarantine", None)
        if quarantine is None:
            return error
        try:
            moved_to = await quarantine()
        except StoreError as exc:
            return StoreCorrupt(f"{error}; it could not be moved aside ({exc})")
        where = f"moved aside to {moved_to}" if moved_to else "it was removed"
        return StoreCorrupt(f"{error}; {where}", moved_to=moved_to)

    def _persist(self, snapshot: SessionSnapshot) -> None:
        self._saver.submit(snapshot)  # encoded when written: bursts cost one encoding

    def _store_failed(self, error: BaseException) -> None:
        log.warning("tokensdk: saving the session state failed: %s", error)
        self._hub.emit(self._hub.event(EventType.STORE_FAILED, type(error).__name__, error))

    async def _load(self) -> None:
        snapshot = None
        try:
            document, self._fleet.version = await self._coord.load()
            if document is not None:
                try:
                    snapshot = document_to_snapshot(
                        document, wall=self._clock.time(), monotonic=self._clock.monotonic()
                    )
                except StoreCorrupt as exc:
                    # A readable envelope around an unusable state: keep it for a look.
                    raise await self._quarantine(exc) from None
        except StoreError as exc:
            # A broken store must not stop the application: start empty and say so.
            log.warning("tokensdk: the stored state could not be loaded: %s", exc)
            self._hub.emit(self._hub.event(EventType.STORE_FAILED, type(exc).__name__, exc))
        restored = restore_state(
            snapshot,
            self._restore_tokens,
            next_revision=self._hub.snapshot.revision + 1,
            wall=self._clock.time(),
            monotonic=self._clock.monotonic(),
        )
        if restored is None:
            return
        if restored.expired:
            self._life.lost_reason = "token_expired"
            self._hub.commit(
                self._hub.event(EventType.SESSION_LOST, "token_expired"), **restored.changes
            )
            return
        creds = restored.credentials
        events = [self._hub.event(EventType.RESUMED, creds.username)] if creds else []
        self._hub.commit(*events, **restored.changes)
        if restored.matches_store:
            self._fleet.saved_rev = self._hub.snapshot.revision  # it is what the store holds
        if restored.serve and creds is not None:
            self._install(creds)
            if restored.retry_pending:
                # The service may have rotated the pair already: retry the refresh
                # now, with its key, while the service still recognises the retry.
                self._engine.schedule(self._clock.monotonic())
        elif restored.lost:
            self._life.lost_reason = "stored_session_lost"

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
        check_text("username", username)
        check_text("password", password)
        self._require_open()
        await self._calls.discover()
        reply = await self._calls.send(self._calls.backend.password_login(username, password))
        await self._logged_in(reply.body, reply.sent_wall, reply.sent_monotonic, username)

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
        self._require_open()
        backend = self._grant_backend()
        await self._calls.discover()
        backend = self._grant_backend()
        reply = await self._calls.send(backend.client_credentials())
        client = getattr(backend, "client_id", "") or ""
        await self._logged_in(
            reply.body,
            reply.sent_wall,
            reply.sent_monotonic,
            client,
            extra={"grant_type": "client_credentials"},
        )

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
        check_text("refresh_token", refresh_token)
        self._require_open()
        self._grant_backend()
        await self._calls.discover()
        reply = await self._calls.send(self._grant_backend().refresh_token_login(refresh_token))
        await self._logged_in(
            reply.body,
            reply.sent_wall,
            reply.sent_monotonic,
            username or "",
            refresh_token=refresh_token,
        )

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
        self._require_open()
        await self._calls.discover()
        backend = self._oauth2()
        reply = await self._calls.send(backend.device_authorization())
        code = backend.device_code_from(reply.body)
        expires = reply.sent_monotonic + code.expires_in
        shown = on_code(code)
        if inspect.isawaitable(shown):
            await shown
        reply = await poll_device(self._calls.send, self._clock, backend, code, expires)
        await self._logged_in(reply.body, reply.sent_wall, reply.sent_monotonic, username or "")

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
        self._require_open()
        await self._calls.discover()
        backend = self._oauth2()
        verifier, challenge = pkce_pair()
        state = secrets.token_urlsafe(24)
        # aiohttp.web is imported here, not by `import tokensdk` (row 10).
        from tokensdk._loopback import LoopbackRedirect

        async with LoopbackRedirect(state, port) as listener:
            url = backend.authorization_url(listener.redirect_uri, state, challenge, prompt=prompt)
            opened = open_browser(url)
            if inspect.isawaitable(opened):
                await opened
            with anyio.fail_after(wait_for_user):
                query = await listener.wait()
        code = backend.authorization_response(query, state)
        call = backend.authorization_code(code, listener.redirect_uri, verifier)
        reply = await self._calls.send(call)
        await self._logged_in(reply.body, reply.sent_wall, reply.sent_monotonic, username or "")

    def _oauth2(self) -> OAuth2:
        backend = self._calls.backend
        if not isinstance(backend, OAuth2):
            raise InvalidInput("this login needs an OAuth 2.0 backend (tokensdk.OAuth2)")
        return backend

    def _grant_backend(self) -> GrantBackend:
        backend = self._calls.backend
        if not isinstance(backend, GrantBackend):
            raise InvalidInput("this login needs an OAuth 2.0 backend (tokensdk.OAuth2)")
        return backend

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
        check_text("username", username)
        self._require_open()
        reply = await self._calls.send(self._calls.backend.one_time_key(username))
        key = self._calls.backend.one_time_key_from(reply.body)
        result = answer(key)
        digest = await result if inspect.isawaitable(result) else result
        if not isinstance(digest, str):
            raise InvalidInput("the one-time key answer must be a string")
        reply = await self._calls.send(self._calls.backend.with_one_time_key(username, digest))
        await self._logged_in(reply.body, reply.sent_wall, reply.sent_monotonic)

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
        creds = credentials or self._hub.snapshot.credentials
        if creds is None:
            raise NotLoggedIn("there is no saved token pair to resume")
        self._require_open()
        self._life.generation += 1
        generation = self._life.generation
        if creds is not self._hub.snapshot.credentials:
            self._uninstall()
            self._hub.commit(status=SessionStatus.ACTIVE, credentials=creds, pending_refresh=None)
        if isinstance(self._calls.backend, GrantBackend):
            # OAuth 2.0 has no "check this pair" call: a refresh proves (and renews) it.
            await self._engine.refresh()
            return
        try:
            reply = await self._calls.send(self._calls.backend.with_token(creds))
        except TokenSDKError as exc:
            gone = self._calls.gone(exc)
            if gone is None:
                raise
            if isinstance(gone, Lost):
                await self._lose(gone.reason, generation)
                raise SessionLost(gone.reason) from None
            await self._engine.refresh()  # the access token expired: the refresh token may not have
            self._sync_clock_soon()
            return
        ttl = self._calls.backend.resumed_lifetime(reply.body)
        resumed = attrs.evolve(
            creds,
            access_expires_at=reply.sent_wall + ttl,
            access_deadline=reply.sent_monotonic + ttl,
        )
        # A refresh that finished meanwhile (the call may have waited out a 429)
        # installed a newer pair: resuming the old one would bring back a spent
        # refresh token.
        if generation == self._life.generation and self._hub.snapshot.credentials is creds:
            self._hub.commit(
                self._hub.event(EventType.RESUMED, creds.username),
                status=SessionStatus.ACTIVE,
                credentials=resumed,
            )
            self._install(resumed)
            self._sync_clock_soon()

    async def logout(self) -> bool:
        """Log out: revoke the token family on the service and forget it locally.

        Local state is cleared even when the service cannot be reached; the answer
        says whether the service revoked the family.

        Returns:
            True when the family is dead on the service (revoked now, or already
            gone), False when the service could not be reached: the tokens stay
            valid there until they expire.
        """
        snapshot = self._hub.snapshot
        revoked = True
        if snapshot.credentials is not None and snapshot.status is SessionStatus.ACTIVE:
            self._life.logging_out = True  # a refresh on the way must not call relogin
            try:
                if isinstance(self._calls.backend, GrantBackend):
                    revoked = await self._revoke_grant(snapshot.credentials)
                else:
                    revoked = await self._revoke_family()
            finally:
                self._life.logging_out = False
        creds = self._hub.snapshot.credentials or snapshot.credentials
        self._life.generation += 1
        self._uninstall()
        self._life.lost_reason = "logged_out"
        self._fleet.claim = True  # fleet-wide: a logout wins over a sibling's concurrent write
        self._hub.commit(
            self._hub.event(EventType.LOGGED_OUT, creds.username if creds else None),
            status=SessionStatus.LOGGED_OUT,
            credentials=None,
            mac_tokens={},
            pending_refresh=None,
        )
        return revoked

    async def _revoke_grant(self, creds: Credentials) -> bool:
        # RFC 7009 with the refresh token: the provider revokes the whole grant.
        try:
            await self._calls.discover()
            backend = self._grant_backend()
            call = backend.revocation(self._hub.snapshot.credentials or creds)
            if call is None:
                log.warning("tokensdk: the provider has no revocation endpoint; cleared locally")
                return False
            await self._calls.send(call)
        except TokenSDKError as exc:
            log.warning(
                "tokensdk: logout could not revoke the grant (%s); cleared locally only",
                type(exc).__name__,
            )
            return False
        return True

    async def _revoke_family(self) -> bool:
        try:
            # A valid bearer, refreshed first if the access token is about to die:
            # an expired one would be refused and leave the family alive.
            revoke = self._calls.backend.revoke()
            bearer = await self.access_token()
            try:
                await self._calls.send(revoke, bearer=bearer)
            except TokenSDKError as exc:
                if self._calls.gone(exc) is None:
                    raise
                # Refused: expired by the service's clock (not ours), or the family is
                # gone. A refresh tells which (SessionLost: gone); then once more.
                bearer = (await self.token_refresh()).access_token
                await self._calls.send(revoke, bearer=bearer)
        except SessionLost:
            return True  # the family is dead already: nothing left to revoke
        except TokenSDKError as exc:
            if self._calls.gone(exc) is not None:
                return True

            log.warning(
                "tokensdk: logout could not reach the service (%s); cleared locally only",
                type(exc).__name__,
            )
            return False
        return True

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

    async def _logged_in(
        self,
        body: Any,
        sent_wall: float,
        sent_mono: float,
        username: str = "",
        *,
        extra: Mapping[str, str] | None = None,
        refresh_token: str | None = None,
    ) -> None:
        creds = self._calls.backend.grant(body, wall=sent_wall, monotonic=sent_mono)
        changes: dict[str, Any] = {}
        if not creds.username and username:
            changes["username"] = username  # an OAuth 2.0 answer does not name the user
        if extra:
            changes["extra"] = {**creds.extra, **extra}
        if creds.refresh_token is None and refresh_token is not None:
            changes["refresh_token"] = refresh_token  # RFC 6749 §6: the old one stays valid
        if changes:
            creds = attrs.evolve(creds, **changes)
        self._life.generation += 1
        self._fleet.claim = True
        # A new login is a new token family: the MAC tokens of the previous one
        # belong to it (the service kills them with it), never to this one.
        self._hub.commit(
            self._hub.event(EventType.LOGGED_IN, creds.username),
            status=SessionStatus.ACTIVE,
            credentials=creds,
            mac_tokens={},
            pending_refresh=None,
        )
        self._install(creds)
        self._sync_clock_soon()

    def _sync_clock_soon(self) -> None:
        # MAC headers carry our wall time: learn the service's offset after a login.
        # (A backend may have no clock to read: OAuth 2.0 providers.)
        if self._tg is not None and getattr(self._calls.backend, "syncs_clock", True):
            self._tg.start_soon(self._background_sync_clock)

    async def _background_sync_clock(self) -> None:
        try:
            await self.sync_clock()
        except TokenSDKError as exc:
            log.info("tokensdk: clock sync failed: %s", type(exc).__name__)

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
        self._engine.schedule(_clamp_plan(plan, now_mono, creds.access_expires_at - now_wall))

    def _uninstall(self) -> None:
        self._token = None
        self._fresh_mono = self._fresh_wall = -math.inf
        self._engine.unschedule()

    async def _do_refresh(self) -> Credentials:
        if self._shared:
            return await self._fleet.refresh(self._engine.wanted)
        return await self._refresh_once()

    async def _refresh_once(self) -> Credentials:
        snapshot = self._hub.snapshot
        creds = snapshot.credentials
        generation = self._life.generation
        if snapshot.status is SessionStatus.NEEDS_LOGIN or creds is None:
            return await self._try_relogin(self._life.lost_reason)
        await self._calls.discover()
        now_mono, now_wall = self._clock.monotonic(), self._clock.time()
        if creds.refresh_left(now_wall, now_mono) <= 0:
            await self._lose("token_expired", generation)
            return await self._try_relogin("token_expired")
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
            await self._lose("token_expired", generation)
            return await self._try_relogin("token_expired")
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
                await self._saver.flush()
                if generation != self._life.generation:
                    return self._stale_refresh()
            else:
                # Nothing the store holds survives the process: writing the key first
                # would only cost a commit and an encoding per refresh. It reaches the
                # store at close if the refresh is still unfinished (see __aexit__), for
                # a later session of this process on the same store.
                self._unsaved_pending = pending
        elif self._durable and not self._shared and not self._saver.idle:
            # A run cancelled while writing the key (a caller's, see RefreshEngine):
            # the key still goes to the store before the request leaves.
            await self._saver.flush()
            if generation != self._life.generation:
                return self._stale_refresh()
        call = self._calls.backend.refresh(creds, pending.idempotency_key)
        if call is None:  # a backend that cannot renew these credentials
            await self._lose("token_expired", generation)
            return await self._try_relogin("token_expired")
        try:
            reply = await self._calls.send(call, deadline=deadline)
        except TokenSDKError as exc:
            gone = self._calls.gone(exc)
            if gone is None:
                raise
            await self._lose(gone.reason, generation)
            return await self._try_relogin(gone.reason)
        new = self._calls.backend.grant(
            reply.body, wall=reply.sent_wall, monotonic=reply.sent_monotonic
        )
        new = new.renewed_from(creds)
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

    async def _try_relogin(self, reason: str) -> Credentials:
        if self._relogin is None or self._life.logging_out:
            raise SessionLost(reason)
        self._engine.hand_off()  # the application's hook runs in the session's task
        try:
            answer = await self._relogin(self)
            if answer is not None:
                if not isinstance(answer, tuple) or len(answer) != 2:
                    raise InvalidInput("relogin must return (username, password) or None")
                await self.login(*answer)
        except Exception as exc:  # the hook is the application's code: any error
            log.warning("tokensdk: relogin failed: %s", type(exc).__name__)
            raise SessionLost(reason) from None
        creds = self._hub.snapshot.credentials
        if creds is None or self._hub.snapshot.status is not SessionStatus.ACTIVE:
            raise SessionLost(reason)
        return creds

    async def _lose(self, reason: str, generation: int | None = None) -> None:
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

    def __repr__(self) -> str:
        snapshot = self._hub.snapshot
        return (
            f"Session({self._calls.backend.base_url!r}, status={snapshot.status.value},"
            f" username={snapshot.username!r})"
        )


def _clamp_plan(plan: RefreshPlan, now_mono: float, wall_left: float) -> float:
    # If the wall clock says the token has less time than the monotonic one (a
    # suspended machine, a clock step), refresh by the earlier of the two.
    at = plan.refresh_at
    wall_refresh_at = now_mono + wall_left - (plan.expires - plan.refresh_at)
    return min(at, wall_refresh_at)

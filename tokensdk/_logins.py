"""The logins and the logout: how an activation starts, and how the user ends it.

:class:`Logins` runs the session's login flows (a password, a one-time key, a saved
pair, and the OAuth 2.0 grants: client credentials, a refresh token, the device code,
the browser's authorization code with PKCE) and its logout. A login sends the
backend's calls, commits the grant as a new activation (a new token family: the MAC
tokens of the previous one go) and installs it; a logout revokes the family or the
grant on the service and clears it locally either way. The Session's public methods
delegate here. Below the class: what the flows share without touching the session's
state (input checks, the PKCE pair, device-code polling) and
:func:`one_time_key_answer`, what an application's own backend computes for the
one-time-key login.
"""

from __future__ import annotations

import base64
import hashlib
import inspect
import logging
import secrets
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from tokensdk._backend import Call, GrantBackend, Lost
from tokensdk._calls import BackendCalls
from tokensdk._clock import Clock
from tokensdk._context import SessionContext
from tokensdk._errors import (
    InvalidCredentials,
    InvalidInput,
    NotLoggedIn,
    ServiceError,
    SessionLost,
    TokenSDKError,
)
from tokensdk._fleet import Fleet
from tokensdk._models import Credentials, EventType, SessionStatus
from tokensdk._refresh import RefreshEngine
from tokensdk._transport import Reply

if TYPE_CHECKING:  # annotations only: `import tokensdk` does not load the OAuth 2.0 backend
    from tokensdk._oauth2 import DeviceCode, OAuth2

__all__ = [
    "Logins",
    "OneTimeKeyAnswer",
    "check_text",
    "one_time_key_answer",
    "pkce_pair",
    "poll_device",
]

log = logging.getLogger("tokensdk")

OneTimeKeyAnswer = Callable[[str], Awaitable[str] | str]


class Logins:
    """The session's logins and logout.

    Args:
        context: The session's hub, clock, lifecycle facts, bearer token, forced
            refresh and clock sync.
        calls: The session's calls to its backend.
        fleet: The session's side of the shared state (a login or logout claims it).
        engine: The session's refresh engine (a resume may need a refresh).
        install: Makes a pair the served pair and schedules its refresh.
        uninstall: Stops serving a pair.
        lose: Ends the activation as lost (``lose(reason, generation)``).
        require_open: Raises SessionClosed unless the session is open.
        soon: Starts a background task if the session is open (else nothing).
    """

    def __init__(
        self,
        context: SessionContext,
        *,
        calls: BackendCalls,
        fleet: Fleet,
        engine: RefreshEngine,
        install: Callable[[Credentials], None],
        uninstall: Callable[[], None],
        lose: Callable[[str, int], Awaitable[None]],
        require_open: Callable[[], None],
        soon: Callable[[Callable[[], Coroutine[Any, Any, Any]]], None],
    ) -> None:
        self._hub = context.hub
        self._clock = context.clock
        self._life = context.lifecycle
        self._bearer = context.bearer
        self._token_refresh = context.refresh
        self._sync_clock = context.sync_clock
        self._calls = calls
        self._fleet = fleet
        self._engine = engine
        self._install = install
        self._uninstall = uninstall
        self._lose = lose
        self._require_open = require_open
        self._soon = soon

    async def login(self, username: str, password: str) -> None:
        """Log in with a username and password (see :meth:`Session.login`)."""
        check_text("username", username)
        check_text("password", password)
        self._require_open()
        await self._calls.discover()
        reply = await self._calls.send(self._calls.backend.password_login(username, password))
        await self._logged_in(reply.body, reply.sent_wall, reply.sent_monotonic, username)

    async def login_client_credentials(self) -> None:
        """The OAuth 2.0 client credentials grant (see :meth:`Session.login_client_credentials`)."""
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
        """Redeem a refresh token obtained elsewhere.

        See :meth:`Session.login_with_refresh_token`.
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
        """The device authorization grant (see :meth:`Session.login_device`)."""
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
        """Authorization code + PKCE through the browser.

        See :meth:`Session.login_authorization_code`.
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
        # Imported here, not by `import tokensdk` (row 10); a backend that is an
        # OAuth2 has imported it already.
        from tokensdk._oauth2 import OAuth2

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
        """Log in with an answered one-time key (see :meth:`Session.login_with_one_time_key`)."""
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
        """Resume from a saved pair, checked with the service.

        See :meth:`Session.login_with_token`.
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
        """Revoke the family or grant, then forget it locally (see :meth:`Session.logout`)."""
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
            bearer = await self._bearer()
            try:
                await self._calls.send(revoke, bearer=bearer)
            except TokenSDKError as exc:
                if self._calls.gone(exc) is None:
                    raise
                # Refused: expired by the service's clock (not ours), or the family is
                # gone. A refresh tells which (SessionLost: gone); then once more.
                bearer = (await self._token_refresh()).access_token
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
        if getattr(self._calls.backend, "syncs_clock", True):
            self._soon(self._background_sync_clock)

    async def _background_sync_clock(self) -> None:
        try:
            await self._sync_clock()
        except TokenSDKError as exc:
            log.info("tokensdk: clock sync failed: %s", type(exc).__name__)


def check_text(name: str, value: object) -> None:
    """Refuse a login input that is not a non-empty string of sane length.

    Raises:
        InvalidInput: It is not.
    """
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{name} must be a non-empty string")
    if len(value) > 4096:
        raise InvalidInput(f"{name} is too long")


def pkce_pair() -> tuple[str, str]:
    """A fresh PKCE verifier and its S256 challenge (RFC 7636)."""
    verifier = secrets.token_urlsafe(64)
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        .rstrip(b"=")
        .decode("ascii")
    )
    return verifier, challenge


async def poll_device(
    send: Callable[[Call], Awaitable[Reply]],
    clock: Clock,
    backend: OAuth2,
    code: DeviceCode,
    expires: float,
) -> Reply:
    """Poll the token endpoint until the user approves the device code (RFC 8628 §3.4).

    Args:
        send: Sends a call as the session does.
        clock: The session's clock (the waits between polls).
        backend: The OAuth 2.0 backend that issued ``code``.
        code: The device code.
        expires: Monotonic time the code expires.

    Returns:
        The token endpoint's answer granting the tokens.

    Raises:
        InvalidCredentials: The code expired, or the user refused.
    """
    interval = code.interval
    while True:
        if clock.monotonic() + interval >= expires:
            raise InvalidCredentials(
                "the device code expired before the user approved it",
                status=400,
                error="expired_token",
            )
        await clock.sleep_until(clock.monotonic() + interval)
        try:
            return await send(backend.device_poll(code))
        except ServiceError as exc:
            if exc.error == "authorization_pending":
                continue
            if exc.error == "slow_down":
                interval += 5  # RFC 8628 §3.5: for this and every later poll
                continue
            raise


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

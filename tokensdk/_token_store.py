"""The named MAC token store: PowerAuth-style tokens that sign requests locally.

A named MAC token is created once with a strong authentication (the session's
bearer token proves possession; the password adds knowledge) and then signs any
number of requests with an ``X-PowerAuth-Token`` header computed locally::

    token = await session.token_store.request_access_token(
        "payments", Authentication.possession()
    )
    name, value = session.token_store.generate_header_for_token("payments")

Tokens live in the session snapshot (``snapshot.mac_tokens``), so the session's
store persists them and a lost session wipes them. What this module keeps in
memory besides is only the creations under way (one per name), and those are
forgotten as soon as the session is lost, logged out or logged in again.
"""

from __future__ import annotations

import binascii
import uuid
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from tokensdk._backend import ResourceBackend
from tokensdk._calls import send_call
from tokensdk._errors import (
    FactorMismatch,
    InvalidInput,
    NotFound,
    ProtocolError,
    SessionClosed,
    SessionLost,
    UnknownMacToken,
)
from tokensdk._flight import Flight
from tokensdk._models import EventType, MacToken, SessionSnapshot, SessionStatus
from tokensdk.mac import HEADER_NAME, SECRET_LENGTH, build_header

if TYPE_CHECKING:
    from tokensdk._context import SessionContext

__all__ = ["TIME_ERRORS", "Authentication", "MacTokenStore"]

POSSESSION = "possession"
KNOWLEDGE = "knowledge"

TIME_ERRORS = frozenset({"timestamp_too_old", "timestamp_in_future"})
"""Errors of ``GET /v1/me/token`` after which a clock sync and a new header may help."""


@attrs.frozen
class Authentication:
    """Which factors create a MAC token, and the password for the knowledge factor.

    Build one with :meth:`possession` or :meth:`possession_knowledge`.

    Attributes:
        factors: ``("possession",)`` or ``("possession", "knowledge")``.
        password: The account password (knowledge only; never shown in a repr).
    """

    factors: tuple[str, ...]
    password: str | None = attrs.field(default=None, repr=False)

    @classmethod
    def possession(cls) -> Authentication:
        """Authenticate with the session alone (the bearer token proves possession)."""
        return cls((POSSESSION,))

    @classmethod
    def possession_knowledge(cls, password: str) -> Authentication:
        """Authenticate with the session and the account password.

        Args:
            password: The account's password.

        Raises:
            InvalidInput: The password is not a non-empty string.
        """
        if not isinstance(password, str) or not password:
            raise InvalidInput("the password must be a non-empty string")
        return cls((POSSESSION, KNOWLEDGE), password)

    def __repr__(self) -> str:
        password = "" if self.password is None else ", password=<redacted>"
        return f"Authentication(factors={self.factors!r}{password})"


@attrs.define(eq=False)
class _Creation(Flight[MacToken]):
    """One ``POST /v1/tokens/create`` that every concurrent caller for a name waits for."""

    factors: tuple[str, ...]
    generation: int


class MacTokenStore:
    """The named MAC tokens of a session (``session.token_store``).

    Args:
        context: The context of the session the tokens belong to.
    """

    def __init__(self, context: SessionContext) -> None:
        self._ctx = context
        self._life = context.lifecycle
        self._hub = context.hub
        self._clock = context.clock
        self._creations: dict[str, _Creation] = {}
        self._generation = context.lifecycle.generation
        # The hot path reads this mapping (kept current by the listener) and nothing else.
        self._tokens = self._hub.snapshot.mac_tokens
        self._hub.add_listener(self._state_changed)

    # -- lookups ---------------------------------------------------------------------

    def has_local_token(self, name: str) -> bool:
        """Tell whether a token with this name is held locally."""
        return name in self._hub.snapshot.mac_tokens

    def get_local_token(self, name: str) -> MacToken | None:
        """Return the local token with this name, or None."""
        return self._hub.snapshot.mac_tokens.get(name)

    def generate_header_for_token(self, name: str) -> tuple[str, str]:
        """Compute a fresh ``X-PowerAuth-Token`` header (PowerAuth 3.3) for a local token.

        Pure computation after a dictionary lookup; safe to call from many tasks.
        The timestamp is the local wall time corrected by ``session.clock_offset``.

        Args:
            name: The token's name.

        Returns:
            ``("X-PowerAuth-Token", value)``.

        Raises:
            UnknownMacToken: No local token has that name.
        """
        token = self._tokens.get(name)
        if token is None:
            raise UnknownMacToken(f"no local MAC token named {name!r}")
        now_ms = int((self._clock.time() + self._life.clock_offset) * 1000)
        return HEADER_NAME, build_header(token.token_id, token.secret, now_ms)

    # -- creation --------------------------------------------------------------------

    async def request_access_token(self, name: str, authentication: Authentication) -> MacToken:
        """Return the token with this name, creating it on the service if needed.

        A local token created with the same factors is returned without a network
        call. Concurrent requests for one name share a single service call.

        Args:
            name: The application's name for the token.
            authentication: The factors to create it with.

        Returns:
            The token.

        Raises:
            InvalidInput: A bad argument, or the token must be created and the
                session's backend has no MAC token endpoints (OAuth 2.0): nothing
                was sent.
            FactorMismatch: A token of that name exists, or is being created, with
                other factors.
            InvalidCredentials: The password (knowledge) or the session was refused.
            SessionLost: The session was lost, logged out or logged in again while
                the token was being created; it was not stored.
            NotLoggedIn: No login happened yet.
            ProtocolError: The service's answer is off-contract.
        """
        _check_name(name)
        if not isinstance(authentication, Authentication):
            raise InvalidInput("authentication must be an Authentication")
        factors = authentication.factors
        local = self._hub.snapshot.mac_tokens.get(name)
        if local is not None:
            if local.factors != factors:
                raise FactorMismatch(
                    f"MAC token {name!r} exists with factors {list(local.factors)},"
                    f" not {list(factors)}"
                )
            return local
        self._resources()  # creating one needs the service's endpoints
        creation = self._creations.get(name)
        if creation is None:
            creation = _Creation(factors, self._life.generation)
            self._ctx.spawn(self._create, name, creation, authentication)  # or SessionClosed
            self._creations[name] = creation
        elif creation.factors != factors:
            raise FactorMismatch(
                f"MAC token {name!r} is being created with factors {list(creation.factors)},"
                f" not {list(factors)}"
            )
        # Waiting is all a caller does: its cancellation leaves the creation (owned
        # by the session's task group) running for the other callers.
        return await creation.wait()

    async def _create(self, name: str, creation: _Creation, auth: Authentication) -> None:
        try:
            # Members sharing a store create a token once: under their lock, with
            # the state reloaded, a token a sibling created meanwhile is taken.
            async with self._ctx.exclusive():
                shared = self._hub.snapshot.mac_tokens.get(name)
                if shared is not None and shared.factors == creation.factors:
                    creation.finish(shared)
                    return
                await self._create_locked(name, creation, auth)
        except anyio.get_cancelled_exc_class():
            creation.finish(error=SessionClosed("the session was closed"))
            raise
        except Exception as exc:
            creation.finish(error=exc)
        finally:
            if self._creations.get(name) is creation:
                del self._creations[name]

    async def _create_locked(self, name: str, creation: _Creation, auth: Authentication) -> None:
        try:
            token = await self._call_create(name, auth)
            if creation.done.is_set():
                return  # abandoned meanwhile (removed locally, session lost): not kept
            life = self._life
            if (
                life.generation != creation.generation
                or self._hub.snapshot.status is not SessionStatus.ACTIVE
                or life.logging_out
            ):
                # The session changed under us: this token belongs to a dead (or
                # another) activation and must not be kept.
                raise SessionLost(self._lost_reason())
            snapshot = self._hub.snapshot
            self._hub.commit(
                self._hub.event(EventType.MAC_TOKEN_ADDED, name),
                mac_tokens={**snapshot.mac_tokens, name: token},
            )
        except anyio.get_cancelled_exc_class():
            creation.finish(error=SessionClosed("the session was closed"))
            raise
        except Exception as exc:
            creation.finish(error=exc)
        else:
            creation.finish(token)

    async def _call_create(self, name: str, auth: Authentication) -> MacToken:
        # The backend never retries a knowledge creation: that would spend another
        # password attempt.
        call = self._resources().mac_token_create(auth.factors, auth.password)
        # The bearer is asked again for every attempt.
        reply = await send_call(self._ctx.transport, call, bearer=self._ctx.bearer)
        return _decode_token(name, auth.factors, reply.body)

    def _resources(self) -> ResourceBackend:
        resources = self._ctx.resources
        if resources is None:
            raise InvalidInput(
                "MAC tokens are a feature of the reference service: this session's"
                " backend has no MAC token endpoints (OAuth 2.0 providers have none)"
            )
        return resources

    def _state_changed(self, snapshot: SessionSnapshot) -> None:
        # Called inside every commit. A new generation means the activation the
        # creations under way were started for is gone: fail them now, so nobody
        # waits for (or stores) a token of a dead session.
        self._tokens = snapshot.mac_tokens
        generation = self._life.generation
        if generation == self._generation:
            return
        self._generation = generation
        for name, creation in list(self._creations.items()):
            if creation.generation != generation:
                del self._creations[name]
                creation.finish(error=SessionLost(self._lost_reason()))

    def _lost_reason(self) -> str:
        life = self._life
        if life.logging_out:
            return "logged_out"
        # A new login while a creation was under way is not a loss, but its token
        # still belongs to the previous activation.
        active = self._hub.snapshot.status is SessionStatus.ACTIVE
        return "session_changed" if active else life.lost_reason

    # -- removal ---------------------------------------------------------------------

    async def remove_access_token(self, name: str) -> None:
        """Remove a token on the service, then locally.

        The local copy goes only once the service confirmed the removal or said it
        does not know the token; any other failure keeps it.

        Args:
            name: The token's name.

        Raises:
            UnknownMacToken: No local token has that name.
            InvalidInput: The session's backend has no MAC token endpoints (OAuth
                2.0): nothing was sent, the token is kept (see
                :meth:`remove_local_token`).
            ServiceError: The service refused or could not be reached (kept locally).
            SessionLost: The session is gone (its tokens are gone with it).
        """
        token = self._hub.snapshot.mac_tokens.get(name)
        if token is None:
            raise UnknownMacToken(f"no local MAC token named {name!r}")
        call = self._resources().mac_token_remove(token.token_id)
        try:
            # The bearer is asked again for every attempt.
            await send_call(self._ctx.transport, call, bearer=self._ctx.bearer)
        except NotFound as exc:
            if exc.error != "unknown_token":
                raise
        if self._hub.snapshot.mac_tokens.get(name) == token:
            self.remove_local_token(name)

    def remove_local_token(self, name: str) -> bool:
        """Forget a token locally (it stays valid on the service until its session ends).

        A creation of that name under way is abandoned too: its callers get
        :class:`UnknownMacToken` and the token it brings back is not stored.

        Args:
            name: The token's name.

        Returns:
            True if a token (or a creation under way) was removed, False if there was none.
        """
        abandoned = self._abandon_creation(name)
        tokens = self._hub.snapshot.mac_tokens
        if name not in tokens:
            return abandoned
        self._hub.commit(
            self._hub.event(EventType.MAC_TOKEN_REMOVED, name),
            mac_tokens={k: v for k, v in tokens.items() if k != name},
        )
        return True

    def remove_all_local_tokens(self) -> None:
        """Forget every local token (one ``MAC_TOKEN_REMOVED`` event per token).

        Creations under way are abandoned too, as in :meth:`remove_local_token`.
        """
        for name in list(self._creations):
            self._abandon_creation(name)
        tokens = self._hub.snapshot.mac_tokens
        if tokens:
            events = [self._hub.event(EventType.MAC_TOKEN_REMOVED, name) for name in tokens]
            self._hub.commit(*events, mac_tokens={})

    def _abandon_creation(self, name: str) -> bool:
        creation = self._creations.pop(name, None)
        if creation is None:
            return False
        creation.finish(
            error=UnknownMacToken(f"MAC token {name!r} was removed while it was being created")
        )
        return True

    # -- time ------------------------------------------------------------------------

    async def sync_time(self) -> float:
        """Re-estimate the clock offset from the service (``GET /v1/status``).

        Returns:
            The offset in seconds added to local wall time in headers.
        """
        return await self._ctx.sync_clock()

    async def header_after_time_error(self, name: str) -> tuple[str, str]:
        """Sync the clock, then compute a fresh header.

        Call it after the service refused a header with ``timestamp_too_old`` or
        ``timestamp_in_future`` (see :data:`TIME_ERRORS`), then retry once.

        Args:
            name: The token's name.

        Returns:
            ``("X-PowerAuth-Token", value)``.

        Raises:
            UnknownMacToken: No local token has that name.
        """
        if name not in self._hub.snapshot.mac_tokens:
            raise UnknownMacToken(f"no local MAC token named {name!r}")
        await self.sync_time()
        return self.generate_header_for_token(name)

    def __repr__(self) -> str:
        names = sorted(self._hub.snapshot.mac_tokens)
        return f"MacTokenStore(tokens={names!r}, creating={sorted(self._creations)!r})"


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not name:
        raise InvalidInput("a MAC token name must be a non-empty string")
    if len(name) > 256:
        raise InvalidInput("a MAC token name is too long")


def _decode_token(name: str, factors: tuple[str, ...], body: Any) -> MacToken:
    token_id = body.get("tokenId") if isinstance(body, dict) else None
    secret_text = body.get("tokenSecret") if isinstance(body, dict) else None
    if not isinstance(token_id, str) or not isinstance(secret_text, str):
        raise ProtocolError("the token creation response lacks tokenId or tokenSecret")
    try:
        canonical = str(uuid.UUID(token_id)) == token_id
    except ValueError:
        canonical = False
    if not canonical:
        raise ProtocolError("the token creation response has a tokenId that is not a UUID")
    try:
        secret = binascii.a2b_base64(secret_text, strict_mode=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("the token creation response has a tokenSecret not in Base64") from None
    if len(secret) != SECRET_LENGTH:
        raise ProtocolError(f"the token secret is not {SECRET_LENGTH} bytes")
    return MacToken(name=name, token_id=token_id, secret=secret, factors=factors)

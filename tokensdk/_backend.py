"""The wire protocol as a value: an :class:`AuthBackend` turns intents into calls and
classifies every answer. Pure: no I/O, no clock; the session does the I/O around it.

An intent (log in with a password, refresh with an idempotency key, revoke, read the
service's clock) becomes a :class:`Call`: method, path below the API root, JSON
body, whether a transient failure may be retried. A successful answer becomes
:class:`~tokensdk.Credentials` (:meth:`AuthBackend.grant`); a failed one an
:data:`Outcome`:

- :class:`Lost`: the activation is gone (refresh token expired, reused, revoked;
  account frozen): never retried, the session moves to ``needs_login``;
- :class:`AccessExpired`: the access token presented has expired, the refresh
  token may not have (a resume then falls back to a refresh);
- :class:`Transient`: worth retrying later (``retry_after`` when the service said);
- :class:`CallerError`: the request itself is wrong: retrying cannot help.

:class:`NativeBackend` speaks the reference contract (``/v1``); an OAuth 2.0 backend
is one more module behind the same protocol. The contract's resource endpoints
(asset tokens by proof of key, their key set, MAC tokens) are a second, smaller
protocol, :class:`ResourceBackend`, which only :class:`NativeBackend` implements:
a session whose backend lacks it refuses those operations before sending anything.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import attrs
from yarl import URL

from tokensdk._errors import (
    AccountFrozen,
    InvalidCredentials,
    InvalidInput,
    ProtocolError,
    RateLimited,
    ServiceUnavailable,
    TokenSDKError,
    printable,
)
from tokensdk._models import Credentials, lifespan_field

__all__ = [
    "NATIVE_API_PATH",
    "AccessExpired",
    "AuthBackend",
    "Call",
    "CallerError",
    "ErrorDetails",
    "GrantBackend",
    "Lost",
    "NativeBackend",
    "Outcome",
    "ResourceBackend",
    "Transient",
    "native_error_details",
]

#: Where the native contract's endpoints live below the service root.
NATIVE_API_PATH = "/v1"
# The longest refresh retry window taken from a service (its documented maximum is 30 s).
_MAX_RETRY_WINDOW = 3600.0


@attrs.frozen
class Call:
    """One request to make: what the session sends through its transport.

    Attributes:
        method: The HTTP method.
        path: The path below the backend's API root.
        body: The JSON body, if any (may hold secrets: never logged).
        retry: Whether transient failures may be retried (False where a retry could
            spend something twice: a one-time key answer, a logout).
        bearer: Send the session's access token.
        form: A form-encoded body instead of JSON (OAuth 2.0 endpoints; may hold
            secrets: never logged).
        headers: Extra request headers (client authentication: never logged).

    ``path`` may also be an absolute ``http(s)://`` URL (endpoints a discovery
    document names), used as it is.
    """

    method: str
    path: str
    body: Mapping[str, Any] | None = attrs.field(default=None, repr=False)
    retry: bool = True
    bearer: bool = False
    form: Mapping[str, str] | None = attrs.field(default=None, repr=False, kw_only=True)
    headers: Mapping[str, str] | None = attrs.field(default=None, repr=False, kw_only=True)


@attrs.frozen
class Lost:
    """The activation is gone; ``reason`` is the service's error name."""

    reason: str


@attrs.frozen
class AccessExpired:
    """The access token presented has expired (the refresh token may still work)."""

    reason: str = "token_expired"


@attrs.frozen
class Transient:
    """Worth retrying later; ``retry_after`` is what the service asked, if anything."""

    retry_after: float | None = None


@attrs.frozen
class CallerError:
    """The request is wrong (input, state, configuration): retrying cannot help."""

    error: str


Outcome = Lost | AccessExpired | Transient | CallerError


@attrs.frozen
class ErrorDetails:
    """What the body of a failed answer says, as read by the backend that knows its shape.

    The transport makes the typed error from the HTTP status and these details; they
    become the error's attributes (:class:`~tokensdk.ServiceError`).

    Attributes:
        error: A snake_case error name (``invalid_token``), or empty.
        code: A numeric code finer than the status (the contract's 701), or None: the
            HTTP status.
        message: Text for humans, already made printable and capped.
        reason: A finer snake_case cause (``revoked``), or empty.
    """

    error: str = ""
    code: int | None = None
    message: str = ""
    reason: str = ""


@runtime_checkable
class AuthBackend(Protocol):
    """A wire protocol: builds the calls for each intent and classifies the answers.

    Implementations are pure values (no I/O); the session drives the transport.
    """

    @property
    def base_url(self) -> str:
        """The service root, as the application gave it (no trailing slash)."""
        ...

    @property
    def api_path(self) -> str:
        """The path of the API root below :attr:`base_url` (``/v1``); calls go below it."""
        ...

    def password_login(self, username: str, password: str) -> Call:
        """The call that logs in with a username and password."""
        ...

    def one_time_key(self, username: str) -> Call:
        """The call that asks for a one-time login key."""
        ...

    def one_time_key_from(self, body: Mapping[str, Any]) -> str:
        """The key in the answer to :meth:`one_time_key`."""
        ...

    def with_one_time_key(self, username: str, answer: str) -> Call:
        """The call that logs in with the answer to a one-time key."""
        ...

    def with_token(self, credentials: Credentials) -> Call:
        """The call that checks a saved pair with the service (a resume)."""
        ...

    def resumed_lifetime(self, body: Mapping[str, Any]) -> int:
        """Seconds the access token has left, from the answer to :meth:`with_token`."""
        ...

    def refresh(self, credentials: Credentials, idempotency_key: str) -> Call | None:
        """The call that rotates the pair; a retry with the same key is recognised.

        None when these credentials cannot be renewed (no refresh token and no grant
        to run again): the session is lost when its access token runs out.
        """
        ...

    def revoke(self) -> Call:
        """The call (with the bearer) that revokes the token family: logout."""
        ...

    def status(self) -> Call:
        """The call that reads the service's clock (and realm)."""
        ...

    def grant(self, body: Mapping[str, Any], *, wall: float, monotonic: float) -> Credentials:
        """Credentials from a login or refresh answer (sent at ``wall``/``monotonic``).

        Raises:
            ProtocolError: The answer does not have the protocol's shape.
        """
        ...

    def classify(self, error: TokenSDKError) -> Outcome:
        """What a failed call means for the session."""
        ...

    def error_details(self, status: int, body: Any) -> ErrorDetails:
        """Read the body of a failed answer (``body``: decoded JSON, or None).

        Untrusted text: names must be checked, messages made printable.
        """
        ...

    def own_call(self, url: URL) -> bool:
        """Whether ``url`` is one of the calls the session makes unauthenticated."""
        ...


@runtime_checkable
class GrantBackend(AuthBackend, Protocol):
    """An :class:`AuthBackend` with OAuth 2.0-style grants (see :class:`~tokensdk.OAuth2`).

    The session uses these intents when its backend offers them: endpoint discovery,
    grants that need no user, an imported refresh token, revocation of a given token.
    """

    def discovery(self) -> tuple[Call, ...]:
        """The calls to try in order for the endpoint metadata; () once known."""
        ...

    def discovered(self, body: Mapping[str, Any]) -> GrantBackend:
        """This backend with the endpoints of a discovery document.

        Raises:
            ProtocolError: The document does not fit (wrong issuer, no token endpoint).
        """
        ...

    def client_credentials(self) -> Call:
        """The call that runs the client credentials grant."""
        ...

    def refresh_token_login(self, refresh_token: str) -> Call:
        """The call that redeems a refresh token obtained elsewhere."""
        ...

    def revocation(self, credentials: Credentials) -> Call | None:
        """The call that revokes ``credentials`` (None: no revocation endpoint)."""
        ...

    def refine(self, error: TokenSDKError) -> TokenSDKError:
        """The typed error for a failed call (e.g. ``invalid_client`` → InvalidClient)."""
        ...


@runtime_checkable
class ResourceBackend(Protocol):
    """The resource endpoints of the reference contract, as calls.

    Asset access tokens (proof of key, validation, revocation, the key set that
    verifies them) and named MAC tokens live on these endpoints. :class:`NativeBackend`
    implements them; :class:`~tokensdk.OAuth2` does not (an OAuth 2.0 provider has no
    such endpoints), and a session whose backend lacks them raises
    :class:`~tokensdk.InvalidInput` from the operations that would call them.

    Each method returns the request to send (method, path below the API root, JSON
    body, whether to retry, whether to send the session's bearer token).
    Implementations are pure values (no I/O). A body may hold secrets (a token, a
    password): the request's repr leaves it out.
    """

    def keys(self) -> Call:
        """The call that reads the key set asset access tokens are signed with."""
        ...

    def asset_challenge(self, asset_id: str) -> Call:
        """The call that asks for a proof-of-key challenge for ``asset_id``."""
        ...

    def asset_token(self, challenge: Mapping[str, Any], signature: bytes) -> Call:
        """The call that trades a signed challenge for an asset access token.

        Never retried: a challenge is single-use.
        """
        ...

    def asset_validate(self, token: str) -> Call:
        """The call that asks the service whether an asset access token is valid."""
        ...

    def asset_revoke(self, token: str) -> Call:
        """The call that revokes an asset access token."""
        ...

    def mac_token_create(self, factors: Sequence[str], password: str | None) -> Call:
        """The call (with the bearer) that creates a MAC token with these factors.

        Never retried with a password: a retry could spend a second password attempt.
        """
        ...

    def mac_token_remove(self, token_id: str) -> Call:
        """The call (with the bearer) that removes a MAC token on the service."""
        ...


# The calls a session makes without a bearer: middleware must leave them alone.
_OWN_PATHS = frozenset(
    {
        "/login",
        "/login/one-time-key",
        "/login/with-one-time-key",
        "/login/with-token",
        "/refresh",
        "/status",
        "/keys",
    }
)


def _strip_slash(url: str) -> str:
    return url.rstrip("/") if isinstance(url, str) else url


@attrs.frozen
class NativeBackend:
    """The reference token service's contract v1 (with its documented extensions).

    ``NativeBackend(base_url)``. Both an :class:`AuthBackend` and a
    :class:`ResourceBackend`: the only code that knows the contract's paths.

    Attributes:
        base_url: The service root, e.g. ``http://127.0.0.1:8080``.
        api_path: Where the contract's endpoints live below it (``/v1``).

    Raises:
        InvalidInput: ``base_url`` is not an http(s) URL.
    """

    base_url: str = attrs.field(converter=_strip_slash)
    api_path: str = attrs.field(default=NATIVE_API_PATH, init=False)

    @base_url.validator
    def _check_url(self, attribute: object, value: object) -> None:
        if not isinstance(value, str) or not value.startswith(("http://", "https://")):
            raise InvalidInput("base_url must be an http:// or https:// URL")

    def password_login(self, username: str, password: str) -> Call:
        """``POST /v1/login``."""
        return Call("POST", "/login", {"username": username, "password": password})

    def one_time_key(self, username: str) -> Call:
        """``POST /v1/login/one-time-key``."""
        return Call("POST", "/login/one-time-key", {"username": username})

    def one_time_key_from(self, body: Mapping[str, Any]) -> str:
        """The ``key`` member.

        Raises:
            ProtocolError: It is missing or empty.
        """
        key = body.get("key")
        if not isinstance(key, str) or not key:
            raise ProtocolError("the one-time key response has no key")
        return key

    def with_one_time_key(self, username: str, answer: str) -> Call:
        """``POST /v1/login/with-one-time-key``, never retried: the key is single-use."""
        return Call(
            "POST", "/login/with-one-time-key", {"username": username, "hash": answer}, retry=False
        )

    def with_token(self, credentials: Credentials) -> Call:
        """``POST /v1/login/with-token``."""
        return Call(
            "POST",
            "/login/with-token",
            {"username": credentials.username, "accessToken": credentials.access_token},
        )

    def resumed_lifetime(self, body: Mapping[str, Any]) -> int:
        """``accessExpire``, checked as in login answers."""
        return lifespan_field(body, "accessExpire")

    def retry_window(self, body: Mapping[str, Any]) -> float | None:
        """Seconds the service answers a retry of this refresh, from a refresh answer.

        The ``idempotencyWindow`` extension member: a service that names it honours
        the idempotency key, so a refresh sent again with the same key is answered as
        a retry, never taken for reuse. The session then sends refreshes from the
        caller's task, sending one again from its own if that caller is cancelled;
        without it (contract v1 alone) every refresh runs in the session's task and
        is never sent twice because of a cancellation.

        Returns:
            The window, or None when the answer does not name a usable one.
        """
        window = body.get("idempotencyWindow")
        # Exact types: a JSON true is no window; NaN and infinities fail the range.
        if (type(window) is int or type(window) is float) and 0 < window <= _MAX_RETRY_WINDOW:
            return float(window)
        return None

    def refresh(self, credentials: Credentials, idempotency_key: str) -> Call:
        """``POST /v1/refresh`` with the ``idempotencyKey`` extension."""
        return Call(
            "POST",
            "/refresh",
            {
                "username": credentials.username,
                "refreshToken": credentials.refresh_token,
                "idempotencyKey": idempotency_key,
            },
        )

    def revoke(self) -> Call:
        """``POST /v1/logout`` with the bearer, never retried (the caller decides)."""
        return Call("POST", "/logout", retry=False, bearer=True)

    def status(self) -> Call:
        """``GET /v1/status``."""
        return Call("GET", "/status")

    def keys(self) -> Call:
        """``GET /v1/keys``."""
        return Call("GET", "/keys")

    def asset_challenge(self, asset_id: str) -> Call:
        """``POST /v1/assets/challenge`` (no bearer: the asset's key is the proof)."""
        return Call("POST", "/assets/challenge", {"assetId": asset_id})

    def asset_token(self, challenge: Mapping[str, Any], signature: bytes) -> Call:
        """``POST /v1/assets/token`` with the hex signature, never retried (single-use)."""
        return Call(
            "POST",
            "/assets/token",
            {"challenge": challenge, "signature": signature.hex()},
            retry=False,
        )

    def asset_validate(self, token: str) -> Call:
        """``POST /v1/assets/validate``."""
        return Call("POST", "/assets/validate", {"token": token})

    def asset_revoke(self, token: str) -> Call:
        """``POST /v1/assets/revoke``."""
        return Call("POST", "/assets/revoke", {"token": token})

    def mac_token_create(self, factors: Sequence[str], password: str | None) -> Call:
        """``POST /v1/tokens/create`` with the bearer; retried only without a password."""
        body: dict[str, Any] = {"factors": list(factors)}
        if password is not None:
            body["password"] = password
        return Call("POST", "/tokens/create", body, retry=password is None, bearer=True)

    def mac_token_remove(self, token_id: str) -> Call:
        """``POST /v1/tokens/remove`` with the bearer."""
        return Call("POST", "/tokens/remove", {"tokenId": token_id}, bearer=True)

    def grant(self, body: Mapping[str, Any], *, wall: float, monotonic: float) -> Credentials:
        """A LoginTokens answer (camelCase members, lifespans in seconds)."""
        return Credentials.from_response(body, wall=wall, monotonic=monotonic)

    def classify(self, error: TokenSDKError) -> Outcome:
        """401 code 701 is an expired token; other 401 and 403 lose the activation."""
        if isinstance(error, InvalidCredentials | AccountFrozen):
            reason = error.error or "invalid_token"
            if error.code == 701:
                return AccessExpired(reason)
            return Lost(reason)
        if isinstance(error, RateLimited):
            return Transient(error.retry_after)
        if isinstance(error, ServiceUnavailable | ProtocolError):
            return Transient()
        return CallerError(getattr(error, "error", "") or type(error).__name__)

    def error_details(self, status: int, body: Any) -> ErrorDetails:
        """The contract's error body ``{"error", "code", "message"}`` (and ``reason``)."""
        return native_error_details(status, body)

    def own_call(self, url: URL) -> bool:
        """A URL below this service's API root whose path the session calls unauthenticated."""
        root = self.base_url + self.api_path
        path = url.path
        return (
            str(url).startswith(root)
            and path.startswith(URL(root).path)
            and path[len(URL(root).path) :] in _OWN_PATHS
        )


_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


def _name(value: Any) -> str:
    return value if isinstance(value, str) and _NAME.fullmatch(value) else ""


def native_error_details(status: int, body: Any) -> ErrorDetails:
    """Read the reference contract's error body ``{"error", "code", "message", "reason"}``.

    Names are matched by callers and logged: anything but a snake_case name counts as
    no name. The message is for humans only: escaped and capped.

    Args:
        status: The HTTP status.
        body: The decoded JSON answer, or None when it was not JSON.
    """
    if not isinstance(body, dict):
        return ErrorDetails()
    raw_code = body.get("code")
    raw_message = body.get("message")
    return ErrorDetails(
        error=_name(body.get("error")),
        code=raw_code if isinstance(raw_code, int) and not isinstance(raw_code, bool) else None,
        message=printable(raw_message) if isinstance(raw_message, str) else "",
        reason=_name(body.get("reason")),
    )

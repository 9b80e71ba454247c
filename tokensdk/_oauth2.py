"""OAuth 2.0 / OpenID Connect providers behind the :class:`~tokensdk.AuthBackend` port.

:class:`OAuth2` turns the session's intents into RFC 6749 token requests (form bodies,
client authentication by Basic header or in the body) and classifies the answers by
RFC 6749 §5.2, purely; the session does the I/O. Endpoints come from the provider's
discovery document (OpenID Connect Discovery, falling back to RFC 8414), fetched once
and lazily by the session, or are given explicitly.

Grants: ``password``, ``client_credentials`` (it has no refresh token: the session runs
it again before the token expires), ``refresh_token`` with or without rotation (an
answer without a refresh token keeps the old one, RFC 6749 §6), and a refresh token
obtained elsewhere. Logout is RFC 7009 revocation.

Error classification::

    invalid_grant                        -> InvalidCredentials; the session is lost
                                            (never retried; the relogin hook applies)
    invalid_client, unauthorized_client  -> InvalidClient (configuration; never retried)
    5xx, connection errors, 429 (Retry-After), garbled answers -> transient, retried
    anything else (invalid_request, invalid_scope, ...) -> ServiceError, not retried
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import attrs
from yarl import URL

from tokensdk._backend import (
    AccessExpired,
    Call,
    CallerError,
    ErrorDetails,
    Lost,
    Outcome,
    Transient,
    native_error_details,
)
from tokensdk._dpop import DPoPSigner, jwk
from tokensdk._errors import (
    AccountFrozen,
    InvalidClient,
    InvalidCredentials,
    InvalidInput,
    ProtocolError,
    RateLimited,
    ServiceError,
    ServiceUnavailable,
    TokenSDKError,
    printable,
)
from tokensdk._models import Credentials

__all__ = ["DEFAULT_LIFETIME", "DEVICE_GRANT", "DeviceCode", "OAuth2"]

#: Seconds an access token is assumed to live when the answer has no ``expires_in``
#: (RFC 6749 makes it optional). Short on purpose: a token that dies earlier is
#: caught by a 401 and refreshed; one assumed to live too long is not.
DEFAULT_LIFETIME = 300.0

_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "none")
_OIDC_DISCOVERY = "/.well-known/openid-configuration"
_RFC8414_DISCOVERY = "/.well-known/oauth-authorization-server"
_MAX_LIFETIME = 10 * 365 * 86400
# Fields of a token answer kept in Credentials.extra (strings only).
_EXTRA = ("scope", "token_type", "id_token")
_ENDPOINTS = (
    "token_endpoint",
    "revocation_endpoint",
    "introspection_endpoint",
    "device_authorization_endpoint",
    "authorization_endpoint",
)
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
# RFC 8628 §3.5: the poll answers that end the flow (the others keep it going).
_DEVICE_FAILURES = ("access_denied", "expired_token")


def _strip_slash(url: object) -> object:
    return url.rstrip("/") if isinstance(url, str) else url


def _check_url(name: str, value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise InvalidInput(f"{name} must be an http:// or https:// URL")


def _endpoint_validator(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    _check_url(attribute.name, value)


@attrs.frozen
class OAuth2:
    """An OAuth 2.0 / OpenID Connect provider as a session backend.

    ``Session(OAuth2(issuer, client_id=..., client_secret=...))``. Without
    ``token_endpoint`` the endpoints are read from
    ``{issuer}/.well-known/openid-configuration`` (or, failing that, RFC 8414's
    ``/.well-known/oauth-authorization-server``) once, on the first call that needs
    them; with ``token_endpoint`` no discovery happens and only the endpoints given
    are used.

    Attributes:
        issuer: The provider's issuer URL (e.g. ``https://id.example.com/realms/main``).
        client_id: The client's id.
        client_secret: The client's secret (confidential clients); never shown.
        scope: The scope to ask for (space-separated), or None for the provider's
            default. Ask for ``offline_access`` where the provider wants it for a
            refresh token.
        auth_method: How the client authenticates at the token endpoint:
            ``client_secret_basic`` (HTTP Basic), ``client_secret_post`` (in the
            form body) or ``none`` (a public client: ``client_id`` only). Default:
            ``client_secret_basic`` with a secret, ``none`` without.
        token_endpoint: The token endpoint (skips discovery).
        revocation_endpoint: The RFC 7009 revocation endpoint (logout).
        introspection_endpoint: The RFC 7662 introspection endpoint.
        device_authorization_endpoint: The RFC 8628 device authorization endpoint.
        authorization_endpoint: The authorization endpoint (authorization code flow).
        default_lifetime: Seconds an access token is assumed to live when the
            answer has no ``expires_in`` (default :data:`DEFAULT_LIFETIME`, 300).
        dpop: An Ed25519 key (e.g. :class:`~tokensdk.Ed25519Signer`) that makes
            the tokens sender-constrained (RFC 9449): token requests carry DPoP
            proofs, the provider binds the tokens to the key, and the session's
            middleware sends ``Authorization: DPoP`` with a proof per request.

    Raises:
        InvalidInput: A URL is not http(s), the authentication method is unknown, or
            the secret does not fit it.
    """

    issuer: str = attrs.field(converter=_strip_slash)
    client_id: str = attrs.field(kw_only=True)
    client_secret: str | None = attrs.field(default=None, kw_only=True, repr=False)
    scope: str | None = attrs.field(default=None, kw_only=True)
    auth_method: str | None = attrs.field(default=None, kw_only=True)
    token_endpoint: str | None = attrs.field(
        default=None, kw_only=True, validator=_endpoint_validator
    )
    revocation_endpoint: str | None = attrs.field(
        default=None, kw_only=True, validator=_endpoint_validator
    )
    introspection_endpoint: str | None = attrs.field(
        default=None, kw_only=True, validator=_endpoint_validator
    )
    device_authorization_endpoint: str | None = attrs.field(
        default=None, kw_only=True, validator=_endpoint_validator
    )
    authorization_endpoint: str | None = attrs.field(
        default=None, kw_only=True, validator=_endpoint_validator
    )
    default_lifetime: float = attrs.field(default=DEFAULT_LIFETIME, kw_only=True)
    dpop: DPoPSigner | None = attrs.field(default=None, kw_only=True, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        _check_url("issuer", self.issuer)
        if not isinstance(self.client_id, str) or not self.client_id:
            raise InvalidInput("client_id must be a non-empty string")
        if self.client_secret is not None and (
            not isinstance(self.client_secret, str) or not self.client_secret
        ):
            raise InvalidInput("client_secret must be a non-empty string or None")
        if self.auth_method is None:
            method = "none" if self.client_secret is None else "client_secret_basic"
            object.__setattr__(self, "auth_method", method)
        if self.auth_method not in _AUTH_METHODS:
            raise InvalidInput(f"auth_method must be one of {', '.join(_AUTH_METHODS)}")
        if (self.auth_method == "none") != (self.client_secret is None):
            raise InvalidInput(
                "auth_method 'none' is for clients without a secret; the others need one"
            )
        if self.scope is not None and not isinstance(self.scope, str):
            raise InvalidInput("scope must be a string of space-separated scopes")
        lifetime = self.default_lifetime
        if (
            isinstance(lifetime, bool)
            or not isinstance(lifetime, int | float)
            or not math.isfinite(lifetime)
            or not 0 < lifetime <= _MAX_LIFETIME
        ):
            raise InvalidInput("default_lifetime must be a positive number of seconds")
        if self.dpop is not None:
            if not isinstance(self.dpop, DPoPSigner):
                raise InvalidInput("dpop must be a signer with public_key_hex (Ed25519Signer)")
            jwk(self.dpop.public_key_hex)  # an Ed25519 key, or InvalidInput

    # -- AuthBackend -------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The issuer."""
        return self.issuer

    @property
    def api_path(self) -> str:
        """Empty: every call names its endpoint's absolute URL."""
        return ""

    #: The session syncs no clock with an OAuth 2.0 provider (it has no status call).
    syncs_clock = False

    def password_login(self, username: str, password: str) -> Call:
        """The resource owner password credentials grant (RFC 6749 §4.3)."""
        form = {"grant_type": "password", "username": username, "password": password}
        return self._token_call(form)

    def one_time_key(self, username: str) -> Call:
        """Not an OAuth 2.0 flow.

        Raises:
            InvalidInput: Always.
        """
        raise InvalidInput("one-time keys are a feature of the reference service, not OAuth 2.0")

    def one_time_key_from(self, body: Mapping[str, Any]) -> str:
        """Not an OAuth 2.0 flow.

        Raises:
            InvalidInput: Always.
        """
        raise InvalidInput("one-time keys are a feature of the reference service, not OAuth 2.0")

    def with_one_time_key(self, username: str, answer: str) -> Call:
        """Not an OAuth 2.0 flow.

        Raises:
            InvalidInput: Always.
        """
        raise InvalidInput("one-time keys are a feature of the reference service, not OAuth 2.0")

    def with_token(self, credentials: Credentials) -> Call:
        """Not used: the session resumes OAuth 2.0 credentials with a refresh.

        Raises:
            InvalidInput: Always.
        """
        raise InvalidInput("OAuth 2.0 credentials are resumed with a refresh")

    def resumed_lifetime(self, body: Mapping[str, Any]) -> int:
        """Not used (see :meth:`with_token`).

        Raises:
            InvalidInput: Always.
        """
        raise InvalidInput("OAuth 2.0 credentials are resumed with a refresh")

    def refresh(self, credentials: Credentials, idempotency_key: str) -> Call | None:
        """The refresh_token grant; the client_credentials grant again for a client's
        own token; None for an access token that cannot be renewed.

        ``idempotency_key`` is not sent: OAuth 2.0 has no such parameter.
        """
        if credentials.refresh_token is not None:
            form = {"grant_type": "refresh_token", "refresh_token": credentials.refresh_token}
            return self._token_call(form, scope=False)
        if credentials.extra.get("grant_type") == "client_credentials":
            return self.client_credentials()
        return None

    def revoke(self) -> Call:
        """Not used: the session revokes a token with :meth:`revocation`.

        Raises:
            InvalidInput: Always.
        """
        raise InvalidInput("OAuth 2.0 logout revokes a token: see revocation()")

    def status(self) -> Call:
        """Not used (``syncs_clock`` is False); the discovery document, for a liveness probe."""
        return Call("GET", self.issuer + _OIDC_DISCOVERY)

    def grant(self, body: Mapping[str, Any], *, wall: float, monotonic: float) -> Credentials:
        """Credentials from a successful token answer (RFC 6749 §5.1).

        ``username`` is left empty (the session fills it in from the login).

        Raises:
            ProtocolError: No access token, a token type other than Bearer, or a
                lifetime that is not a number of seconds.
        """
        access = body.get("access_token")
        if not isinstance(access, str) or not access:
            raise ProtocolError("the token answer has no access_token")
        token_type = body.get("token_type", "Bearer")
        allowed = ("bearer", "dpop") if self.dpop is not None else ("bearer",)
        if not isinstance(token_type, str) or token_type.lower() not in allowed:
            raise ProtocolError("the token answer's token_type is not one this client uses")
        lifetime = _seconds(body, "expires_in", self.default_lifetime)
        refresh = body.get("refresh_token")
        if refresh is not None and (not isinstance(refresh, str) or not refresh):
            raise ProtocolError("the token answer's refresh_token is not a string")
        # Keycloak and others say how long the refresh token lives; most do not.
        refresh_life = None if refresh is None else _seconds(body, "refresh_expires_in", None)
        if refresh_life == 0:
            refresh_life = None  # Keycloak's 0: "no idle timeout" (offline tokens)
        extra = {key: body[key] for key in _EXTRA if isinstance(body.get(key), str)}
        return Credentials(
            username="",
            access_token=access,
            refresh_token=refresh,
            access_expires_at=wall + lifetime,
            refresh_expires_at=None if refresh_life is None else wall + refresh_life,
            access_deadline=monotonic + lifetime,
            refresh_deadline=None if refresh_life is None else monotonic + refresh_life,
            lifetime=float(lifetime),
            extra=extra,
        )

    def classify(self, error: TokenSDKError) -> Outcome:
        """RFC 6749 §5.2: ``invalid_grant`` loses the session; the rest by kind."""
        if isinstance(error, InvalidClient):
            return CallerError(error.error or "invalid_client")
        if isinstance(error, InvalidCredentials | AccountFrozen):
            if error.error == "invalid_grant":
                return Lost("invalid_grant")
            if error.error == "invalid_token":
                return AccessExpired("invalid_token")
            return CallerError(error.error or "unauthorized")
        if isinstance(error, RateLimited):
            return Transient(error.retry_after)
        if isinstance(error, ServiceUnavailable | ProtocolError):
            return Transient()
        return CallerError(getattr(error, "error", "") or type(error).__name__)

    def own_call(self, url: URL) -> bool:
        """Whether ``url`` is one of this provider's endpoints (or discovery documents)."""
        plain = str(url.with_query(None).with_fragment(None))
        endpoints = {
            self.token_endpoint,
            self.revocation_endpoint,
            self.introspection_endpoint,
            *(call.path for call in _discovery_calls(self.issuer)),
        }
        return plain in endpoints

    # -- GrantBackend ------------------------------------------------------------------

    def discovery(self) -> tuple[Call, ...]:
        """The discovery documents to try, in order; () when the endpoints are known."""
        if self.token_endpoint is not None:
            return ()
        return _discovery_calls(self.issuer)

    def discovered(self, body: Mapping[str, Any]) -> OAuth2:
        """This backend with the endpoints ``body`` names (explicit ones win).

        Raises:
            ProtocolError: The document is for another issuer (RFC 8414 §3.3), or it
                names no usable token endpoint.
        """
        issuer = body.get("issuer")
        if not isinstance(issuer, str) or issuer.rstrip("/") != self.issuer:
            raise ProtocolError("the discovery document is for another issuer")
        found: dict[str, str | None] = {}
        for name in _ENDPOINTS:
            value = body.get(name)
            if value is not None and (
                not isinstance(value, str) or not value.startswith(("http://", "https://"))
            ):
                raise ProtocolError(f"the discovery document's {name} is not an http(s) URL")
            found[name] = getattr(self, name) or value
        if found["token_endpoint"] is None:
            raise ProtocolError("the discovery document names no token_endpoint")
        return attrs.evolve(self, **found)  # type: ignore[arg-type]

    def client_credentials(self) -> Call:
        """The client credentials grant (RFC 6749 §4.4)."""
        if self.client_secret is None:
            raise InvalidInput("the client credentials grant needs a confidential client")
        return self._token_call({"grant_type": "client_credentials"})

    def refresh_token_login(self, refresh_token: str) -> Call:
        """The refresh_token grant for a refresh token obtained elsewhere."""
        return self._token_call(
            {"grant_type": "refresh_token", "refresh_token": refresh_token}, scope=False
        )

    def revocation(self, credentials: Credentials) -> Call | None:
        """RFC 7009: revoke the refresh token (its whole grant), else the access token.

        Never retried: the caller decides what a failed logout means.
        """
        if self.revocation_endpoint is None:
            return None
        if credentials.refresh_token is not None:
            form = {"token": credentials.refresh_token, "token_type_hint": "refresh_token"}
        else:
            form = {"token": credentials.access_token, "token_type_hint": "access_token"}
        return self._authenticated("POST", self.revocation_endpoint, form, retry=False)

    def introspection(self, token: str) -> Call | None:
        """RFC 7662: ask whether ``token`` (an access token) is active; None without the
        endpoint."""
        if self.introspection_endpoint is None:
            return None
        form = {"token": token, "token_type_hint": "access_token"}
        return self._authenticated("POST", self.introspection_endpoint, form)

    def device_authorization(self) -> Call:
        """RFC 8628 §3.1: ask for a device code and a user code.

        Raises:
            InvalidInput: The provider has no device authorization endpoint.
        """
        if self.device_authorization_endpoint is None:
            raise InvalidInput("the provider has no device authorization endpoint")
        form: dict[str, str] = {}
        if self.scope:
            form["scope"] = self.scope
        return self._authenticated("POST", self.device_authorization_endpoint, form)

    def device_code_from(self, body: Mapping[str, Any]) -> DeviceCode:
        """The device authorization answer (RFC 8628 §3.2).

        Raises:
            ProtocolError: A required member is missing.
        """
        texts = {}
        for name in ("device_code", "user_code", "verification_uri"):
            value = body.get(name)
            if not isinstance(value, str) or not value:
                raise ProtocolError(f"the device authorization answer has no {name}")
            texts[name] = value
        complete = body.get("verification_uri_complete")
        interval = _seconds(body, "interval", 5)
        return DeviceCode(
            device_code=texts["device_code"],
            user_code=texts["user_code"],
            verification_uri=texts["verification_uri"],
            verification_uri_complete=complete if isinstance(complete, str) else None,
            expires_in=float(_seconds(body, "expires_in", 600)),
            interval=float(max(interval, 1)),
        )

    def device_poll(self, code: DeviceCode) -> Call:
        """RFC 8628 §3.4: the token request that polls for the user's approval."""
        return self._token_call(
            {"grant_type": DEVICE_GRANT, "device_code": code.device_code}, scope=False
        )

    def authorization_code(self, code: str, redirect_uri: str, verifier: str) -> Call:
        """RFC 6749 §4.1.3 with RFC 7636's ``code_verifier``: redeem an authorization code."""
        return self._token_call(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect_uri,
                "code_verifier": verifier,
            },
            scope=False,
        )

    def authorization_url(
        self, redirect_uri: str, state: str, challenge: str, *, prompt: str | None = None
    ) -> str:
        """The authorization request (RFC 6749 §4.1.1) with a PKCE S256 challenge (RFC 7636).

        Raises:
            InvalidInput: The provider has no authorization endpoint.
        """
        if self.authorization_endpoint is None:
            raise InvalidInput("the provider has no authorization endpoint")
        query = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": redirect_uri,
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        if self.scope:
            query["scope"] = self.scope
        if prompt:
            query["prompt"] = prompt
        return str(URL(self.authorization_endpoint).update_query(query))

    def authorization_response(self, query: Mapping[str, str], state: str) -> str:
        """The code from the redirect's query, checked (state; RFC 9207 ``iss``).

        Raises:
            ProtocolError: The state or the issuer does not match.
            InvalidCredentials: The provider answered with an error (the user said no).
        """
        if query.get("state") != state:
            raise ProtocolError("the authorization response's state does not match")
        iss = query.get("iss")
        if iss is not None and iss.rstrip("/") != self.issuer:
            raise ProtocolError("the authorization response comes from another issuer")
        error = query.get("error")
        if error is not None:
            name = error if error.replace("_", "").isalnum() and len(error) < 64 else "error"
            raise InvalidCredentials(f"authorization refused: {name}", status=400, error=name)
        code = query.get("code")
        if not code:
            raise ProtocolError("the authorization response has no code")
        return code

    def error_details(self, status: int, body: Any) -> ErrorDetails:
        """Read RFC 6749 §5.2's error body ``{"error", "error_description"}``.

        The name must be a snake_case name (else it counts as none); the description
        is escaped and capped like any text a server sends.
        """
        details = native_error_details(status, body)
        description = body.get("error_description") if isinstance(body, dict) else None
        if not details.message and isinstance(description, str):
            details = attrs.evolve(details, message=printable(description))
        return details

    def refine(self, error: TokenSDKError) -> TokenSDKError:
        """Type the RFC 6749 §5.2 errors: ``invalid_grant`` → InvalidCredentials,
        ``invalid_client``/``unauthorized_client`` → InvalidClient."""
        if not isinstance(error, ServiceError) or isinstance(error, InvalidClient):
            return error
        cls: type[ServiceError] | None = None
        if error.error in ("invalid_client", "unauthorized_client"):
            cls = InvalidClient
        elif (error.error == "invalid_grant" or error.error in _DEVICE_FAILURES) and not isinstance(
            error, InvalidCredentials
        ):
            cls = InvalidCredentials
        if cls is not None:
            return cls(
                str(error),
                status=error.status,
                error=error.error,
                code=error.code,
                reason=error.reason,
            )
        return error

    # -- requests ----------------------------------------------------------------------

    def _token_call(self, form: dict[str, str], *, scope: bool = True) -> Call:
        if self.token_endpoint is None:
            raise InvalidInput("the token endpoint is not known yet (discovery has not run)")
        if scope and self.scope:
            form["scope"] = self.scope
        return self._authenticated("POST", self.token_endpoint, form)

    def _authenticated(
        self, method: str, url: str, form: dict[str, str], *, retry: bool = True
    ) -> Call:
        headers: dict[str, str] = {}
        if self.auth_method == "client_secret_basic":
            assert self.client_secret is not None
            # RFC 6749 §2.3.1: each part form-urlencoded before the Basic encoding.
            pair = f"{_form_quote(self.client_id)}:{_form_quote(self.client_secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        else:
            form["client_id"] = self.client_id
            if self.auth_method == "client_secret_post":
                assert self.client_secret is not None
                form["client_secret"] = self.client_secret
        return Call(method, url, retry=retry, form=form, headers=headers)


@attrs.frozen
class DeviceCode:
    """What the user needs to approve a device login (RFC 8628 §3.2).

    Show ``verification_uri`` and ``user_code`` (or ``verification_uri_complete``,
    e.g. as a QR code) to the user.

    Attributes:
        user_code: The code the user types in.
        verification_uri: Where the user goes.
        verification_uri_complete: The same with the code filled in, if offered.
        expires_in: Seconds the codes stay valid.
        interval: Seconds between polls.
        device_code: The device's secret handle (never shown).
    """

    device_code: str = attrs.field(repr=False)
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: float
    interval: float


def _form_quote(text: str) -> str:
    return quote(text, safe="").replace("%20", "+")


def _discovery_calls(issuer: str) -> tuple[Call, ...]:
    # OIDC Discovery appends to the issuer; RFC 8414 §3.1 inserts before its path.
    parts = urlsplit(issuer)
    origin = f"{parts.scheme}://{parts.netloc}"
    return (
        Call("GET", issuer + _OIDC_DISCOVERY),
        Call("GET", origin + _RFC8414_DISCOVERY + parts.path.rstrip("/")),
    )


def _seconds(body: Mapping[str, Any], name: str, default: float | None) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, str) and value.isdigit():
        value = int(value)  # some providers send a numeric string
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= _MAX_LIFETIME
    ):
        raise ProtocolError(f"the token answer's {name} is not a number of seconds")
    return value

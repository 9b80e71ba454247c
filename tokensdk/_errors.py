"""The tokensdk error tree.

Every error tokensdk raises derives from :class:`TokenSDKError`; the leaves say
what the caller can do about it. Messages never contain a secret::

    TokenSDKError
     ├── InvalidInput (ValueError) ........... fix the argument you passed
     ├── NotLoggedIn ......................... call one of the login methods first
     ├── SessionClosed ....................... the session was closed (or never opened)
     ├── ServiceError ........................ the service answered with an error
     │    ├── InvalidCredentials ............. wrong username/password/key/token: ask the user
     │    ├── InvalidClient .................. OAuth 2.0 client id/secret refused: fix the config
     │    ├── AccountFrozen .................. the account is frozen: nothing to retry
     │    ├── RateLimited .................... wait ``retry_after`` seconds, then retry
     │    ├── NotFound ....................... the object does not exist (any more)
     │    ├── Conflict ....................... the object exists already
     │    ├── InvalidState ................... the request does not fit the state (491)
     │    └── ServiceUnavailable (OSError) ... transient: the SDK already retried; retry later
     ├── ProtocolError ....................... the service answered something off-contract
     ├── SessionLost ......................... the activation is gone: log in again
     ├── TokenInvalid ........................ an asset access token failed validation
     │    ├── TokenExpired
     │    ├── TokenNotYetValid
     │    ├── TokenMalformed
     │    ├── BadSignature
     │    ├── UnknownKey
     │    └── TokenRevoked
     ├── MacTokenError ....................... named MAC token store
     │    ├── FactorMismatch ................. a token of that name exists with other factors
     │    ├── UnknownMacToken (LookupError) .. no local token of that name
     │    └── HeaderInvalid .................. a MAC header failed parsing or verification
     └── StoreError (OSError) ................ the state store failed
          └── StoreCorrupt ................... the stored state could not be read; moved aside

``ServiceError`` carries ``status`` (HTTP), ``error`` (the contract's snake_case
name) and ``code`` (the contract's numeric code). ``SessionLost`` and
``TokenInvalid`` carry a ``reason`` string naming the cause.

Text that comes from outside (a service's error message) goes through
:func:`printable` before it reaches a message or a log line.
"""

from __future__ import annotations

__all__ = [
    "AccountFrozen",
    "BadSignature",
    "Conflict",
    "FactorMismatch",
    "HeaderInvalid",
    "InvalidClient",
    "InvalidCredentials",
    "InvalidInput",
    "InvalidState",
    "MacTokenError",
    "NotFound",
    "NotLoggedIn",
    "ProtocolError",
    "RateLimited",
    "ServiceError",
    "ServiceUnavailable",
    "SessionClosed",
    "SessionLost",
    "StoreCorrupt",
    "StoreError",
    "StoreUnavailable",
    "TokenExpired",
    "TokenInvalid",
    "TokenMalformed",
    "TokenNotYetValid",
    "TokenRevoked",
    "TokenSDKError",
    "UnknownKey",
    "UnknownMacToken",
    "printable",
]

_ELLIPSIS = "\u2026"


def printable(text: str, limit: int = 200) -> str:
    """Make untrusted text (a service's error message) safe for one log line.

    A service can put newlines, ANSI escape sequences or bidi overrides in its error
    text; written to a log or a terminal as they are, they forge log lines, recolour
    the terminal or reorder what the reader sees. Every character Python does not
    call printable (C0 and C1 controls, DEL, line and paragraph separators, bidi and
    other format characters, lone surrogates, unassigned code points) is escaped as
    ``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN``, and the result is cut to ``limit``
    characters, ending with an ellipsis when cut.

    Args:
        text: The untrusted text.
        limit: The longest result, in characters (at least 1).

    Returns:
        One line of printable text, at most ``limit`` characters long.
    """
    if len(text) <= limit and text.isprintable():
        return text  # the common case costs one scan
    pieces: list[str] = []
    size = 0
    # Never more than limit + 1 source characters: a 100 KB message costs no more.
    for char in text[: limit + 1]:
        if char.isprintable():
            piece = char
        else:
            code = ord(char)
            piece = (
                f"\\x{code:02x}"
                if code < 0x100
                else f"\\u{code:04x}"
                if code < 0x10000
                else f"\\U{code:08x}"
            )
        if size + len(piece) > limit:
            break
        pieces.append(piece)
        size += len(piece)
    else:
        return "".join(pieces)
    # Cut: make room for the ellipsis without splitting an escape.
    while pieces and size + 1 > limit:
        size -= len(pieces.pop())
    return "".join(pieces) + _ELLIPSIS


class TokenSDKError(Exception):
    """Root of every error raised by tokensdk."""


class InvalidInput(TokenSDKError, ValueError):
    """An argument passed to tokensdk is invalid; nothing was changed."""


class NotLoggedIn(TokenSDKError):
    """The session holds no credentials: call a login method first."""


class SessionClosed(TokenSDKError):
    """The session is not open: use it inside ``async with``."""


class ServiceError(TokenSDKError):
    """The token service answered with a contract error.

    Attributes:
        status: The HTTP status code.
        error: The contract's snake_case error name (e.g. ``invalid_token``); empty
            when the answer had none (anything but a snake_case name counts as none).
        code: The contract's numeric code (e.g. 401, 701).
        reason: A finer cause where the service gives one (e.g. ``revoked`` for an
            asset token), else empty; a snake_case name like ``error``.
    """

    def __init__(
        self,
        message: str = "",
        *,
        status: int = 0,
        error: str = "",
        code: int = 0,
        reason: str = "",
    ) -> None:
        super().__init__(message or error or f"service error {status}")
        self.status = status
        self.error = error
        self.code = code
        self.reason = reason


class InvalidCredentials(ServiceError):
    """Username, password, one-time key answer or token were refused: ask the user again."""


class InvalidClient(ServiceError):
    """The OAuth 2.0 provider refused the client itself (``invalid_client``,
    ``unauthorized_client``): a configuration error (client id, secret, authentication
    method or allowed grants). Never retried."""


class AccountFrozen(ServiceError):
    """The account is frozen; retrying will not help."""


class RateLimited(ServiceError):
    """Too many attempts: wait ``retry_after`` seconds before trying again."""

    def __init__(
        self,
        message: str = "",
        *,
        status: int = 429,
        error: str = "rate_limited",
        code: int = 429,
        reason: str = "",
        retry_after: float = 1.0,
    ) -> None:
        super().__init__(message, status=status, error=error, code=code, reason=reason)
        self.retry_after = retry_after


class NotFound(ServiceError, LookupError):
    """The service does not know the object."""


class Conflict(ServiceError):
    """The object exists already."""


class InvalidState(ServiceError):
    """The request does not fit the object's state (code 491)."""


class ServiceUnavailable(ServiceError, OSError):
    """The service could not be reached or failed (5xx); the SDK retried already."""


class ProtocolError(TokenSDKError):
    """The service answered something that does not follow the contract."""


class SessionLost(TokenSDKError):
    """The session's activation is gone (expired, revoked, reused, logged out): log in again.

    Attributes:
        reason: Why, e.g. ``token_expired``, ``refresh_token_reused``, ``logout``.
    """

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or f"session lost: {reason}")
        self.reason = reason


class TokenInvalid(TokenSDKError):
    """An asset access token failed validation.

    Attributes:
        reason: A short machine-readable cause (``expired``, ``malformed``, ...).
    """

    reason = "invalid"

    def __init__(self, message: str = "") -> None:
        super().__init__(message or f"access token invalid: {self.reason}")


class TokenExpired(TokenInvalid):
    """The token's ``exp`` has passed."""

    reason = "expired"


class TokenNotYetValid(TokenInvalid):
    """The token's ``iat`` is in the future (beyond the leeway): a clock is off."""

    reason = "not_yet_valid"


class TokenMalformed(TokenInvalid):
    """The token is not a well-formed, canonical v4.public PASETO of acceptable size."""

    reason = "malformed"


class BadSignature(TokenInvalid):
    """The token's signature does not verify."""

    reason = "bad_signature"


class UnknownKey(TokenInvalid):
    """The token names a signing key (``kid``) the key set does not hold."""

    reason = "unknown_key"


class TokenRevoked(TokenInvalid):
    """The service revoked the token."""

    reason = "revoked"


class MacTokenError(TokenSDKError):
    """Base class for named MAC token store errors."""


class FactorMismatch(MacTokenError):
    """A token with this name exists (or is being created) with other factors."""


class UnknownMacToken(MacTokenError, LookupError):
    """No local MAC token has that name."""


class HeaderInvalid(MacTokenError):
    """A MAC authorization header failed parsing or verification.

    Attributes:
        error: The contract's error name (``token_invalid``, ``timestamp_too_old``,
            ``timestamp_in_future``, ``replayed``).
    """

    def __init__(self, error: str, message: str = "") -> None:
        super().__init__(message or error)
        self.error = error


class StoreError(TokenSDKError, OSError):
    """Reading or writing the state store failed."""


class StoreCorrupt(StoreError):
    """The stored state could not be decoded; the file was moved aside to ``moved_to``."""

    def __init__(self, message: str, *, moved_to: str | None = None) -> None:
        super().__init__(message)
        self.moved_to = moved_to


class StoreUnavailable(StoreError):
    """A shared store cannot be reached, or a refresh cannot be coordinated through it.

    Nothing was read or written; retry later. Raised by :class:`RedisStore` when
    Redis is down, and by a session whose needed refresh could not take the fleet's
    refresh lock.
    """

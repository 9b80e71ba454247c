"""Frozen values: credentials, asset tokens, MAC tokens, events, the session snapshot.

Also the versioned codec between a :class:`SessionSnapshot` and the JSON document a
store persists (:func:`snapshot_to_document`, :func:`document_to_snapshot`); how a
store wraps that document in bytes is :mod:`tokensdk.stores._codec`'s business (its
envelope has a format version of its own). Everything here is pure.
"""

from __future__ import annotations

import base64
import binascii
import enum
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, TypeVar

import attrs

from tokensdk._errors import ProtocolError, StoreCorrupt

__all__ = [
    "AssetToken",
    "Credentials",
    "Event",
    "EventType",
    "MacToken",
    "PendingRefresh",
    "SessionSnapshot",
    "SessionStatus",
    "document_to_snapshot",
    "snapshot_to_document",
]

#: The version of the state document (its members); not the store envelope's version.
DOCUMENT_VERSION = 1
_MAX_LIFESPAN = 10 * 365 * 86400  # seconds: the longest lifespan an answer may give
_T = TypeVar("_T")


def _redacted(value: str | bytes) -> str:
    return "<redacted>" if value else "<empty>"


# Shared by every Credentials without extra fields (read-only, so sharing is safe):
# a native grant has none, and building one per refresh showed in benchmark row 3.
_NO_EXTRA: Mapping[str, str] = MappingProxyType({})


def _frozen_extra(value: Mapping[str, str] | None) -> Mapping[str, str]:
    if isinstance(value, MappingProxyType):
        return value
    if not value:
        return _NO_EXTRA
    return MappingProxyType(dict(value))


@attrs.frozen
class Credentials:
    """An access token, its optional refresh token, and when each expires.

    Protocol-neutral: the reference service always grants a pair, an OAuth 2.0
    provider may grant an access token alone (``client_credentials``, a password
    grant without ``offline_access``); then ``refresh_token`` and the refresh
    deadlines are None.

    Deadlines are kept twice: as wall time (what is persisted) and as monotonic time
    (what scheduling uses). A token counts as expired as soon as either clock says so,
    so neither a wall-clock jump nor a suspended machine makes it look fresh.

    Attributes:
        username: The account (or subject) the tokens belong to; may be empty when
            the grant does not say (an imported refresh token).
        access_token: The bearer token (secret).
        refresh_token: The refresh token (secret), or None when the grant gave none.
        access_expires_at: Wall time (Unix seconds) when the access token expires.
        refresh_expires_at: Wall time when the refresh token expires; None when
            there is none or its lifetime is not known.
        access_deadline: Monotonic time when the access token expires.
        refresh_deadline: Monotonic time when the refresh token expires (or None).
        lifetime: The access token's lifespan as granted, in seconds.
        extra: Other fields of the grant worth keeping (``scope``, ``token_type``,
            ``id_token``, ``grant_type``): strings, redacted in the repr.
    """

    username: str
    access_token: str = attrs.field(repr=False)
    refresh_token: str | None = attrs.field(repr=False)
    access_expires_at: float
    refresh_expires_at: float | None
    access_deadline: float = attrs.field(eq=False)
    refresh_deadline: float | None = attrs.field(eq=False)
    lifetime: float
    extra: Mapping[str, str] = attrs.field(
        default=_NO_EXTRA, converter=_frozen_extra, repr=False, hash=False
    )

    @classmethod
    def from_response(
        cls, body: Mapping[str, Any], *, wall: float, monotonic: float
    ) -> Credentials:
        """Build credentials from a LoginTokens response.

        Args:
            body: The decoded JSON response.
            wall: Wall time when the request was *sent* (so deadlines err early).
            monotonic: Monotonic time when the request was sent.

        Raises:
            ProtocolError: The body does not have the contract's shape.
        """
        get = body.get if type(body) is dict else None
        if get is not None:
            # The usual answer, checked in one go (exact JSON types, lifespans in
            # range, non-empty tokens); anything else takes the field-by-field path
            # below, which says what is wrong.
            username, access, refresh = get("username"), get("accessToken"), get("refreshToken")
            access_ttl, refresh_ttl = get("accessExpire"), get("refreshExpire")
            if (
                type(username) is str
                and type(access) is str
                and type(refresh) is str
                and type(access_ttl) is int
                and type(refresh_ttl) is int
                and access
                and refresh
                and 0 <= access_ttl <= _MAX_LIFESPAN
                and 0 <= refresh_ttl <= _MAX_LIFESPAN
            ):
                return cls(
                    username,
                    access,
                    refresh,
                    wall + access_ttl,
                    wall + refresh_ttl,
                    monotonic + access_ttl,
                    monotonic + refresh_ttl,
                    float(access_ttl),
                )
        username = _field(body, "username", str)
        access = _field(body, "accessToken", str)
        refresh = _field(body, "refreshToken", str)
        access_ttl = lifespan_field(body, "accessExpire")
        refresh_ttl = lifespan_field(body, "refreshExpire")
        if not access or not refresh:
            raise ProtocolError("the service returned an empty token")
        return cls(
            username=username,
            access_token=access,
            refresh_token=refresh,
            access_expires_at=wall + access_ttl,
            refresh_expires_at=wall + refresh_ttl,
            access_deadline=monotonic + access_ttl,
            refresh_deadline=monotonic + refresh_ttl,
            lifetime=float(access_ttl),
        )

    def access_left(self, wall: float, monotonic: float) -> float:
        """Seconds the access token has left, by the more pessimistic of the two clocks."""
        return min(self.access_deadline - monotonic, self.access_expires_at - wall)

    def refresh_left(self, wall: float, monotonic: float) -> float:
        """Seconds the refresh token has left, by the more pessimistic of the two clocks.

        Infinite when no deadline is known (no refresh token, or one whose lifetime
        the grant did not give): the service's answer decides then.
        """
        if self.refresh_deadline is None or self.refresh_expires_at is None:
            return math.inf
        return min(self.refresh_deadline - monotonic, self.refresh_expires_at - wall)

    def renewed_from(self, previous: Credentials) -> Credentials:
        """These credentials, completed from the ones a refresh replaced.

        RFC 6749 §6: a refresh answer without a refresh token leaves the old one
        valid, so it (and its deadlines) carry over; so do the username and extra
        fields the answer does not repeat.
        """
        changes: dict[str, Any] = {}
        if self.refresh_token is None and previous.refresh_token is not None:
            changes.update(
                refresh_token=previous.refresh_token,
                refresh_expires_at=previous.refresh_expires_at,
                refresh_deadline=previous.refresh_deadline,
            )
        if not self.username and previous.username:
            changes["username"] = previous.username
        missing = {k: v for k, v in previous.extra.items() if k not in self.extra}
        if missing:
            changes["extra"] = {**missing, **self.extra}
        return attrs.evolve(self, **changes) if changes else self

    def __repr__(self) -> str:
        refresh = "None" if self.refresh_token is None else _redacted(self.refresh_token)
        extra = f", extra=<{len(self.extra)} redacted>" if self.extra else ""
        return (
            f"Credentials(username={self.username!r}, access_token={_redacted(self.access_token)},"
            f" refresh_token={refresh},"
            f" access_expires_at={self.access_expires_at!r},"
            f" refresh_expires_at={self.refresh_expires_at!r}{extra})"
        )


@attrs.frozen
class AssetToken:
    """One entry of the observable access-token array.

    Attributes:
        asset_id: The asset the token grants access to.
        token: The PASETO v4.public token string (a bearer secret).
        expires_at: Wall time of the token's ``exp`` claim, if known.
    """

    asset_id: str
    token: str = attrs.field(repr=False)
    expires_at: float | None = None

    def __repr__(self) -> str:
        return (
            f"AssetToken(asset_id={self.asset_id!r}, token={_redacted(self.token)},"
            f" expires_at={self.expires_at!r})"
        )


@attrs.frozen
class MacToken:
    """A named MAC token: an id and a 16-byte secret that sign requests locally.

    Attributes:
        name: The application's name for the token.
        token_id: The service's id of the token (UUID).
        secret: The raw 16-byte HMAC key (secret).
        factors: The factors that created it, e.g. ``("possession", "knowledge")``.
    """

    name: str
    token_id: str
    secret: bytes = attrs.field(repr=False)
    factors: tuple[str, ...]

    def __repr__(self) -> str:
        return (
            f"MacToken(name={self.name!r}, token_id={self.token_id!r},"
            f" secret={_redacted(self.secret)}, factors={self.factors!r})"
        )


@attrs.frozen
class PendingRefresh:
    """A refresh that may have reached the service but whose answer was not installed.

    It is committed (and written to the store) before the refresh request leaves, and
    cleared by the commit that installs the new pair. A session that finds one after
    a crash retries the same refresh with the same idempotency key, so the service
    recognises the retry instead of reporting reuse of a spent refresh token.

    Attributes:
        refresh_token: The refresh token the request presents (secret).
        idempotency_key: The key sent with it (secret: with the token it is a retry).
        started_at: Wall time when the first attempt was prepared.
    """

    refresh_token: str = attrs.field(repr=False)
    idempotency_key: str = attrs.field(repr=False)
    started_at: float

    def __repr__(self) -> str:
        return (
            f"PendingRefresh(refresh_token={_redacted(self.refresh_token)},"
            f" idempotency_key={_redacted(self.idempotency_key)},"
            f" started_at={self.started_at!r})"
        )


class SessionStatus(enum.StrEnum):
    """Where a session stands."""

    LOGGED_OUT = "logged_out"
    """Never logged in, or logged out by the application."""
    ACTIVE = "active"
    """Holds a usable token pair and keeps it fresh."""
    NEEDS_LOGIN = "needs_login"
    """The activation was lost (expired, revoked, reused): log in again."""


def _read_only(mapping: Mapping[str, MacToken]) -> Mapping[str, MacToken]:
    # A snapshot is shared with every callback: none may change it under the others.
    if isinstance(mapping, MappingProxyType):
        return mapping
    return MappingProxyType(dict(mapping))


@attrs.frozen
class SessionSnapshot:
    """An immutable view of the whole session state, handed to change callbacks.

    Attributes:
        status: Where the session stands.
        credentials: The current token pair, or None.
        access_tokens: The asset access-token array, in order.
        mac_tokens: The named MAC tokens by name.
        revision: Increases by one with every change (persisted: it keeps growing
            across restarts).
        pending_refresh: A refresh of ``credentials`` that was sent (or is about to
            be) and whose answer is not installed yet.
    """

    status: SessionStatus = SessionStatus.LOGGED_OUT
    credentials: Credentials | None = None
    access_tokens: tuple[AssetToken, ...] = ()
    mac_tokens: Mapping[str, MacToken] = attrs.field(factory=dict, converter=_read_only)
    revision: int = 0
    pending_refresh: PendingRefresh | None = None

    @property
    def username(self) -> str | None:
        """The logged-in user, if any."""
        return self.credentials.username if self.credentials else None


class EventType(enum.StrEnum):
    """What happened, as reported through ``Session.events()``."""

    LOGGED_IN = "logged_in"
    RESUMED = "resumed"
    REFRESHED = "refreshed"
    REFRESH_FAILED = "refresh_failed"
    SESSION_LOST = "session_lost"
    LOGGED_OUT = "logged_out"
    ACCESS_TOKEN_ADDED = "access_token_added"
    ACCESS_TOKEN_REPLACED = "access_token_replaced"
    ACCESS_TOKEN_REMOVED = "access_token_removed"
    MAC_TOKEN_ADDED = "mac_token_added"
    MAC_TOKEN_REMOVED = "mac_token_removed"
    CLOCK_SYNCED = "clock_synced"
    CALLBACK_FAILED = "callback_failed"
    STORE_FAILED = "store_failed"


@attrs.frozen
class Event:
    """One thing that happened to a session.

    Attributes:
        type: What happened.
        at: Wall time when it happened.
        detail: A short reason or name (an asset id, a MAC token name, an error name).
        error: The error behind a failure event, if any.
    """

    type: EventType
    at: float
    detail: str | None = None
    error: BaseException | None = attrs.field(default=None, eq=False)


# -- the persisted document ---------------------------------------------------------


def snapshot_to_document(snapshot: SessionSnapshot) -> dict[str, Any]:
    """Encode a snapshot as the versioned JSON document stores persist.

    ``revision`` and ``pendingRefresh`` are optional members added within version 1:
    a document without them (written by an earlier release) reads as revision 0 with
    no refresh pending, and an earlier release ignores them.
    """
    creds = snapshot.credentials
    pending = snapshot.pending_refresh
    return {
        "version": DOCUMENT_VERSION,
        "revision": snapshot.revision,
        "status": snapshot.status.value,
        "credentials": None
        if creds is None
        else {
            "username": creds.username,
            "accessToken": creds.access_token,
            "refreshToken": creds.refresh_token,
            "accessExpiresAt": creds.access_expires_at,
            "refreshExpiresAt": creds.refresh_expires_at,
            "lifetime": creds.lifetime,
            # Written only when there is any, so native documents stay as they were.
            **({"extra": dict(creds.extra)} if creds.extra else {}),
        },
        "accessTokens": [
            {"assetId": t.asset_id, "token": t.token, "expiresAt": t.expires_at}
            for t in snapshot.access_tokens
        ],
        "macTokens": {
            name: {
                "tokenId": m.token_id,
                "tokenSecret": base64.b64encode(m.secret).decode("ascii"),
                "factors": list(m.factors),
            }
            for name, m in snapshot.mac_tokens.items()
        },
        "pendingRefresh": None
        if pending is None
        else {
            "refreshToken": pending.refresh_token,
            "idempotencyKey": pending.idempotency_key,
            "startedAt": pending.started_at,
        },
    }


def document_to_snapshot(
    document: Mapping[str, Any], *, wall: float, monotonic: float
) -> SessionSnapshot:
    """Decode a persisted document, turning wall deadlines into monotonic ones.

    Raises:
        StoreCorrupt: The document is not a state this version understands.
    """
    try:
        return _document_to_snapshot(document, wall=wall, monotonic=monotonic)
    except (
        ProtocolError,
        KeyError,
        TypeError,
        ValueError,
        AttributeError,  # an entry that is not an object
        OverflowError,  # a 400-digit time
        binascii.Error,
    ) as exc:
        raise StoreCorrupt(f"stored session state is invalid ({type(exc).__name__})") from None


def _document_to_snapshot(
    document: Mapping[str, Any], *, wall: float, monotonic: float
) -> SessionSnapshot:
    if document.get("version") != DOCUMENT_VERSION:
        raise ValueError("unsupported state version")
    status = SessionStatus(document.get("status", SessionStatus.LOGGED_OUT.value))
    raw = document.get("credentials")
    creds = None
    if raw is not None:
        access_at = _number(raw, "accessExpiresAt")
        # null since OAuth 2.0 backends: a grant without a refresh token (or its lifetime)
        refresh_at = (
            None if raw.get("refreshExpiresAt") is None else _number(raw, "refreshExpiresAt")
        )
        refresh = None if raw.get("refreshToken") is None else _field(raw, "refreshToken", str)
        extra = raw.get("extra") or {}
        if not isinstance(extra, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in extra.items()
        ):
            raise ValueError("bad extra fields")
        creds = Credentials(
            username=_field(raw, "username", str),
            access_token=_field(raw, "accessToken", str),
            refresh_token=refresh,
            access_expires_at=access_at,
            refresh_expires_at=refresh_at,
            access_deadline=monotonic + (access_at - wall),
            refresh_deadline=None if refresh_at is None else monotonic + (refresh_at - wall),
            lifetime=_number(raw, "lifetime"),
            extra=extra,
        )
    tokens = []
    for item in document.get("accessTokens") or ():
        expires = item.get("expiresAt")
        tokens.append(
            AssetToken(
                asset_id=_field(item, "assetId", str),
                token=_field(item, "token", str),
                expires_at=None if expires is None else _number(item, "expiresAt"),
            )
        )
    macs = {}
    for name, item in (document.get("macTokens") or {}).items():
        secret = base64.b64decode(_field(item, "tokenSecret", str), validate=True)
        factors = item["factors"]
        if not isinstance(name, str) or len(secret) != 16 or not isinstance(factors, list):
            raise ValueError("bad MAC token")
        macs[name] = MacToken(
            name=name,
            token_id=_field(item, "tokenId", str),
            secret=secret,
            factors=tuple(str(f) for f in factors),
        )
    if status is SessionStatus.ACTIVE and creds is None:
        status = SessionStatus.LOGGED_OUT
    revision = document.get("revision", 0)
    if type(revision) is not int or not 0 <= revision < 2**63:
        raise ValueError("bad revision")
    pending = None
    raw_pending = document.get("pendingRefresh")
    if raw_pending is not None:
        pending = PendingRefresh(
            refresh_token=_field(raw_pending, "refreshToken", str),
            idempotency_key=_field(raw_pending, "idempotencyKey", str),
            started_at=_number(raw_pending, "startedAt"),
        )
        if creds is None or pending.refresh_token != creds.refresh_token:
            pending = None  # it belonged to a pair that is gone: nothing to retry
    return SessionSnapshot(
        status=status,
        credentials=creds,
        access_tokens=tuple(tokens),
        mac_tokens=macs,
        revision=revision,
        pending_refresh=pending,
    )


def _field(body: Mapping[str, Any], name: str, kind: type[_T]) -> _T:
    try:
        value = body[name]
    except (KeyError, TypeError):
        raise ProtocolError(f"response field {name!r} is missing") from None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ProtocolError(f"response field {name!r} has the wrong type")
    return value


def _number(body: Mapping[str, Any], name: str) -> float:
    value = body.get(name) if isinstance(body, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ProtocolError(f"field {name!r} is not a number")
    return float(value)


def lifespan_field(body: Mapping[str, Any], name: str) -> int:
    """Read a lifespan in whole seconds (0 to ten years) from a service answer.

    Raises:
        ProtocolError: The field is missing, not an integer, or out of range.
    """
    value = _field(body, name, int)
    if value < 0 or value > _MAX_LIFESPAN:
        raise ProtocolError(f"response field {name!r} is out of range")
    return value

"""The records the service stores, one frozen class per table, and the LoginTokens answer.

Each record is stored as ``attrs.asdict`` (see :mod:`tokensdk.server._tables`);
a field added later needs a default, so that older databases still load.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

__all__ = [
    "AccessRecord",
    "AssetRecord",
    "ChallengeRecord",
    "ClientToken",
    "FamilyRecord",
    "LoginTokens",
    "MacTokenRecord",
    "OneTimeKeyRecord",
    "RefreshRecord",
    "RevokedRecord",
    "SigningKeyRecord",
    "UserRecord",
]


@attrs.frozen
class UserRecord:
    """A user as stored: scrypt hash plus the one-time key digest, never the password.

    ``ha1`` is ``sha256hex(username:realm:password)`` as :func:`make_user_record`
    returns it; in the state's table (and the database) it is sealed under the
    service key (:meth:`ServiceState.add_user`). The contract's one-time key
    answer is computed from it, so the service must keep it; it is a fast,
    unsalted hash and therefore a weaker secret than the scrypt hash (an offline
    dictionary attack on a stolen database is cheap against it). That is the
    price of letting an application backend answer keys without the client
    holding the password; deployments that do not use one-time keys lose nothing
    by it being present, but should protect the database like a password file.
    """

    salt: str = attrs.field(repr=False)
    hash: str = attrs.field(repr=False)
    n: int
    ha1: str = attrs.field(repr=False)
    frozen: bool = False


@attrs.frozen
class FamilyRecord:
    """One login: every token descended from it lives and dies with it.

    ``client``: the OAuth 2.0 client it was issued to (``/oauth2/token``), None for
    a native login; only that client may refresh or revoke it there.
    """

    username: str
    created: float
    expires: float
    revoked: bool = False
    client: str | None = None


@attrs.frozen
class AccessRecord:
    """A stored access token (keyed by its digest).

    ``parent`` is the digest of the refresh token whose rotation issued this token,
    when that rotation kept an answer for retries: the first use of the token closes
    that retry window (:meth:`ServiceState.refresh`).
    """

    family: str
    username: str
    expires: float
    parent: str | None = None


@attrs.frozen
class RefreshRecord:
    """A stored refresh token (keyed by its digest); ``used`` once it rotated.

    When the rotating request carried an ``idempotencyKey``, the digest of the key,
    the time of that first success (``used_at``) and the ``answer`` it gave are
    kept, so that the same request retried (its answer was lost in transit) gets the
    same answer instead of being taken for theft. ``answer`` is sealed under a key
    derived from the refresh token and the idempotency key (only the client has
    them) and is dropped as soon as a token of that answer is used. ``parent``:
    as in :class:`AccessRecord`.
    """

    family: str
    username: str
    expires: float
    used: bool = False
    used_at: float | None = None
    idempotency: str | None = None
    # Written by earlier versions (digests of the pair a rotation issued); read by
    # none, kept so that their databases still load.
    successor_access: str | None = None
    successor_refresh: str | None = None
    answer: str | None = attrs.field(default=None, repr=False)
    parent: str | None = None


@attrs.frozen
class OneTimeKeyRecord:
    """The pending one-time key of a user: ``sha256:`` and the digest of the expected answer.

    Not the answer itself, which would log in whoever read it from the database.
    """

    answer: str = attrs.field(repr=False)
    expires: float


def _str_tuple(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(values)


@attrs.frozen
class MacTokenRecord:
    """A named MAC token: its secret (Base64, sealed), owner, family and factors."""

    secret: str = attrs.field(repr=False)
    family: str
    username: str
    factors: tuple[str, ...] = attrs.field(converter=_str_tuple)


@attrs.frozen
class AssetRecord:
    """An asset and the holder's Ed25519 public key (lowercase hex)."""

    public_key: str


@attrs.frozen
class ChallengeRecord:
    """An issued proof-of-key challenge (keyed by its nonce)."""

    asset_id: str
    timestamp: str
    expires: float
    used: bool = False


@attrs.frozen
class SigningKeyRecord:
    """A PASETO signing key (keyed by its ``k4.pid``); ``seed``: Ed25519 seed hex, sealed."""

    seed: str = attrs.field(repr=False)
    created: float
    serial: int


@attrs.frozen
class RevokedRecord:
    """A revoked asset token (keyed by its signature), kept until the token's expiry."""

    expires: float


@attrs.frozen
class ClientToken:
    """An access token issued to an OAuth 2.0 client itself (no refresh token)."""

    access_token: str = attrs.field(repr=False)
    access_expire: int


@attrs.frozen
class LoginTokens:
    """A freshly issued token pair, as the contract's LoginTokens body."""

    username: str
    access_token: str = attrs.field(repr=False)
    access_expire: int
    refresh_token: str = attrs.field(repr=False)
    refresh_expire: int

    def to_json(self) -> dict[str, Any]:
        """Return the contract's camelCase body."""
        return {
            "accessToken": self.access_token,
            "accessExpire": self.access_expire,
            "refreshToken": self.refresh_token,
            "refreshExpire": self.refresh_expire,
            "username": self.username,
        }

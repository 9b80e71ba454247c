"""The service's state as a pure core: users, token families, one-time keys, MAC tokens, assets.

Nothing here does I/O beyond the write-through :class:`~tokensdk.server._db.Persistence`
and the service key (:class:`~tokensdk.server._vault.Vault`, read or created once
at start), and nothing reads a clock: every method that needs the time takes
``now`` (wall seconds). Failures are :class:`ApiError` values that the HTTP layer
renders as the contract's JSON error bodies.

What a copy of the database reveals, without the service key file:

- nothing that authenticates: access and refresh tokens are stored as SHA-256
  digests only; a pending one-time key as the digest of its expected answer; MAC
  token secrets, each user's one-time-key ``ha1`` and the signing-key seeds are
  sealed under the service key (AES-256-GCM, :mod:`tokensdk.server._vault`); the
  answer kept for a refresh retry is sealed under a key derived from the refresh
  token and the idempotency key, which only the client holds;
- in the clear: usernames and whether they are frozen, scrypt password hashes with
  their salts (an offline guessing target, at scrypt's cost per guess), token
  metadata (digests, owners, families, expiry times), MAC token ids and factors,
  asset ids and public keys, issued challenges, and revoked asset token signatures.

With the key file as well, a copy opens the MAC token secrets, the ``ha1`` values
(password-equivalent for the one-time-key login, and a fast hash to guess at) and
the signing keys; keep the key file out of database backups. The refresh-retry
answers stay closed even then.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import secrets
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeVar

import attrs

from tokensdk import canonical_challenge
from tokensdk._errors import InvalidInput, TokenExpired, TokenInvalid, TokenNotYetValid
from tokensdk._paseto import (
    AccessTokenInfo,
    KeySet,
    PublicKey,
    SigningKey,
    sign_asset_token,
    verify_access_token,
)
from tokensdk.server._db import MemoryPersistence, Persistence
from tokensdk.server._vault import SealError, Vault, derive_key, is_sealed, record_aad, seal, unseal

__all__ = [
    "AccessRecord",
    "ApiError",
    "AssetRecord",
    "ChallengeRecord",
    "FamilyRecord",
    "LoginTokens",
    "MacTokenRecord",
    "OneTimeKeyRecord",
    "RefreshRecord",
    "ServiceState",
    "UserRecord",
    "ha1_digest",
    "hash_password",
    "one_time_key_answer",
    "token_digest",
    "verify_password",
]

_R = TypeVar("_R")


class ApiError(Exception):
    """A contract error: rendered as ``{"error", "code", "message"}`` with ``status``.

    Args:
        status: The HTTP status.
        error: The contract's snake_case error name.
        message: Text for humans; never contains a secret.
        code: The contract's numeric code (defaults to ``status``).
        headers: Extra response headers (``Retry-After``, ``WWW-Authenticate``).
        extra: Extra body fields (e.g. ``reason``).
    """

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        *,
        code: int | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.code = status if code is None else code
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


def _bearer_rejected(message: str, *, code: int = 401, error: str = "invalid_token") -> ApiError:
    return ApiError(
        401,
        error,
        message,
        code=code,
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )


class BearerRejected(ApiError):
    """A bearer token was refused; ``expired`` says whether it was only too old."""

    def __init__(self, message: str, *, expired: bool) -> None:
        super().__init__(
            401,
            "invalid_token",
            message,
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
        self.expired = expired


# -- digests and password hashing -------------------------------------------------------


def token_digest(token: str) -> str:
    """Return the lowercase hex SHA-256 of a token: the only form the service stores.

    Args:
        token: The token string.

    Returns:
        64 hex characters.
    """
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def ha1_digest(username: str, realm: str, password: str) -> str:
    """Return ``sha256hex(username:realm:password)``, the one-time key secret of a user.

    Args:
        username: The account name.
        realm: The service realm.
        password: The plaintext password.

    Returns:
        64 lowercase hex characters.
    """
    return hashlib.sha256(f"{username}:{realm}:{password}".encode()).hexdigest()


def one_time_key_answer(key: str, ha1: str) -> str:
    """Return the expected one-time key answer ``sha256hex(key | ha1)``.

    Args:
        key: The one-time key the service issued.
        ha1: :func:`ha1_digest` of the user.

    Returns:
        64 lowercase hex characters.
    """
    return hashlib.sha256(f"{key}|{ha1}".encode()).hexdigest()


def hash_password(password: str, salt: bytes, n: int) -> str:
    """Return the scrypt hash (hex) of ``password``; slow on purpose, run it in a thread.

    Args:
        password: The plaintext password.
        salt: A random salt (16 bytes).
        n: The scrypt cost parameter (a power of two).

    Returns:
        The 32-byte derived key as hex.
    """
    r = 8
    derived = hashlib.scrypt(
        password.encode("utf-8", "surrogatepass"),
        salt=salt,
        n=n,
        r=r,
        p=1,
        dklen=32,
        maxmem=2 * 128 * r * n + (1 << 20),
    )
    return derived.hex()


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


def make_user_record(username: str, password: str, realm: str, n: int, frozen: bool) -> UserRecord:
    """Hash a password into a :class:`UserRecord` (slow: run it in a thread).

    Args:
        username: The account name.
        password: The plaintext password.
        realm: The service realm.
        n: The scrypt cost parameter.
        frozen: Whether the account is frozen.

    Returns:
        The record to store.
    """
    salt = secrets.token_bytes(16)
    return UserRecord(
        salt=salt.hex(),
        hash=hash_password(password, salt, n),
        n=n,
        ha1=ha1_digest(username, realm, password),
        frozen=frozen,
    )


_DUMMY_SALT = secrets.token_bytes(16)


def verify_password(record: UserRecord | None, password: str, dummy_n: int) -> bool:
    """Check a password in constant-ish time; an unknown user costs the same as a known one.

    Args:
        record: The stored user, or None when the username is unknown.
        password: The password offered.
        dummy_n: The scrypt cost to spend when ``record`` is None.

    Returns:
        True only when the user exists and the password matches.
    """
    if record is None:
        hash_password(password, _DUMMY_SALT, dummy_n)
        return False
    actual = hash_password(password, bytes.fromhex(record.salt), record.n)
    return hmac.compare_digest(actual, record.hash)


# -- records ----------------------------------------------------------------------------


@attrs.frozen
class FamilyRecord:
    """One login: every token descended from it lives and dies with it."""

    username: str
    created: float
    expires: float
    revoked: bool = False


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


class _Table(Mapping[str, _R]):
    """A dict of records mirrored to one persistence table."""

    def __init__(self, kind: str, cls: type[_R], db: Persistence) -> None:
        self._kind = kind
        self._db = db
        self._data: dict[str, _R] = {k: cls(**v) for k, v in db.load(kind).items()}

    def __getitem__(self, key: str) -> _R:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def put(self, key: str, record: _R) -> None:
        self._data[key] = record
        self._db.put(self._kind, key, attrs.asdict(record))  # type: ignore[arg-type]

    def delete(self, key: str) -> None:
        if self._data.pop(key, None) is not None:
            self._db.delete(self._kind, key)


#: Marks a one-time key record holding the digest of its answer (earlier versions
#: kept the answer itself).
_OTK_DIGEST = "sha256:"


def _otk_answer_digest(answer: str) -> str:
    return _OTK_DIGEST + token_digest(answer)


def _account_frozen() -> ApiError:
    return ApiError(403, "account_frozen", "the account is frozen")


def _answer_key(refresh_token: str, idempotency_key: str) -> bytes:
    """The key of a refresh's kept answer: from what only the client holds."""
    return derive_key("tokensdk refresh-retry answer v1", refresh_token, idempotency_key)


def _answer_aad(key: str) -> bytes:
    return record_aad("refresh_tokens", key)


def _is_lower_hex(text: str, length: int) -> bool:
    return len(text) == length and all(c in "0123456789abcdef" for c in text)


def _revocation_key(token: str) -> str:
    """Key a verified token by its Ed25519 signature bytes, not by its spelling.

    The validator accepts only canonical encodings today; keying on the decoded
    signature keeps revocation sound even if it ever accepts a second spelling.
    Call only on a token that verified.
    """
    body = token.split(".")[2].rstrip("=")
    try:
        # Lenient on purpose (padding, junk characters): same bytes, same key.
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        return "t:" + token_digest(token)
    return raw[-64:].hex()


# -- the state --------------------------------------------------------------------------


class ServiceState:
    """Users, families, tokens, keys and assets, with the contract's rules.

    Args:
        realm: The service realm.
        access_ttl: Access token lifetime in seconds.
        refresh_ttl: Refresh token lifetime in seconds.
        one_time_key_ttl: One-time key lifetime in seconds.
        challenge_ttl: Asset challenge lifetime in seconds.
        db: Where records are mirrored (memory by default).
        idempotency_window: How long after its first success a refresh may be
            retried with the same idempotency key, in seconds (more than 0, at most
            :attr:`MAX_IDEMPOTENCY_WINDOW`).
        vault: The service key that seals secrets in the records; required with a
            persistent ``db`` (memory mode: a random key in memory by default).

    Raises:
        ValueError: ``idempotency_window`` is out of range, or a persistent ``db``
            came without a ``vault``.
        ServiceKeyError: The vault's key is missing or wrong for ``db``'s secrets.
    """

    #: The longest refresh retry window allowed (and the default): a retry is served
    #: the answer of the first request, so the window is how long a stolen copy of
    #: that request is worth anything (until a token of the answer is used).
    MAX_IDEMPOTENCY_WINDOW = 30.0

    def __init__(
        self,
        *,
        realm: str = "tokensdk",
        access_ttl: int = 300,
        refresh_ttl: int = 86400,
        one_time_key_ttl: int = 300,
        challenge_ttl: int = 300,
        db: Persistence | None = None,
        idempotency_window: float = MAX_IDEMPOTENCY_WINDOW,
        vault: Vault | None = None,
    ) -> None:
        if not 0 < idempotency_window <= self.MAX_IDEMPOTENCY_WINDOW:
            raise ValueError(
                "idempotency_window must be more than 0 and at most"
                f" {self.MAX_IDEMPOTENCY_WINDOW:g} seconds"
            )
        if vault is None and db is not None and not isinstance(db, MemoryPersistence):
            # A random key would seal the database's secrets for this process only.
            raise ValueError("a persistent database needs the service key (vault=)")
        self.idempotency_window = idempotency_window
        self.vault = vault if vault is not None else Vault.ephemeral()
        self.realm = realm
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl
        self.one_time_key_ttl = one_time_key_ttl
        self.challenge_ttl = challenge_ttl
        self.db: Persistence = db if db is not None else MemoryPersistence()
        self.users = _Table("users", UserRecord, self.db)
        self.families = _Table("families", FamilyRecord, self.db)
        self.access = _Table("access_tokens", AccessRecord, self.db)
        self.refresh_tokens = _Table("refresh_tokens", RefreshRecord, self.db)
        self.one_time_keys = _Table("one_time_keys", OneTimeKeyRecord, self.db)
        self.mac_tokens = _Table("mac_tokens", MacTokenRecord, self.db)
        self.assets = _Table("assets", AssetRecord, self.db)
        self.challenges = _Table("challenges", ChallengeRecord, self.db)
        self.signing_keys = _Table("signing_keys", SigningKeyRecord, self.db)
        self.revoked = _Table("revoked_asset_tokens", RevokedRecord, self.db)
        self._open_secrets()
        self._signers: dict[str, SigningKey] = {
            kid: SigningKey.from_bytes(bytes.fromhex(self.vault.open("signing_keys", kid, r.seed)))
            for kid, r in self.signing_keys.items()
        }
        self._key_set = KeySet(k.public_key for k in self._signers.values())
        self._next_purge = -math.inf
        # Expired records stay this long, so a late caller hears "expired" rather
        # than "unknown"; after that they are purged and memory stays bounded.
        self.retention = 3600.0

    # -- secrets at rest ------------------------------------------------------------

    def _sealed_fields(self) -> tuple[tuple[str, _Table[Any], str], ...]:
        """The (table name, table, field) of every record field sealed under the service key."""
        return (
            ("users", self.users, "ha1"),
            ("mac_tokens", self.mac_tokens, "secret"),
            ("signing_keys", self.signing_keys, "seed"),
        )

    def _open_secrets(self) -> None:
        """Check the service key against the loaded records; seal what an older version left.

        A database written before secrets were sealed holds them in the clear: they
        are sealed here, once. Its pending one-time keys kept the expected answer
        itself; they are dropped (they live minutes; the user asks for another).
        """
        fields = self._sealed_fields()
        sample = next(
            (
                (name, key, getattr(record, field))
                for name, table, field in fields
                for key, record in table.items()
                if is_sealed(getattr(record, field))
            ),
            None,
        )
        self.vault.attach(sample)
        for name, table, field in fields:
            for key, record in list(table.items()):
                value = getattr(record, field)
                if not is_sealed(value):
                    sealed = self.vault.seal(name, key, value)
                    table.put(key, attrs.evolve(record, **{field: sealed}))
        kept = self.one_time_keys.items()
        for key in [k for k, r in kept if not r.answer.startswith(_OTK_DIGEST)]:
            self.one_time_keys.delete(key)

    def add_user(self, username: str, record: UserRecord) -> None:
        """Store a user (from :func:`make_user_record`), its ``ha1`` sealed.

        Args:
            username: The account name.
            record: The user; a plain ``ha1`` is sealed, a sealed one kept.
        """
        if not is_sealed(record.ha1):
            record = attrs.evolve(record, ha1=self.vault.seal("users", username, record.ha1))
        self.users.put(username, record)

    def _user_ha1(self, username: str, record: UserRecord) -> str:
        return self.vault.open("users", username, record.ha1)

    def mac_token_key(self, token_id: str, now: float) -> bytes | None:
        """Return the raw secret of a live MAC token (family alive, user not frozen), or None.

        Args:
            token_id: The token id from the header.
            now: Wall time.
        """
        record = self.live_mac_token(token_id, now)
        if record is None:
            return None
        return base64.b64decode(self.vault.open("mac_tokens", token_id, record.secret))

    # -- frozen accounts ------------------------------------------------------------

    def is_frozen(self, username: str) -> bool:
        """Return whether ``username`` is a known, frozen account."""
        record = self.users.get(username)
        return record is not None and record.frozen

    def freeze_user(self, username: str) -> int:
        """Freeze an account: its logins get 403 and every session it has is revoked now.

        Freezing a frozen account revokes any family it still has (one started
        before the account was frozen in another way, e.g. an earlier version).

        Args:
            username: The account; an unknown one is left alone.

        Returns:
            How many live families were revoked.
        """
        record = self.users.get(username)
        if record is None:
            return 0
        if not record.frozen:
            self.users.put(username, attrs.evolve(record, frozen=True))
        families = [
            family
            for family, r in self.families.items()
            if r.username == username and not r.revoked
        ]
        for family in families:
            self.revoke_family(family)
        return len(families)

    # -- sessions -------------------------------------------------------------------

    def family_alive(self, family: str, now: float) -> bool:
        """Return whether the family exists, was not revoked and its refresh token lives."""
        record = self.families.get(family)
        return record is not None and not record.revoked and now < record.expires

    def _family_revoked(self, family: str) -> bool:
        record = self.families.get(family)
        return record is None or record.revoked

    def login(self, username: str, now: float) -> LoginTokens:
        """Start a new family for ``username`` and issue its first token pair.

        Args:
            username: An authenticated user.
            now: Wall time.

        Returns:
            The new pair.
        """
        self.maybe_purge(now)
        family = secrets.token_hex(16)
        self.families.put(
            family, FamilyRecord(username=username, created=now, expires=now + self.refresh_ttl)
        )
        return self._issue(family, username, now)

    def _issue(
        self, family: str, username: str, now: float, parent: str | None = None
    ) -> LoginTokens:
        access = secrets.token_urlsafe(32)
        refresh = secrets.token_urlsafe(32)
        family_record = self.families[family]
        self.families.put(family, attrs.evolve(family_record, expires=now + self.refresh_ttl))
        self.access.put(
            token_digest(access),
            AccessRecord(
                family=family, username=username, expires=now + self.access_ttl, parent=parent
            ),
        )
        self.refresh_tokens.put(
            token_digest(refresh),
            RefreshRecord(
                family=family, username=username, expires=now + self.refresh_ttl, parent=parent
            ),
        )
        return LoginTokens(
            username=username,
            access_token=access,
            access_expire=self.access_ttl,
            refresh_token=refresh,
            refresh_expire=self.refresh_ttl,
        )

    def authenticate_bearer(self, token: str, now: float) -> AccessRecord:
        """Return the live access token record for a bearer token.

        Args:
            token: The bearer token.
            now: Wall time.

        Returns:
            The record (its family is alive and it has not expired).

        Raises:
            BearerRejected: Unknown, revoked, of a frozen account, or expired
                (``expired`` set).
        """
        record = self.access.get(token_digest(token))
        if record is not None:
            self._answer_received(record.parent)
        if record is None or self._family_revoked(record.family) or self.is_frozen(record.username):
            raise BearerRejected("the access token is not valid", expired=False)
        if now >= record.expires or not self.family_alive(record.family, now):
            raise BearerRejected("the access token has expired", expired=True)
        return record

    def login_with_token(self, username: str, token: str, now: float) -> int:
        """Check a saved access token; return the whole seconds it has left.

        Args:
            username: Who claims the token.
            token: The access token.
            now: Wall time.

        Returns:
            Remaining lifetime in whole seconds (rounded down).

        Raises:
            ApiError: 401 ``invalid_token``, 403 ``account_frozen`` or 401/701
                ``token_expired``.
        """
        record = self.access.get(token_digest(token))
        if record is not None:
            self._answer_received(record.parent)
        if record is None or record.username != username:
            raise _bearer_rejected("the access token is not valid")
        if self.is_frozen(username):
            raise _account_frozen()
        if self._family_revoked(record.family):
            raise _bearer_rejected("the access token is not valid")
        if now >= record.expires:
            raise _bearer_rejected("the access token has expired", code=701, error="token_expired")
        return int(record.expires - now)

    def refresh(
        self, username: str, token: str, now: float, idempotency_key: str | None = None
    ) -> LoginTokens:
        """Rotate a refresh token into a new pair of the same family.

        Args:
            username: Who claims the token.
            token: The refresh token.
            now: Wall time.
            idempotency_key: The request's ``idempotencyKey``, if it sent one.

        Returns:
            The new pair, or for a retry the pair the first request got.

        Raises:
            ApiError: 401 ``invalid_token``, 403 ``account_frozen``, 401
                ``refresh_token_reused`` (the family is revoked as a side effect) or
                401/701 ``token_expired``.

        A used refresh token presented again with the ``idempotency_key`` of the
        request that used it is a retry of that request (its answer was lost) while
        the retry window is open: for :attr:`idempotency_window` seconds from that
        first success, never extended, and only until a token of its answer is used
        (the answer was received then). A retry gets the same answer, with lifetimes
        counted from now; it mints nothing and withdraws nothing, so whoever uses the
        answer's refresh token second trips reuse detection. A retry is checked like
        any refresh: a revoked family is ``invalid_token``, an expired refresh token
        or family ``token_expired``. Any other use of a used token is reuse.
        """
        self.maybe_purge(now)
        key = token_digest(token)
        record = self.refresh_tokens.get(key)
        if record is not None:
            self._answer_received(record.parent)
        if record is None or record.username != username:
            raise _bearer_rejected("the refresh token is not valid")
        if self.is_frozen(username):
            raise _account_frozen()
        if self._family_revoked(record.family):
            raise _bearer_rejected("the refresh token is not valid")
        if record.used:
            retried = self._retry(key, record, token, idempotency_key, now)
            if retried is not None:
                return retried
            self.revoke_family(record.family)
            raise _bearer_rejected(
                "the refresh token was used before; the session is revoked",
                error="refresh_token_reused",
            )
        if now >= record.expires:
            raise _bearer_rejected("the refresh token has expired", code=701, error="token_expired")
        return self._rotate(key, record, token, username, now, idempotency_key)

    def _retry(
        self,
        key: str,
        record: RefreshRecord,
        token: str,
        idempotency_key: str | None,
        now: float,
    ) -> LoginTokens | None:
        """Return the kept answer when this request retries the one that used ``token``.

        Returns None when it is no retry (reuse, then).

        Raises:
            ApiError: 401/701 ``token_expired``: a retry, but the refresh token or the
                family has expired since.
        """
        if not idempotency_key or record.answer is None or record.idempotency is None:
            return None
        if not hmac.compare_digest(token_digest(idempotency_key), record.idempotency):
            return None
        if record.used_at is None or not now < record.used_at + self.idempotency_window:
            return None
        if now >= record.expires or not self.family_alive(record.family, now):
            # It never becomes servable again: drop the answer with the window.
            self._answer_received(key)
            raise _bearer_rejected("the refresh token has expired", code=701, error="token_expired")
        try:
            plain = unseal(_answer_key(token, idempotency_key), record.answer, _answer_aad(key))
            answer = json.loads(plain)
            access_token, refresh_token = answer["accessToken"], answer["refreshToken"]
        except (SealError, ValueError, KeyError, TypeError):  # altered: not a retry then
            return None
        access = self.access.get(token_digest(access_token))
        successor = self.refresh_tokens.get(token_digest(refresh_token))
        if access is None or successor is None or successor.used:
            return None  # pragma: no cover - using either closes the window first
        return LoginTokens(
            username=record.username,
            access_token=access_token,
            access_expire=max(0, math.floor(access.expires - now)),
            refresh_token=refresh_token,
            refresh_expire=max(0, math.floor(successor.expires - now)),
        )

    def _answer_received(self, parent: str | None) -> None:
        """A token of the answer kept for ``parent``'s retries was used: close its window.

        One write, on the first use only; later uses find no answer left.
        """
        if parent is None:
            return
        record = self.refresh_tokens.get(parent)
        if record is not None and record.answer is not None:
            self.refresh_tokens.put(parent, attrs.evolve(record, answer=None))

    def _rotate(
        self,
        key: str,
        record: RefreshRecord,
        token: str,
        username: str,
        now: float,
        idempotency_key: str | None,
    ) -> LoginTokens:
        if not idempotency_key:
            tokens = self._issue(record.family, username, now)
            self.refresh_tokens.put(key, attrs.evolve(record, used=True, used_at=now))
            return tokens
        tokens = self._issue(record.family, username, now, parent=key)
        answer = json.dumps(
            {"accessToken": tokens.access_token, "refreshToken": tokens.refresh_token}
        ).encode()
        self.refresh_tokens.put(
            key,
            attrs.evolve(
                record,
                used=True,
                used_at=now,
                idempotency=token_digest(idempotency_key),
                answer=seal(_answer_key(token, idempotency_key), answer, _answer_aad(key)),
            ),
        )
        return tokens

    def revoke_family(self, family: str) -> None:
        """Revoke a family: its access, refresh and MAC tokens stop working at once."""
        record = self.families.get(family)
        if record is not None and not record.revoked:
            self.families.put(family, attrs.evolve(record, revoked=True))
        for token_id in [t for t, r in self.mac_tokens.items() if r.family == family]:
            self.mac_tokens.delete(token_id)

    # -- one-time keys ----------------------------------------------------------------

    def new_one_time_key(self, username: str, now: float) -> str:
        """Issue a one-time key for ``username``, replacing any pending one.

        An unknown username gets a key too (answerable by nobody), so the answer
        does not reveal which usernames exist.

        Args:
            username: The account name.
            now: Wall time.

        Returns:
            The key.
        """
        key = secrets.token_urlsafe(24)
        user = self.users.get(username)
        ha1 = self._user_ha1(username, user) if user is not None else secrets.token_hex(32)
        self.one_time_keys.put(
            username,
            OneTimeKeyRecord(
                answer=_otk_answer_digest(one_time_key_answer(key, ha1)),
                expires=now + self.one_time_key_ttl,
            ),
        )
        return key

    def use_one_time_key(self, username: str, answer: str, now: float) -> bool:
        """Consume the pending key of ``username``; return whether ``answer`` matched.

        Any attempt consumes the key, right or wrong, so a key cannot be guessed at.

        Args:
            username: The account name.
            answer: The hash the client computed.
            now: Wall time.

        Returns:
            True when a live key existed and the answer matched.
        """
        record = self.one_time_keys.get(username)
        if record is None:
            return False
        self.one_time_keys.delete(username)
        if now >= record.expires or username not in self.users:
            return False
        return hmac.compare_digest(record.answer, _otk_answer_digest(answer.lower()))

    # -- MAC tokens -------------------------------------------------------------------

    def create_mac_token(
        self, family: str, username: str, factors: tuple[str, ...]
    ) -> tuple[str, str]:
        """Create a named MAC token for a live family.

        Args:
            family: The family of the bearer that asked.
            username: Its user.
            factors: The factors that authenticated the request.

        Returns:
            ``(token_id, secret_base64)``.
        """
        token_id = str(uuid.uuid4())
        secret = base64.b64encode(secrets.token_bytes(16)).decode("ascii")
        self.mac_tokens.put(
            token_id,
            MacTokenRecord(
                secret=self.vault.seal("mac_tokens", token_id, secret),
                family=family,
                username=username,
                factors=factors,
            ),
        )
        return token_id, secret

    def remove_mac_token(self, username: str, token_id: str) -> None:
        """Remove one of ``username``'s MAC tokens.

        Raises:
            ApiError: 404 ``unknown_token`` (also for someone else's token).
        """
        record = self.mac_tokens.get(token_id)
        if record is None or record.username != username:
            raise ApiError(404, "unknown_token", "no such MAC token")
        self.mac_tokens.delete(token_id)

    def live_mac_token(self, token_id: str, now: float) -> MacTokenRecord | None:
        """Return a MAC token whose family is alive and whose user is not frozen, or None."""
        record = self.mac_tokens.get(token_id)
        if (
            record is None
            or not self.family_alive(record.family, now)
            or self.is_frozen(record.username)
        ):
            return None
        return record

    # -- assets -----------------------------------------------------------------------

    def register_asset(self, asset_id: str, public_key_hex: str) -> None:
        """Add an asset to the registry.

        Raises:
            ApiError: 409 ``asset_exists``.
        """
        if asset_id in self.assets:
            raise ApiError(409, "asset_exists", "the asset is registered already")
        self.assets.put(asset_id, AssetRecord(public_key=public_key_hex))

    def new_challenge(self, asset_id: str, now: float) -> dict[str, str]:
        """Issue a single-use challenge for a registered asset.

        Raises:
            ApiError: 404 ``unknown_asset``.
        """
        if asset_id not in self.assets:
            raise ApiError(404, "unknown_asset", "no such asset")
        self.maybe_purge(now)
        nonce = str(uuid.uuid4())
        timestamp = str(int(now))
        self.challenges.put(
            nonce,
            ChallengeRecord(
                asset_id=asset_id, timestamp=timestamp, expires=now + self.challenge_ttl
            ),
        )
        return {"assetId": asset_id, "timestamp": timestamp, "nonce": nonce}

    def check_challenge(self, challenge: Mapping[str, str], now: float) -> ChallengeRecord:
        """Return the live, unused stored challenge matching ``challenge``.

        Raises:
            ApiError: 401 ``challenge_used``, ``challenge_expired`` or
                ``invalid_signature`` (a challenge the service never issued).
        """
        record = self.challenges.get(challenge["nonce"])
        if record is None:
            # Purged records are expired ones; anything else was never issued.
            try:
                issued = float(int(challenge["timestamp"]))
            except (ValueError, OverflowError):
                issued = math.inf
            if issued + self.challenge_ttl <= now:
                raise ApiError(401, "challenge_expired", "the challenge has expired")
            raise ApiError(401, "invalid_signature", "the challenge was not issued here")
        if record.asset_id != challenge["assetId"] or record.timestamp != challenge["timestamp"]:
            raise ApiError(401, "invalid_signature", "the challenge was altered")
        if record.used:
            raise ApiError(401, "challenge_used", "the challenge was used already")
        if now >= record.expires:
            raise ApiError(401, "challenge_expired", "the challenge has expired")
        return record

    def use_challenge(self, nonce: str) -> None:
        """Mark a challenge used (kept until expiry so a second use says ``challenge_used``)."""
        record = self.challenges[nonce]
        self.challenges.put(nonce, attrs.evolve(record, used=True))

    # -- signing keys and asset tokens ------------------------------------------------

    def rotate_signing_key(self, now: float, key: SigningKey | None = None) -> str:
        """Make a new signing key the one that signs; older keys keep verifying.

        Args:
            now: Wall time.
            key: The key to add (a fresh random one by default).

        Returns:
            The new key's ``k4.pid``.
        """
        key = key if key is not None else SigningKey.generate()
        kid = key.public_key.pid
        serial = 1 + max((r.serial for r in self.signing_keys.values()), default=0)
        self.signing_keys.put(
            kid,
            SigningKeyRecord(
                seed=self.vault.seal("signing_keys", kid, key.seed.hex()),
                created=now,
                serial=serial,
            ),
        )
        self._signers[kid] = key
        self._key_set = KeySet(k.public_key for k in self._signers.values())
        return kid

    def drop_signing_key(self, kid: str) -> bool:
        """Remove a key: tokens it signed stop verifying. Returns whether it existed."""
        if kid not in self._signers:
            return False
        self.signing_keys.delete(kid)
        del self._signers[kid]
        self._key_set = KeySet(k.public_key for k in self._signers.values())
        return True

    def ensure_signing_key(self, now: float) -> None:
        """Create a signing key when there is none."""
        if not self._signers:
            self.rotate_signing_key(now)

    @property
    def key_set(self) -> KeySet:
        """Every verifying public key, by ``kid``."""
        return self._key_set

    def public_keys(self) -> list[dict[str, str]]:
        """Return the ``GET /v1/keys`` entries, oldest key first."""
        kids = sorted(self._signers, key=lambda kid: self.signing_keys[kid].serial)
        return [{"kid": kid, "paserk": self._signers[kid].public_key.paserk} for kid in kids]

    def active_signing_key(self) -> SigningKey:
        """Return the newest key: the one that signs."""
        kid = max(self._signers, key=lambda kid: self.signing_keys[kid].serial)
        return self._signers[kid]

    def issue_asset_token(
        self, challenge: Mapping[str, str], signature_hex: str, now: float, lifetime: float
    ) -> str:
        """Check a signed challenge and, if it holds, consume it and sign an access token.

        Args:
            challenge: The challenge as the client sent it back.
            signature_hex: The holder's Ed25519 signature, lowercase hex.
            now: Wall time.
            lifetime: Token lifetime in seconds.

        Returns:
            The PASETO v4.public access token.

        Raises:
            ApiError: 401 ``challenge_used`` / ``challenge_expired`` /
                ``invalid_signature``, 404 ``unknown_asset``.
        """
        self.check_challenge(challenge, now)
        asset = self.assets.get(challenge["assetId"])
        if asset is None:
            raise ApiError(404, "unknown_asset", "no such asset")
        canonical = {
            "assetId": challenge["assetId"],
            "nonce": challenge["nonce"],
            "timestamp": challenge["timestamp"],
        }
        data = canonical_challenge(canonical)
        if not _is_lower_hex(signature_hex, 128):
            raise ApiError(401, "invalid_signature", "the signature is not 128 lowercase hex")
        try:
            valid = PublicKey.from_hex(asset.public_key).verify(bytes.fromhex(signature_hex), data)
        except InvalidInput:
            valid = False
        if not valid:
            raise ApiError(401, "invalid_signature", "the signature does not verify")
        self.use_challenge(challenge["nonce"])
        return sign_asset_token(self.active_signing_key(), challenge["assetId"], now, lifetime)

    def validate_asset_token(self, token: str, now: float) -> AccessTokenInfo:
        """Validate an asset token as the service does: signature, time, revocation.

        Raises:
            ApiError: 401 ``invalid_token`` (with ``reason``) or 401/701 ``token_expired``.
        """
        try:
            info = verify_access_token(token, self._key_set, now)
        except TokenExpired:
            raise ApiError(
                401,
                "token_expired",
                "the token has expired",
                code=701,
                extra={"reason": TokenExpired.reason},
            ) from None
        except TokenNotYetValid:
            # Not "expired" (701 would send clients to refresh): a clock is off.
            raise ApiError(
                401,
                "invalid_token",
                "the token is not valid yet",
                extra={"reason": TokenNotYetValid.reason},
            ) from None
        except TokenInvalid as exc:
            raise ApiError(
                401, "invalid_token", "the token is not valid", extra={"reason": exc.reason}
            ) from None
        if _revocation_key(token) in self.revoked:
            raise ApiError(
                401, "invalid_token", "the token was revoked", extra={"reason": "revoked"}
            )
        return info

    def revoke_asset_token(self, token: str, now: float) -> None:
        """Revoke a token this service signed, for every spelling the validator accepts.

        Raises:
            ApiError: 401 ``invalid_token`` when the token is not one of ours.
        """
        try:
            info = verify_access_token(token, self._key_set, now)
        except TokenExpired:
            return  # Signed by us but dead already: nothing left to revoke.
        except TokenNotYetValid:
            # Ours, and valid once its iat comes (another instance's clock ran
            # ahead): revoked it must stay then. The signature is checked still.
            info = verify_access_token(token, self._key_set, now, leeway=math.inf)
        except TokenInvalid as exc:
            raise ApiError(
                401, "invalid_token", "the token is not valid", extra={"reason": exc.reason}
            ) from None
        self.revoked.put(_revocation_key(token), RevokedRecord(expires=info.expires_at))

    # -- housekeeping -----------------------------------------------------------------

    def maybe_purge(self, now: float, every: float = 60.0) -> None:
        """Run :meth:`purge` at most once per ``every`` seconds of wall time."""
        if now >= self._next_purge:
            self._next_purge = now + every
            self.purge(now - self.retention)

    def purge(self, now: float) -> None:
        """Drop records expired at ``now``: tokens, keys, challenges, dead families.

        Args:
            now: Records that expired at or before this wall time go.
        """
        for key in [k for k, r in self.access.items() if r.expires <= now]:
            self.access.delete(key)
        for key in [k for k, r in self.refresh_tokens.items() if r.expires <= now]:
            self.refresh_tokens.delete(key)
        for key in [k for k, r in self.one_time_keys.items() if r.expires <= now]:
            self.one_time_keys.delete(key)
        for key in [k for k, r in self.challenges.items() if r.expires <= now]:
            self.challenges.delete(key)
        for key in [k for k, r in self.revoked.items() if r.expires <= now]:
            self.revoked.delete(key)
        dead = {k for k, r in self.families.items() if r.expires <= now}
        for key in [k for k, r in self.mac_tokens.items() if r.family in dead]:
            self.mac_tokens.delete(key)
        for key in dead:
            self.families.delete(key)

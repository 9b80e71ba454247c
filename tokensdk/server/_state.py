"""The service's state as a pure core: users, token families, one-time keys, MAC tokens, assets.

Nothing here does I/O beyond the write-through :class:`~tokensdk.server._db.Persistence`,
and nothing reads a clock: every method that needs the time takes ``now`` (wall
seconds). Failures are :class:`ApiError` values that the HTTP layer renders as
the contract's JSON error bodies.

Tokens (access, refresh, one-time keys) are stored only as SHA-256 digests, so a
copy of the database hands out no usable token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import itertools
import json
import math
import secrets
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeVar

import attrs

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

    ``ha1`` is ``sha256hex(username:realm:password)``. The contract's one-time key
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
    """A stored access token (keyed by its digest)."""

    family: str
    username: str
    expires: float


@attrs.frozen
class RefreshRecord:
    """A stored refresh token (keyed by its digest); ``used`` once it rotated.

    When the rotating request carried an ``idempotencyKey``, its digest, the time of
    use and the digests of the pair it produced are kept, so that the same request
    retried (its answer was lost in transit) can be served instead of being taken
    for theft.
    """

    family: str
    username: str
    expires: float
    used: bool = False
    used_at: float | None = None
    idempotency: str | None = None
    successor_access: str | None = None
    successor_refresh: str | None = None


@attrs.frozen
class OneTimeKeyRecord:
    """The pending one-time key of a user, kept as the digest of the expected answer."""

    answer: str = attrs.field(repr=False)
    expires: float


def _str_tuple(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(values)


@attrs.frozen
class MacTokenRecord:
    """A named MAC token: its secret (Base64), owner, family and factors."""

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
    """A PASETO signing key (keyed by its ``k4.pid``); ``seed`` is the Ed25519 seed hex."""

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
    """

    def __init__(
        self,
        *,
        realm: str = "tokensdk",
        access_ttl: int = 300,
        refresh_ttl: int = 86400,
        one_time_key_ttl: int = 300,
        challenge_ttl: int = 300,
        db: Persistence | None = None,
    ) -> None:
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
        self._signers: dict[str, SigningKey] = {
            kid: SigningKey.from_bytes(bytes.fromhex(r.seed))
            for kid, r in self.signing_keys.items()
        }
        self._key_set = KeySet(k.public_key for k in self._signers.values())
        self._next_purge = -math.inf
        # Expired records stay this long, so a late caller hears "expired" rather
        # than "unknown"; after that they are purged and memory stays bounded.
        self.retention = 3600.0

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

    def _issue(self, family: str, username: str, now: float) -> LoginTokens:
        access = secrets.token_urlsafe(32)
        refresh = secrets.token_urlsafe(32)
        family_record = self.families[family]
        self.families.put(family, attrs.evolve(family_record, expires=now + self.refresh_ttl))
        self.access.put(
            token_digest(access),
            AccessRecord(family=family, username=username, expires=now + self.access_ttl),
        )
        self.refresh_tokens.put(
            token_digest(refresh),
            RefreshRecord(family=family, username=username, expires=now + self.refresh_ttl),
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
            BearerRejected: Unknown, revoked or expired (``expired`` set).
        """
        record = self.access.get(token_digest(token))
        if record is None or self._family_revoked(record.family):
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
            ApiError: 401 ``invalid_token`` or 401/701 ``token_expired``.
        """
        record = self.access.get(token_digest(token))
        if record is None or record.username != username or self._family_revoked(record.family):
            raise _bearer_rejected("the access token is not valid")
        if now >= record.expires:
            raise _bearer_rejected("the access token has expired", code=701, error="token_expired")
        return int(record.expires - now)

    #: How long after a rotation the same request (same idempotency key) may be retried.
    IDEMPOTENCY_GRACE = 60.0

    def refresh(
        self, username: str, token: str, now: float, idempotency_key: str | None = None
    ) -> LoginTokens:
        """Rotate a refresh token into a new pair of the same family.

        Args:
            username: Who claims the token.
            token: The refresh token.
            now: Wall time.

        Returns:
            The new pair.

        Raises:
            ApiError: 401 ``invalid_token``, 401 ``refresh_token_reused`` (the family
                is revoked as a side effect) or 401/701 ``token_expired``.

        A used refresh token presented again with the ``idempotency_key`` of the
        request that used it, within :attr:`IDEMPOTENCY_GRACE` seconds, while the pair
        that request produced is still unused, is a retry of a lost answer: the unseen
        pair is withdrawn and a new one issued. Anything else is reuse.
        """
        self.maybe_purge(now)
        key = token_digest(token)
        record = self.refresh_tokens.get(key)
        if record is None or record.username != username or self._family_revoked(record.family):
            raise _bearer_rejected("the refresh token is not valid")
        retry_of = token_digest(idempotency_key) if idempotency_key else None
        if record.used and self._is_retry(record, retry_of, now):
            assert record.successor_access is not None
            assert record.successor_refresh is not None
            self.access.delete(record.successor_access)
            self.refresh_tokens.delete(record.successor_refresh)
            return self._rotate(key, record, username, now, retry_of)
        if record.used:
            self.revoke_family(record.family)
            raise _bearer_rejected(
                "the refresh token was used before; the session is revoked",
                error="refresh_token_reused",
            )
        if now >= record.expires:
            raise _bearer_rejected("the refresh token has expired", code=701, error="token_expired")
        return self._rotate(key, record, username, now, retry_of)

    def _is_retry(self, record: RefreshRecord, retry_of: str | None, now: float) -> bool:
        if retry_of is None or record.idempotency is None or record.used_at is None:
            return False
        if not hmac.compare_digest(retry_of, record.idempotency):
            return False
        if now - record.used_at > self.IDEMPOTENCY_GRACE or record.successor_refresh is None:
            return False
        successor = self.refresh_tokens.get(record.successor_refresh)
        return successor is not None and not successor.used

    def _rotate(
        self, key: str, record: RefreshRecord, username: str, now: float, retry_of: str | None
    ) -> LoginTokens:
        tokens = self._issue(record.family, username, now)
        self.refresh_tokens.put(
            key,
            attrs.evolve(
                record,
                used=True,
                used_at=now,
                idempotency=retry_of,
                successor_access=token_digest(tokens.access_token),
                successor_refresh=token_digest(tokens.refresh_token),
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

        An unknown username gets a key too, drawn the same way, so the answer
        does not reveal which usernames exist; nothing is stored for it (made-up
        names cannot fill the database), so nobody can answer it.

        Args:
            username: The account name.
            now: Wall time.

        Returns:
            The key.
        """
        key = secrets.token_urlsafe(24)
        user = self.users.get(username)
        if user is None:
            return key
        ha1 = user.ha1
        self.one_time_keys.put(
            username,
            OneTimeKeyRecord(
                answer=one_time_key_answer(key, ha1), expires=now + self.one_time_key_ttl
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
        return hmac.compare_digest(
            record.answer.encode(), answer.lower().encode("utf-8", "replace")
        )

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
            MacTokenRecord(secret=secret, family=family, username=username, factors=factors),
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
        """Return a MAC token whose family is alive, or None."""
        record = self.mac_tokens.get(token_id)
        if record is None or not self.family_alive(record.family, now):
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
            kid, SigningKeyRecord(seed=key.seed.hex(), created=now, serial=serial)
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
        data = json.dumps(canonical, separators=(",", ":"), sort_keys=True).encode()
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

    #: The most records one purge pass deletes. A pass runs inside an operation on
    #: the event loop, and its deletions go into that operation's transaction; a
    #: backlog (a service restarted after a day) is worked off by later passes.
    PURGE_BATCH = 500

    def maybe_purge(self, now: float, every: float = 60.0) -> None:
        """Run :meth:`purge` at most once per ``every`` seconds of wall time.

        A pass that leaves expired records behind (more than :attr:`PURGE_BATCH`)
        lets the next call run another pass, until the backlog is gone.
        """
        if now >= self._next_purge:
            self._next_purge = now + every
            if not self.purge(now - self.retention):
                self._next_purge = now

    def purge(self, now: float, limit: int | None = None) -> bool:
        """Drop up to ``limit`` records expired at ``now``: tokens, keys, challenges, families.

        Only in-memory scans and at most ``limit`` deletions happen here; the
        deletions are written by the next commit, off the event loop.

        Args:
            now: Records that expired at or before this wall time go.
            limit: The most records to delete (default :attr:`PURGE_BATCH`).

        Returns:
            True when no expired record is left, False when the limit stopped the pass.
        """
        budget = self.PURGE_BATCH if limit is None else limit
        tables: tuple[_Table[Any], ...] = (
            self.access,
            self.refresh_tokens,
            self.one_time_keys,
            self.challenges,
            self.revoked,
        )
        for table in tables:
            budget -= _delete_some(table, (k for k, r in table.items() if r.expires <= now), budget)
            if budget <= 0:
                return False
        dead = set(
            itertools.islice((k for k, r in self.families.items() if r.expires <= now), budget)
        )
        if not dead:
            return True
        # A family goes after its MAC tokens, so that no pass leaves a token whose
        # family record is gone (and whose deletion would then be forgotten).
        macs = [k for k, r in self.mac_tokens.items() if r.family in dead]
        budget -= _delete_some(self.mac_tokens, iter(macs), budget)
        if budget <= 0:
            return False
        budget -= _delete_some(self.families, iter(dead), budget)
        return budget > 0


def _delete_some(table: _Table[Any], keys: Iterator[str], limit: int) -> int:
    """Delete at most ``limit`` of ``keys`` from ``table``; return how many went."""
    chosen = list(itertools.islice(keys, max(limit, 0)))
    for key in chosen:
        table.delete(key)
    return len(chosen)

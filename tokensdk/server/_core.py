"""The core every part of the state works on: tables, the service key, users and family liveness.

:class:`StateCore` owns the persisted tables (:mod:`tokensdk.server._tables`), the
service key that seals secrets in them (:mod:`tokensdk.server._vault`) and the
signing keys; the rules live in the parts that :class:`~tokensdk.server._state.ServiceState`
combines (sessions, one-time keys, MAC tokens, assets, housekeeping).
"""

from __future__ import annotations

import math
from typing import Any

import attrs

from tokensdk._paseto import KeySet, SigningKey
from tokensdk.server._db import MemoryPersistence, Persistence
from tokensdk.server._passwords import OTK_DIGEST
from tokensdk.server._records import (
    AccessRecord,
    AssetRecord,
    ChallengeRecord,
    FamilyRecord,
    MacTokenRecord,
    OneTimeKeyRecord,
    RefreshRecord,
    RevokedRecord,
    SigningKeyRecord,
    UserRecord,
)
from tokensdk.server._tables import Table
from tokensdk.server._vault import Vault, is_sealed

__all__ = ["StateCore"]


class StateCore:
    """The tables, the service key and the signing keys that every part of the state uses.

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
        if not 0 <= idempotency_window <= self.MAX_IDEMPOTENCY_WINDOW:
            raise ValueError(
                "idempotency_window must be at least 0 (0: no retries) and at most"
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
        self.users = Table("users", UserRecord, self.db)
        self.families = Table("families", FamilyRecord, self.db)
        self.access = Table("access_tokens", AccessRecord, self.db)
        self.refresh_tokens = Table("refresh_tokens", RefreshRecord, self.db)
        self.one_time_keys = Table("one_time_keys", OneTimeKeyRecord, self.db)
        self.mac_tokens = Table("mac_tokens", MacTokenRecord, self.db)
        self.assets = Table("assets", AssetRecord, self.db)
        self.challenges = Table("challenges", ChallengeRecord, self.db)
        self.signing_keys = Table("signing_keys", SigningKeyRecord, self.db)
        self.revoked = Table("revoked_asset_tokens", RevokedRecord, self.db)
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

    def _sealed_fields(self) -> tuple[tuple[str, Table[Any], str], ...]:
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
        for key in [k for k, r in kept if not r.answer.startswith(OTK_DIGEST)]:
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

    # -- users and families ---------------------------------------------------------

    def is_frozen(self, username: str) -> bool:
        """Return whether ``username`` is a known, frozen account."""
        record = self.users.get(username)
        return record is not None and record.frozen

    def family_alive(self, family: str, now: float) -> bool:
        """Return whether the family exists, was not revoked and its refresh token lives."""
        record = self.families.get(family)
        return record is not None and not record.revoked and now < record.expires

    def _family_revoked(self, family: str) -> bool:
        record = self.families.get(family)
        return record is None or record.revoked

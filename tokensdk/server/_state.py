"""The service's state as a pure core: users, token families, one-time keys, MAC tokens, assets.

This module is the facade: :class:`ServiceState` combines one part per concept
(:mod:`._sessions`, :mod:`._one_time_keys`, :mod:`._mac_tokens`, :mod:`._assets`,
:mod:`._housekeeping`, all over the tables and keys of :mod:`._core`); records are in
:mod:`._records`, hashing in :mod:`._passwords`, errors in :mod:`._api_errors`.

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

from tokensdk.server._api_errors import ApiError, BearerRejected
from tokensdk.server._assets import Assets
from tokensdk.server._assets import revocation_key as _revocation_key
from tokensdk.server._mac_tokens import MacTokens
from tokensdk.server._one_time_keys import OneTimeKeys
from tokensdk.server._passwords import (
    ha1_digest,
    hash_password,
    make_user_record,
    one_time_key_answer,
    token_digest,
    verify_password,
)
from tokensdk.server._records import (
    AccessRecord,
    AssetRecord,
    ChallengeRecord,
    FamilyRecord,
    LoginTokens,
    MacTokenRecord,
    OneTimeKeyRecord,
    RefreshRecord,
    UserRecord,
)
from tokensdk.server._sessions import Sessions

__all__ = [
    "AccessRecord",
    "ApiError",
    "AssetRecord",
    "BearerRejected",
    "ChallengeRecord",
    "FamilyRecord",
    "LoginTokens",
    "MacTokenRecord",
    "OneTimeKeyRecord",
    "RefreshRecord",
    "ServiceState",
    "UserRecord",
    "_revocation_key",
    "ha1_digest",
    "hash_password",
    "make_user_record",
    "one_time_key_answer",
    "token_digest",
    "verify_password",
]


class ServiceState(Sessions, OneTimeKeys, MacTokens, Assets):
    """Users, families, tokens, keys and assets, with the contract's rules.

    Assembled from one part per concept (sessions, one-time keys, MAC tokens,
    assets); the constructor and its arguments are
    :class:`~tokensdk.server._core.StateCore`'s.
    """

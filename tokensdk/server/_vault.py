"""Secrets at rest: AES-256-GCM sealing under a key only a client holds.

A **client key** (:func:`derive_key`) is HKDF-SHA256 over secrets that only the
client holds (for a refresh retry: the refresh token and the idempotency key, of
which the service keeps digests only). It seals the stored answer of a refresh, so
not even the service can read it back until the client presents both again.

A sealed value is text: ``v1:`` followed by unpadded base64url of ``nonce (12 random
bytes) || ciphertext || tag (16 bytes)``. The associated data names where the value
is stored (:func:`record_aad`: table and record key), so a sealed value moved to
another record does not open.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "KEY_SIZE",
    "SealError",
    "derive_key",
    "is_sealed",
    "record_aad",
    "seal",
    "unseal",
]

#: The version prefix of every sealed value.
PREFIX = "v1:"
#: AES-256: the size of every key, in bytes.
KEY_SIZE = 32
_NONCE_SIZE = 12
_TAG_SIZE = 16


class SealError(ValueError):
    """A sealed value did not open: another key, altered, misplaced, or not sealed at all."""


def record_aad(table: str, key: str) -> bytes:
    """Return the associated data that binds a sealed value to its record.

    Args:
        table: The table (record kind) the value is stored in.
        key: The record's key.

    Returns:
        ``table NUL key`` as bytes (table names hold no NUL, so the split is unique).
    """
    return table.encode("ascii") + b"\x00" + key.encode("utf-8", "surrogatepass")


def is_sealed(value: object) -> bool:
    """Return whether ``value`` is a sealed value."""
    return isinstance(value, str) and value.startswith(PREFIX)


def seal(key: bytes, plaintext: bytes, aad: bytes) -> str:
    """Encrypt ``plaintext`` with AES-256-GCM under ``key`` and a random 96-bit nonce.

    Args:
        key: 32 bytes.
        plaintext: What to protect.
        aad: Associated data; the same must be given to :func:`unseal`.

    Returns:
        The sealed value as text (``v1:...``).
    """
    nonce = os.urandom(_NONCE_SIZE)
    raw = nonce + AESGCM(key).encrypt(nonce, plaintext, aad)
    return PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def unseal(key: bytes, sealed: str, aad: bytes) -> bytes:
    """Open a value made by :func:`seal`.

    Args:
        key: The key it was sealed under.
        sealed: The sealed text.
        aad: The associated data it was sealed with.

    Returns:
        The plaintext.

    Raises:
        SealError: Not a sealed value, altered, another key or another record.
    """
    if not is_sealed(sealed):
        raise SealError("the value is not sealed")
    body = sealed[len(PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise SealError("the sealed value is not base64url") from None
    if len(raw) < _NONCE_SIZE + _TAG_SIZE:
        raise SealError("the sealed value is too short")
    try:
        return AESGCM(key).decrypt(raw[:_NONCE_SIZE], raw[_NONCE_SIZE:], aad)
    except InvalidTag:
        raise SealError("the sealed value does not open with this key") from None


def derive_key(label: str, *secrets: str) -> bytes:
    """Derive a 32-byte key from client-held secrets with HKDF-SHA256.

    Args:
        label: Domain separation (HKDF ``info``): one label per use, never shared.
        *secrets: The secrets, each length-prefixed so that no two lists of
            secrets give the same input.

    Returns:
        The key.
    """
    material = b"".join(
        len(raw).to_bytes(4, "big") + raw
        for raw in (secret.encode("utf-8", "surrogatepass") for secret in secrets)
    )
    hkdf = HKDF(algorithm=SHA256(), length=KEY_SIZE, salt=None, info=label.encode("ascii"))
    return hkdf.derive(material)

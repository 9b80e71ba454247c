"""Digests and password hashing: what the service stores instead of secrets.

Passwords are kept as scrypt hashes (slow on purpose: run them in a thread),
tokens as SHA-256 digests. A user's ``ha1`` is what the one-time-key login needs.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from tokensdk.server._records import UserRecord

__all__ = [
    "ha1_digest",
    "hash_password",
    "make_user_record",
    "one_time_key_answer",
    "token_digest",
    "verify_password",
]


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

    The SDK's :func:`tokensdk.one_time_key_answer` computes the same from the
    password; the service holds only ``ha1``, hence this form.

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


#: Marks a one-time key record holding the digest of its answer (earlier versions
#: kept the answer itself).
OTK_DIGEST = "sha256:"


def otk_answer_digest(answer: str) -> str:
    """Return what a pending one-time key record stores: ``sha256:`` + digest of the answer."""
    return OTK_DIGEST + token_digest(answer)

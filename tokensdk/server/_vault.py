"""Secrets at rest: AES-256-GCM sealing under the service key or under a key only a client holds.

Two kinds of key seal values inside the service's records:

- the **service key** (:class:`Vault`): 32 random bytes in a key file (``<db>.key``
  next to the database by default, created with mode 0600 on first start), or held
  in memory only when the service keeps no database. It seals what the service must
  read back by itself: MAC token secrets, each user's one-time-key ``ha1`` and the
  PASETO signing-key seeds. A copy of the database without the key file opens none
  of them;
- a **client key** (:func:`derive_key`): HKDF-SHA256 over secrets that only the
  client holds (for a refresh retry: the refresh token and the idempotency key, of
  which the service keeps digests only). It seals the stored answer of a refresh, so
  not even the service can read it back until the client presents both again.

A sealed value is text: ``v1:`` followed by unpadded base64url of ``nonce (12 random
bytes) || ciphertext || tag (16 bytes)``. The associated data names where the value
is stored (:func:`record_aad`: table and record key), so a sealed value moved to
another record does not open. Plain values of earlier versions never start with
``v1:`` (they are hex or standard Base64), which is how :func:`is_sealed` tells them
apart for migration.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import stat

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "KEY_SIZE",
    "SealError",
    "ServiceKeyError",
    "Vault",
    "derive_key",
    "is_sealed",
    "record_aad",
    "seal",
    "unseal",
]

log = logging.getLogger("tokensdk.server")

#: The version prefix of every sealed value.
PREFIX = "v1:"
#: AES-256: the size of every key, in bytes.
KEY_SIZE = 32
_NONCE_SIZE = 12
_TAG_SIZE = 16


class SealError(ValueError):
    """A sealed value did not open: another key, altered, misplaced, or not sealed at all."""


class ServiceKeyError(ValueError):
    """The service key cannot be read, created, or does not open the database's secrets.

    The message is one line naming the key file, never the key.
    """


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
    """Return whether ``value`` is a sealed value (not the plain text an earlier version kept)."""
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


class Vault:
    """The service key: seals and opens the secrets kept in the service's records.

    Build one with :meth:`ephemeral` (memory mode) or :meth:`from_file`; the state
    core calls :meth:`attach` once it has loaded the database, which checks the key
    against a sealed value and creates a missing key file for a database that has
    none yet. The key never appears in a repr or a message.
    """

    def __init__(self, key: bytes | None, path: str | None) -> None:
        if key is not None and len(key) != KEY_SIZE:
            raise ServiceKeyError(f"the service key must be {KEY_SIZE} bytes")
        self._key = key
        self._path = path

    @classmethod
    def ephemeral(cls) -> Vault:
        """Return a vault with a random key that lives in memory only (no database)."""
        return cls(os.urandom(KEY_SIZE), None)

    @classmethod
    def from_file(cls, path: str) -> Vault:
        """Return a vault for the key in ``path``; a missing file is created by :meth:`attach`.

        An existing key file that grants the group or others any access is
        tightened to its owner's bits, with a warning (as the database file is).

        Args:
            path: The key file: exactly 32 raw bytes.

        Raises:
            ServiceKeyError: The file exists but cannot be read or is not a key.
        """
        return cls(_read_key_file(path), path)

    @property
    def path(self) -> str | None:
        """The key file, or None for a key held in memory only."""
        return self._path

    def _where(self) -> str:
        return f"service key file {self._path}" if self._path else "in-memory service key"

    def attach(self, sample: tuple[str, str, str] | None) -> None:
        """Make the key ready for a database; ``sample`` is one of its sealed values, if any.

        Args:
            sample: ``(table, record key, sealed value)`` found in the database, or
                None when the database holds no sealed value yet.

        Raises:
            ServiceKeyError: The key file is missing while the database holds sealed
                values, the key does not open them, or a new key file cannot be made.
        """
        if self._key is None:
            if sample is not None:
                raise ServiceKeyError(
                    f"the {self._where()} is missing, but the database holds secrets sealed"
                    " with it (give the right file with --key-file)"
                )
            assert self._path is not None
            self._key = _create_key_file(self._path)
            return
        if sample is not None:
            try:
                self.open(*sample)
            except SealError:
                raise ServiceKeyError(
                    f"the {self._where()} does not open the database's secrets (wrong key)"
                ) from None

    def _require_key(self) -> bytes:
        if self._key is None:
            raise ServiceKeyError(f"the {self._where()} is not loaded yet")
        return self._key

    def seal(self, table: str, key: str, text: str) -> str:
        """Seal ``text`` for the record ``key`` of ``table``."""
        return seal(self._require_key(), text.encode("utf-8"), record_aad(table, key))

    def open(self, table: str, key: str, sealed: str) -> str:
        """Open a value :meth:`seal` made for the record ``key`` of ``table``.

        Raises:
            SealError: The value does not open (another key, record or an alteration).
        """
        raw = unseal(self._require_key(), sealed, record_aad(table, key))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:  # pragma: no cover - we sealed text ourselves
            raise SealError("the sealed value is not text") from None

    def __repr__(self) -> str:
        return f"Vault(path={self._path!r})"


def _read_key_file(path: str) -> bytes | None:
    """Return the key in ``path``, or None when there is no such file.

    Raises:
        ServiceKeyError: The file cannot be read, is not a regular file, or is not
            exactly 32 bytes.
    """
    # Non-blocking: a FIFO in the key's place must not hang the start.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ServiceKeyError(
            f"cannot read the service key file {path}: {exc.strerror or exc}"
        ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ServiceKeyError(f"the service key file {path} is not a regular file")
        if os.name == "posix" and st.st_mode & 0o077:
            _tighten(fd, path, stat.S_IMODE(st.st_mode))
        data = os.read(fd, KEY_SIZE + 1)
    except OSError as exc:
        raise ServiceKeyError(
            f"cannot read the service key file {path}: {exc.strerror or exc}"
        ) from None
    finally:
        os.close(fd)
    if len(data) != KEY_SIZE:
        raise ServiceKeyError(f"the service key file {path} does not hold a {KEY_SIZE}-byte key")
    return data


def _tighten(fd: int, path: str, mode: int) -> None:
    new = mode & 0o700
    try:
        os.fchmod(fd, new)
    except OSError as exc:
        log.warning(
            "service key file %s is open to other users (mode %04o) and its mode cannot be"
            " changed (%s): run `chmod 600 %s`",
            path,
            mode,
            exc.strerror or exc,
            path,
        )
    else:
        log.warning(
            "service key file %s was open to other users (mode %04o); changed to %04o",
            path,
            mode,
            new,
        )


def _create_key_file(path: str) -> bytes:
    """Write a new random key to ``path`` (mode 0600, durably) and return it.

    Raises:
        ServiceKeyError: The file cannot be created (or another process made one
            that is not a key).
    """
    key = os.urandom(KEY_SIZE)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        # Another process started on the same database a moment ago: use its key.
        existing = _read_key_file(path)
        if existing is None:
            raise ServiceKeyError(f"cannot create the service key file {path}") from None
        return existing
    except OSError as exc:
        raise ServiceKeyError(
            f"cannot create the service key file {path}: {exc.strerror or exc}"
        ) from None
    try:
        if os.write(fd, key) != KEY_SIZE:
            raise OSError(0, "short write")
        # Durable before any secret is sealed with it: a crash must not leave sealed
        # records whose key never reached the disk.
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise ServiceKeyError(
            f"cannot write the service key file {path}: {exc.strerror or exc}"
        ) from None
    os.close(fd)
    _fsync_directory(os.path.dirname(os.path.abspath(path)))
    return key


def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return  # not on every platform; the file itself was synced
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

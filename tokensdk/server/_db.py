"""Where the service's state is mirrored: nowhere (memory mode) or a SQLite file.

The state core keeps every record in memory and writes each change through to a
:class:`Persistence`; on start it loads every table back. Records are JSON
objects keyed by a string, one table per kind of record.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
from typing import Any, Protocol

__all__ = ["KINDS", "MemoryPersistence", "Persistence", "SqlitePersistence", "open_persistence"]

log = logging.getLogger("tokensdk.server")

#: The files SQLite keeps next to a database ``x``: ``x-wal`` and ``x-shm`` in WAL
#: mode (ours), ``x-journal`` in the rollback modes (a file last used by another tool).
_SIDE_FILES = ("-wal", "-shm", "-journal")

#: The kinds of record the service keeps, one SQLite table each.
KINDS = (
    "users",
    "families",
    "access_tokens",
    "refresh_tokens",
    "one_time_keys",
    "mac_tokens",
    "assets",
    "challenges",
    "signing_keys",
    "revoked_asset_tokens",
)


class Persistence(Protocol):
    """A write-through mirror of the state's records."""

    def load(self, kind: str) -> dict[str, dict[str, Any]]:
        """Return every stored record of ``kind``, by key."""
        ...

    def put(self, kind: str, key: str, record: dict[str, Any]) -> None:
        """Insert or replace one record."""
        ...

    def delete(self, kind: str, key: str) -> None:
        """Delete one record (no error when absent)."""
        ...

    def close(self) -> None:
        """Release the underlying resources."""
        ...


class MemoryPersistence:
    """The default: nothing outlives the process."""

    def load(self, kind: str) -> dict[str, dict[str, Any]]:
        """Return nothing: memory mode starts empty."""
        return {}

    def put(self, kind: str, key: str, record: dict[str, Any]) -> None:
        """Do nothing."""

    def delete(self, kind: str, key: str) -> None:
        """Do nothing."""

    def close(self) -> None:
        """Do nothing."""


class SqlitePersistence:
    """Records in a SQLite file (stdlib ``sqlite3``), schema created on open.

    The file holds password hashes, signing-key seeds and token records, so it is
    kept private to the service's user (POSIX):

    - a missing file is created with mode 0600 before SQLite opens it (SQLite
      would create it 0644, less the umask);
    - an existing file (or a ``-wal``, ``-shm`` or ``-journal`` file next to it, left
      behind by a crash or another tool) that grants the group or others any access
      is tightened to its owner's bits only (0644 -> 0600), with a warning in the
      ``tokensdk.server`` log. Tightening rather than refusing to start: a file
      made by an earlier version of this service is 0644, and a token database
      others can read is never intended. If the mode cannot be changed (the
      file belongs to another user), the warning says so and the service starts;
    - side files SQLite creates later copy the database file's mode (SQLite does
      this itself), so they are 0600 too.

    Args:
        path: The database file; created when missing.

    Raises:
        sqlite3.Error: The file cannot be created or opened as a database.
    """

    def __init__(self, path: str) -> None:
        # ":memory:" and "" are SQLite's names for databases that live in no file.
        if path not in ("", ":memory:") and os.name == "posix":
            _make_private(path, create=True)
            for suffix in _SIDE_FILES:
                _make_private(path + suffix, create=False)
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        for kind in KINDS:
            self._conn.execute(
                f"CREATE TABLE IF NOT EXISTS {kind} (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
            )

    def load(self, kind: str) -> dict[str, dict[str, Any]]:
        """Return every stored record of ``kind``, by key."""
        _check(kind)
        rows = self._conn.execute(f"SELECT key, value FROM {kind}").fetchall()  # noqa: S608
        return {key: json.loads(value) for key, value in rows}

    def put(self, kind: str, key: str, record: dict[str, Any]) -> None:
        """Insert or replace one record."""
        _check(kind)
        self._conn.execute(
            f"INSERT OR REPLACE INTO {kind} (key, value) VALUES (?, ?)",  # noqa: S608
            (key, json.dumps(record, separators=(",", ":"))),
        )

    def delete(self, kind: str, key: str) -> None:
        """Delete one record (no error when absent)."""
        _check(kind)
        self._conn.execute(f"DELETE FROM {kind} WHERE key = ?", (key,))  # noqa: S608

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()


def _make_private(path: str, *, create: bool) -> None:
    """Create ``path`` with mode 0600 (``create``), or take group and other bits off it.

    Raises:
        sqlite3.OperationalError: ``create`` and the file cannot be opened or made.
    """
    # Read-only and non-blocking: a FIFO in the file's place must not hang the start;
    # fchmod on the descriptor changes the very file that was checked.
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        if not create:
            return  # no side file (the usual case), or one SQLite will complain about
        # SQLite's own error type, as before this check existed: callers handle
        # sqlite3.Error, and `tokensdk serve` reports a bare OSError as "cannot listen".
        raise sqlite3.OperationalError(
            f"unable to open database file {path}: {exc.strerror or exc}"
        ) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o077:
            return
        old, new = stat.S_IMODE(st.st_mode), stat.S_IMODE(st.st_mode) & 0o700
        try:
            os.fchmod(fd, new)
        except OSError as exc:
            log.warning(
                "service database file %s is open to other users (mode %04o) and its mode"
                " cannot be changed (%s); it holds password hashes and key seeds: run"
                " `chmod 600 %s`",
                path,
                old,
                exc.strerror or exc,
                path,
            )
        else:
            log.warning(
                "service database file %s was open to other users (mode %04o); changed to %04o",
                path,
                old,
                new,
            )
    finally:
        os.close(fd)


def _check(kind: str) -> None:
    # Table names cannot be bound parameters; only our own constants get interpolated.
    if kind not in KINDS:
        raise ValueError(f"unknown record kind {kind!r}")


def open_persistence(path: str | None) -> Persistence:
    """Return SQLite persistence for ``path``, or memory persistence for ``None``.

    The SQLite file is created (and kept) private to the service's user; see
    :class:`SqlitePersistence`.

    Args:
        path: The database file, or ``None``.

    Returns:
        The persistence to hand to the state core.
    """
    return MemoryPersistence() if path is None else SqlitePersistence(path)

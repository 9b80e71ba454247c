"""Where the service's state is mirrored: nowhere (memory mode) or a SQLite file.

The state core keeps every record in memory and writes each change through to a
:class:`Persistence`; on start it loads every table back. Records are JSON
objects keyed by a string, one table per kind of record.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Protocol

__all__ = ["KINDS", "MemoryPersistence", "Persistence", "SqlitePersistence", "open_persistence"]

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

    Args:
        path: The database file; created when missing.
    """

    def __init__(self, path: str) -> None:
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


def _check(kind: str) -> None:
    # Table names cannot be bound parameters; only our own constants get interpolated.
    if kind not in KINDS:
        raise ValueError(f"unknown record kind {kind!r}")


def open_persistence(path: str | None) -> Persistence:
    """Return SQLite persistence for ``path``, or memory persistence for ``None``.

    Args:
        path: The database file, or ``None``.

    Returns:
        The persistence to hand to the state core.
    """
    return MemoryPersistence() if path is None else SqlitePersistence(path)

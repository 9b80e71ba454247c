"""Where the service's state is mirrored: nowhere (memory mode) or a SQLite file.

The state core keeps every record in memory and writes each change through to a
:class:`Persistence`; on start it loads every table back. Records are JSON
objects keyed by a string, one table per kind of record.

Writes are queued, not performed: :meth:`Persistence.put` and
:meth:`Persistence.delete` only note the change, and :meth:`Persistence.commit`
hands everything noted so far to one writer thread that applies it as one SQLite
transaction. The state core's operations are synchronous (they never await), so
an operation's changes are never split between two transactions, and the writer
applies transactions in the order they were made: the file always holds a
prefix of the in-memory history made of whole operations. The HTTP layer awaits
``commit()`` before any answer leaves, so nothing a client was told is lost to a
crash, and the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import sqlite3
import stat
from typing import Any, Protocol

__all__ = [
    "KINDS",
    "MemoryPersistence",
    "Persistence",
    "PersistenceFailed",
    "SqlitePersistence",
    "open_persistence",
]

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


class PersistenceFailed(sqlite3.Error):
    """A transaction could not be written; the file no longer follows the memory state.

    After the first failure every later :meth:`~Persistence.commit` raises this too
    (fail-stop): the file keeps the last consistent prefix of the history, and the
    service must be restarted from it rather than go on with a memory state that
    the file will never hold.
    """


class Persistence(Protocol):
    """A write-through mirror of the state's records."""

    def load(self, kind: str) -> dict[str, dict[str, Any]]:
        """Return every stored record of ``kind``, by key."""
        ...

    def put(self, kind: str, key: str, record: dict[str, Any]) -> None:
        """Queue an insert or replace of one record (written by the next commit)."""
        ...

    def delete(self, kind: str, key: str) -> None:
        """Queue the deletion of one record (no error when absent)."""
        ...

    async def commit(self) -> None:
        """Make every change queued so far durable; return once it is.

        Raises:
            PersistenceFailed: This or an earlier transaction could not be written.
        """
        ...

    def close(self) -> None:
        """Write what is still queued and release the resources (blocks)."""
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

    async def commit(self) -> None:
        """Do nothing: memory is as durable as it gets."""

    def close(self) -> None:
        """Do nothing."""


class SqlitePersistence:
    """Records in a SQLite file (stdlib ``sqlite3``), schema created on open.

    Loading (at start) runs on the caller's thread. Changes are queued by
    :meth:`put` and :meth:`delete` and written by :meth:`commit` on one dedicated
    writer thread, each batch as one ``BEGIN IMMEDIATE ... COMMIT`` transaction,
    batches in the order they were committed. The file is in WAL mode with
    ``synchronous=FULL``: a transaction that returned is on the disk, so an answer
    sent after :meth:`commit` survives a crash of the process and of the machine.
    If a transaction fails, every later commit fails too (see
    :class:`PersistenceFailed`).

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
        # Explicit transactions only (isolation_level=None); the connection is used
        # by one thread at a time: the caller's to load, then the writer thread.
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        for kind in KINDS:
            self._conn.execute(
                f"CREATE TABLE IF NOT EXISTS {kind} (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
            )
        # (kind, key) -> the record to write, or None to delete it. Only the last
        # change of a key matters within one transaction.
        self._pending: dict[tuple[str, str], dict[str, Any] | None] = {}
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None
        self._tail: concurrent.futures.Future[None] | None = None  # the last batch handed over
        self._failure: BaseException | None = None  # set by the writer thread, once
        self._closed = False
        #: Transactions written so far (for tests and monitoring).
        self.transactions = 0

    @property
    def pending(self) -> int:
        """How many changes are queued for the next commit."""
        return len(self._pending)

    def load(self, kind: str) -> dict[str, dict[str, Any]]:
        """Return every stored record of ``kind``, by key."""
        _check(kind)
        rows = self._conn.execute(f"SELECT key, value FROM {kind}").fetchall()  # noqa: S608
        return {key: json.loads(value) for key, value in rows}

    def put(self, kind: str, key: str, record: dict[str, Any]) -> None:
        """Queue an insert or replace of one record (written by the next commit)."""
        self._queue(kind, key, record)

    def delete(self, kind: str, key: str) -> None:
        """Queue the deletion of one record (no error when absent)."""
        self._queue(kind, key, None)

    async def commit(self) -> None:
        """Write every queued change in one transaction on the writer thread; await it.

        Also waits for transactions handed over earlier by other callers, so a
        caller that queued nothing still returns only once everything it could
        have seen is durable. Cancelling the caller does not cancel the write.

        Raises:
            PersistenceFailed: This or an earlier transaction could not be written.
        """
        if self._pending:
            self._hand_over()
        tail = self._tail
        if tail is None:
            return
        if tail.done():
            tail.result()  # raises the failure, if there was one
            return
        await asyncio.shield(asyncio.wrap_future(tail))

    def close(self) -> None:
        """Write what is still queued, stop the writer thread and close the file.

        Blocks until the last transaction is written: call it after
        :meth:`commit` from a running loop, or from synchronous code.

        Raises:
            PersistenceFailed: What was queued could not be written.
        """
        if self._closed:
            return
        self._closed = True
        try:
            if self._pending:
                self._hand_over()
            if self._tail is not None:
                self._tail.result()
        finally:
            if self._writer is not None:
                self._writer.shutdown(wait=True)
            self._conn.close()

    def _queue(self, kind: str, key: str, record: dict[str, Any] | None) -> None:
        _check(kind)
        if self._closed:
            raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
        self._pending[kind, key] = record

    def _hand_over(self) -> None:
        batch, self._pending = self._pending, {}
        if self._writer is None:
            # One thread: transactions are written one at a time, in hand-over order.
            self._writer = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="tokensdk-db-writer"
            )
        self._tail = self._writer.submit(self._write, batch)

    def _write(self, batch: dict[tuple[str, str], dict[str, Any] | None]) -> None:
        """Apply one batch as one transaction (on the writer thread)."""
        if self._failure is not None:
            # Fail-stop: writing later changes on top of a lost transaction would
            # make the file something the memory state never was.
            raise PersistenceFailed(
                "an earlier write to the service database failed; restart the service"
            ) from self._failure
        try:
            self._transaction(batch)
        except Exception as exc:
            self._failure = exc
            log.error(
                "cannot write the service database (%s: %s); every request now gets 503"
                " until the service is restarted",
                type(exc).__name__,
                exc,
            )
            raise PersistenceFailed(f"cannot write the service database: {exc}") from exc
        self.transactions += 1

    def _transaction(self, batch: dict[tuple[str, str], dict[str, Any] | None]) -> None:
        deletes: dict[str, list[tuple[str]]] = {}
        puts: dict[str, list[tuple[str, str]]] = {}
        for (kind, key), record in batch.items():
            if record is None:
                deletes.setdefault(kind, []).append((key,))
            else:
                value = json.dumps(record, separators=(",", ":"))
                puts.setdefault(kind, []).append((key, value))
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for kind, keys in deletes.items():
                conn.executemany(f"DELETE FROM {kind} WHERE key = ?", keys)  # noqa: S608
            for kind, rows in puts.items():
                conn.executemany(
                    f"INSERT OR REPLACE INTO {kind} (key, value) VALUES (?, ?)",  # noqa: S608
                    rows,
                )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                # A broken connection may refuse even this; the first error says why.
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise


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

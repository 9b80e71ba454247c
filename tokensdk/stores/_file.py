"""FileStore: the state document as one JSON file, replaced atomically and durably.

A save writes a new file next to the target and renames it over the target, so a
crash at any point leaves either the old complete file or the new complete file.
The temporary file is ``flock``-ed while it is being written: a later save removes
only temporary files nobody holds, i.e. those left behind by a crashed writer.

:func:`read_state_file` reads such a file the same way but changes nothing, for
tools that only look (the ``tokensdk tokens`` command).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import stat
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import attrs

from tokensdk._errors import StoreCorrupt, StoreError
from tokensdk.stores._codec import (
    CorruptState,
    NewerFormat,
    decode_envelope,
    decode_state,
    encode_state,
    with_serial,
)

__all__ = ["FileLease", "FileStore", "read_state_file"]

_FILE_MODE = 0o600
_DIR_MODE = 0o700
_READ_CHUNK = 1 << 16


def _describe(exc: OSError) -> str:
    # strerror is the operating system's wording ("Permission denied"): never content.
    return exc.strerror or type(exc).__name__


def _read_regular_file(path: Path) -> tuple[os.stat_result, bytes] | None:
    """Open, stat and read ``path``; None if it does not exist. Raises OSError."""
    try:
        # O_NONBLOCK: a FIFO in place of the file must not hang the worker thread.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return st, b""
        chunks = []
        while chunk := os.read(fd, _READ_CHUNK):
            chunks.append(chunk)
        return st, b"".join(chunks)
    finally:
        os.close(fd)


def _expand(path: str | os.PathLike[str]) -> Path:
    # "~/.myapp/state.json" means the home directory, as in a shell, not "./~".
    return Path(os.path.expanduser(path))


def _read_checked(
    path: Path, *, check_permissions: bool, hint: str = ""
) -> tuple[os.stat_result, bytes] | None:
    """Read a state file's bytes, refusing what must not be loaded; None if there is none.

    Raises:
        StoreError: The file could not be read, is not a regular file, or (when
            ``check_permissions``) group or others may access it.
    """
    try:
        result = _read_regular_file(path)
    except OSError as exc:
        raise StoreError(f"cannot read state file {path}: {_describe(exc)}") from exc
    if result is None:
        return None
    st = result[0]
    if stat.S_ISDIR(st.st_mode):
        raise StoreError(f"cannot read state file {path}: it is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise StoreError(f"cannot read state file {path}: it is not a regular file")
    if check_permissions and st.st_mode & 0o077:
        raise StoreError(
            f"state file {path} is accessible by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); it holds secrets: run "
            f"`chmod 600 {path}`{hint}"
        )
    return result


def _newer(path: Path, exc: NewerFormat) -> str:
    return (
        f"state file {path} was written by a newer tokensdk (format version {exc.version});"
        " upgrade tokensdk to read it"
    )


def read_state_file(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Read the document a :class:`FileStore` keeps at ``path``, changing nothing.

    The same checks as :meth:`FileStore.load` (a regular file, not accessible by
    group or others, a format this tokensdk reads), but a corrupt file is left where
    it is, for whoever looks at it next. Blocking: for tools and scripts, not for an
    event loop.

    Args:
        path: The state file (``~`` is the home directory).

    Returns:
        The stored document, or None when the file does not exist.

    Raises:
        StoreCorrupt: The file could not be decoded (``moved_to`` is None: the file
            was not moved).
        StoreError: The file could not be read, is not a regular file, is accessible
            by group or others, or was written by a newer tokensdk.
    """
    where = _expand(path)
    result = _read_checked(where, check_permissions=True)
    if result is None:
        return None
    try:
        return decode_state(result[1])
    except NewerFormat as exc:
        raise StoreError(_newer(where, exc)) from None
    except CorruptState as exc:
        raise StoreCorrupt(f"state file {where} is corrupt ({exc.reason}); left as it is") from None


def _make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and its missing parents, each with mode 0700."""
    # Path.mkdir(parents=True) and os.makedirs give intermediate directories the
    # default mode; a private store gets private parents too.
    missing = []
    while not directory.is_dir():
        missing.append(directory)
        if directory.parent == directory:
            break
        directory = directory.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=_DIR_MODE)
        except FileExistsError:
            if not path.is_dir():
                raise


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


#: How soon to look at a refresh lock again that another process holds.
_LOCK_POLL = 0.05


class _Any:
    """Marks an unconditional save (any serial)."""


_ANY = _Any()


@attrs.define
class FileLease:
    """The refresh lock of a shared state file, held until :meth:`release`.

    Attributes:
        lease: The lease asked for (the kernel frees the lock when the process exits).
    """

    lease: float
    _fd: int | None = attrs.field(repr=False)

    async def release(self) -> None:
        """Release the lock (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    async def still_held(self) -> bool:
        """Whether this lease has not been released (an flock cannot be taken over)."""
        return self._fd is not None


class FileStore:
    """Keep the state document in a JSON file (mode 0600), saved atomically.

    Blocking file operations run in a worker thread. Saves on one instance are
    serialised in call order, so the last save called is the one that stays.

    Args:
        path: The state file (``~`` is the home directory). Its directory is created
            (mode 0700) when missing.
        check_permissions: Refuse to load a file that group or others may access.
    """

    __slots__ = ("_check_permissions", "_lock", "_path")

    def __init__(self, path: str | os.PathLike[str], *, check_permissions: bool = True) -> None:
        self._path = _expand(path)
        self._check_permissions = check_permissions
        self._lock = anyio.Lock()

    @property
    def path(self) -> Path:
        """The state file's path."""
        return self._path

    def __repr__(self) -> str:
        return f"FileStore({str(self._path)!r})"

    async def load(self) -> dict[str, Any] | None:
        """Read the state file.

        Returns:
            The stored document, or None when the file does not exist.

        Raises:
            StoreCorrupt: The file could not be decoded; it was moved aside to
                ``moved_to`` (the path is then empty).
            StoreError: The file could not be read, is not a regular file, is
                accessible by group or others, or was written by a newer tokensdk.
        """
        async with self._lock:
            return await anyio.to_thread.run_sync(self._load_sync)

    async def save(self, document: Mapping[str, Any]) -> None:
        """Replace the state file's content with ``document``, atomically and durably.

        The document is encoded before this call first yields, so changes the caller
        makes afterwards are not saved.

        Args:
            document: A JSON-able mapping.

        Raises:
            InvalidInput: The document is not JSON-serialisable.
            StoreError: The file could not be written; the previous file is intact.
        """
        data = encode_state(document)
        async with self._lock:
            await anyio.to_thread.run_sync(self._save_if_sync, data, _ANY)

    async def clear(self) -> None:
        """Remove the state file and abandoned temporary files (a missing file is fine).

        Raises:
            StoreError: The file could not be removed.
        """
        async with self._lock:
            await anyio.to_thread.run_sync(self._clear_sync)

    async def quarantine(self) -> str | None:
        """Move the state file aside: its envelope was fine but its content is not.

        Called by the session when it cannot use a document this store loaded; the
        file is kept (``<path>.corrupt-<time>``) for whoever wants to look at it.

        Returns:
            Where the file went, or None when there was no file to move.

        Raises:
            StoreError: The file could not be moved.
        """
        async with self._lock:
            return await anyio.to_thread.run_sync(self._quarantine_sync)

    # -- coordination: several processes sharing this file ---------------------------

    async def load_versioned(self) -> tuple[dict[str, Any] | None, int]:
        """Read the document and its serial (``(None, 0)`` when there is no file).

        Raises:
            StoreCorrupt: As :meth:`load`.
            StoreError: As :meth:`load`.
        """
        async with self._lock:
            loaded = await anyio.to_thread.run_sync(self._load_envelope_sync)
        return (None, 0) if loaded is None else loaded

    async def save_if(self, document: Mapping[str, Any], version: int | None) -> int | None:
        """Write ``document`` only if the file's serial is still ``version``.

        Processes on one host serialise these writes with an ``flock`` on the side
        file ``<path>.lock``; the write itself is atomic and durable as :meth:`save`.

        Args:
            document: The new state.
            version: The serial it was derived from; None: only if there is no file.

        Returns:
            The new serial, or None when another writer came first.

        Raises:
            InvalidInput: The document is not JSON-serialisable.
            StoreError: The file could not be read or written (nothing was written).
        """
        data = encode_state(document)
        async with self._lock:
            return await anyio.to_thread.run_sync(self._save_if_sync, data, version)

    async def try_lock(self, lease: float) -> FileLease | None:
        """Take the refresh lock on ``<path>.refresh-lock`` if no process holds it.

        The lock is an ``flock``: the kernel frees it when its holder exits, killed or
        not, so ``lease`` needs no timer here (a holder that hangs keeps it).

        Args:
            lease: Kept for the interface shared with :class:`RedisStore`.

        Returns:
            The lease, or None when another holder (process or session) has it.
        """
        return await anyio.to_thread.run_sync(self._try_lock_sync, lease)

    async def lock_remaining(self) -> float | None:
        """None when the refresh lock is free; else a short time to look again (s)."""
        lease = await self.try_lock(0.0)
        if lease is None:
            return _LOCK_POLL
        await lease.release()
        return None

    @asynccontextmanager
    async def changes(self, interval: float = 0.2) -> AsyncIterator[AsyncIterator[int]]:
        """Watch the file for writes by other processes (``async with``, then iterate).

        Yields the serial of each new file seen. A write replaces the file (a new
        inode), so a cheap ``stat`` every ``interval`` seconds tells; the file is read
        only when it changed.

        Args:
            interval: Seconds between two looks.
        """

        # Taken now, not at the first iteration: a write between entering the block
        # and iterating counts as a change.
        seen = await anyio.to_thread.run_sync(self._identity)

        async def serials() -> AsyncIterator[int]:
            nonlocal seen
            while True:
                await anyio.sleep(interval)
                now = await anyio.to_thread.run_sync(self._identity)
                if now == seen:
                    continue
                seen = now
                try:
                    _, serial = await self.load_versioned()
                except StoreError:
                    continue  # a half-seen write or a corrupt file: the next look tells
                yield serial

        yield serials()

    # -- blocking parts, run in a worker thread ------------------------------------

    def _identity(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._path)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _side_file(self, suffix: str) -> int:
        _make_private_dirs(self._path.parent)
        return os.open(f"{self._path}{suffix}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE)

    def _save_if_sync(self, data: bytes, version: int | _Any | None) -> int | None:
        try:
            fd = self._side_file(".lock")
        except OSError as exc:
            raise StoreError(f"cannot write state file {self._path}: {_describe(exc)}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # short: one read and one write of a small file
            current = self._current_serial_sync()
            if version is None and current is not None:
                return None
            if isinstance(version, int) and version != (current or 0):
                return None
            serial = (current or 0) + 1
            self._save_sync(with_serial(data, serial))
            return serial
        finally:
            os.close(fd)  # releases the flock

    def _current_serial_sync(self) -> int | None:
        """The serial of the file about to be replaced (None: no file), as loads see it.

        Read without the permission check and without moving anything aside: a
        save replaces an open (0644), corrupt or newer-format file, as it always did,
        with a private one; such a file counts as serial 0.
        """
        try:
            result = _read_regular_file(self._path)
        except OSError as exc:
            raise StoreError(f"cannot read state file {self._path}: {_describe(exc)}") from exc
        if result is None:
            return None
        try:
            return decode_envelope(result[1])[1]
        except (CorruptState, NewerFormat):
            return 0

    def _try_lock_sync(self, lease: float) -> FileLease | None:
        try:
            fd = self._side_file(".refresh-lock")
        except OSError as exc:
            raise StoreError(f"cannot lock state file {self._path}: {_describe(exc)}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError as exc:
            os.close(fd)
            raise StoreError(f"cannot lock state file {self._path}: {_describe(exc)}") from exc
        return FileLease(lease, fd)

    def _quarantine_sync(self) -> str | None:
        if not os.path.lexists(self._path):
            return None
        moved_to = self._move_aside()
        if moved_to is None:
            raise StoreError(f"state file {self._path} could not be moved aside")
        return moved_to

    def _load_sync(self) -> dict[str, Any] | None:
        loaded = self._load_envelope_sync()
        return None if loaded is None else loaded[0]

    def _load_envelope_sync(self) -> tuple[dict[str, Any], int] | None:
        # A concurrent writer in another process may replace the file between our
        # read and our moving it aside; re-read rather than move a good file away.
        for _ in range(5):
            result = _read_checked(
                self._path,
                check_permissions=self._check_permissions,
                hint=" (or pass check_permissions=False)",
            )
            if result is None:
                return None
            st, data = result
            try:
                return decode_envelope(data)
            except NewerFormat as exc:
                raise StoreError(
                    f"{_newer(self._path, exc)}. The file was left untouched"
                ) from None
            except CorruptState as exc:
                reason = exc.reason
            if not self._still_same_file(st):
                continue
            moved_to = self._move_aside()
            if moved_to is None:
                raise StoreCorrupt(
                    f"state file {self._path} is corrupt ({reason}) and could not be moved aside",
                    moved_to=None,
                )
            raise StoreCorrupt(
                f"state file {self._path} is corrupt ({reason}); moved aside to {moved_to}",
                moved_to=moved_to,
            )
        raise StoreError(f"state file {self._path} kept changing while being read")

    def _still_same_file(self, st: os.stat_result) -> bool:
        try:
            now = os.stat(self._path)
        except OSError:
            return False
        return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)

    def _move_aside(self) -> str | None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        base = f"{self._path}.corrupt-{stamp}"
        target, n = base, 1
        while os.path.lexists(target):
            target, n = f"{base}-{n}", n + 1
        try:
            os.replace(self._path, target)
        except OSError:
            return None
        with contextlib.suppress(OSError):
            self._fsync_dir()
        return target

    def _temp_prefix(self) -> str:
        return f".{self._path.name}.tmp-"

    def _save_sync(self, data: bytes) -> None:
        try:
            _make_private_dirs(self._path.parent)
            self._remove_abandoned_temps()
            fd, tmp = self._create_temp()
        except OSError as exc:
            raise StoreError(f"cannot write state file {self._path}: {_describe(exc)}") from exc
        try:
            try:
                _write_all(fd, data)
                os.fsync(fd)
                os.replace(tmp, self._path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            # The rename is durable only once the directory entry is on disk.
            self._fsync_dir()
        except OSError as exc:
            raise StoreError(f"cannot write state file {self._path}: {_describe(exc)}") from exc
        finally:
            # Closing releases the flock, after the rename: a cleaner never takes it early.
            os.close(fd)

    def _create_temp(self) -> tuple[int, Path]:
        flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC
        while True:
            tmp = self._path.with_name(self._temp_prefix() + secrets.token_hex(8))
            fd = os.open(tmp, flags, _FILE_MODE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                # A cleaner may have taken and removed it between open and flock.
                if self._fd_is_named(fd, tmp):
                    return fd, tmp
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)

    @staticmethod
    def _fd_is_named(fd: int, path: Path) -> bool:
        try:
            named = os.stat(path)
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)

    def _remove_abandoned_temps(self) -> None:
        directory = self._path.parent
        prefix = self._temp_prefix()
        try:
            names = [name for name in os.listdir(directory) if name.startswith(prefix)]
        except OSError:
            return
        for name in names:
            path = directory / name
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue  # a live writer holds it
            try:
                if self._fd_is_named(fd, path):
                    os.unlink(path)
            except OSError:
                pass
            finally:
                os.close(fd)

    def _fsync_dir(self) -> None:
        fd = os.open(self._path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        except OSError as exc:
            # Some file systems cannot fsync a directory; the rename is then as
            # durable as they make it.
            if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
                raise
        finally:
            os.close(fd)

    def _clear_sync(self) -> None:
        try:
            self._remove_abandoned_temps()
            try:
                os.unlink(self._path)
            except FileNotFoundError:
                return
            self._fsync_dir()
        except IsADirectoryError as exc:
            raise StoreError(f"cannot remove state file {self._path}: it is a directory") from exc
        except OSError as exc:
            raise StoreError(f"cannot remove state file {self._path}: {_describe(exc)}") from exc

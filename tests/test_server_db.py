"""The reference service's SQLite file: private to the service's user (POSIX modes)."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from _service import call, login, service

from tokensdk import ManualClock
from tokensdk.server._db import SqlitePersistence

# Root is no exception: the mode bits are stat'ed, not tried out by reading as another user.
pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(os.name != "posix", reason="POSIX file modes"),
]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def open_umask() -> Iterator[None]:
    # With umask 0 nothing but the service's own choice of mode keeps the file private.
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _modes(directory: Path) -> dict[str, int]:
    return {p.name: _mode(p) for p in directory.iterdir()}


@pytest.mark.usefixtures("open_umask")
async def test_new_database_and_side_files_are_private(
    http: aiohttp.ClientSession, clock: ManualClock, tmp_path: Path
) -> None:
    db = tmp_path / "s.db"
    async with service(clock, db=str(db)) as svc:
        await login(http, svc)  # a write: WAL mode keeps s.db-wal and s.db-shm open
        modes = _modes(tmp_path)
    assert {"s.db", "s.db-wal", "s.db-shm"} <= modes.keys()
    assert modes == dict.fromkeys(modes, 0o600)
    assert _modes(tmp_path) == {"s.db": 0o600, "s.db.key": 0o600}


@pytest.mark.parametrize(
    ("mode", "tightened"),
    [(0o644, 0o600), (0o640, 0o600), (0o604, 0o600), (0o666, 0o600), (0o750, 0o700)],
    ids=lambda mode: f"{mode:04o}",
)
async def test_open_database_file_is_tightened_with_a_warning(
    http: aiohttp.ClientSession,
    clock: ManualClock,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    mode: int,
    tightened: int,
) -> None:
    db = tmp_path / "s.db"
    async with service(clock, db=str(db)) as svc:
        tokens = await login(http, svc)
    # As an earlier version left it, plus side files a crash left behind.
    db.chmod(mode)
    for suffix in ("-wal", "-shm"):
        side = tmp_path / f"s.db{suffix}"
        side.touch()
        side.chmod(mode)
    caplog.set_level(logging.WARNING, logger="tokensdk.server")
    async with service(clock, db=str(db)) as svc:
        modes = _modes(tmp_path)
        # The state survived the tightening: the earlier session still works.
        status, _, _ = await call(http, svc, "GET", "/v1/me", token=tokens["accessToken"])
        assert status == 200
    # Only the group and other bits go: the owner's own bits are the operator's choice.
    assert modes == {
        "s.db": tightened,
        "s.db-wal": tightened,
        "s.db-shm": tightened,
        "s.db.key": 0o600,  # the service key file, made private when it was created
    }
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3
    assert all("open to other users" in w for w in warnings)
    assert all(f"(mode {mode:04o}); changed to {tightened:04o}" in w for w in warnings)
    assert str(db) in warnings[0]


async def test_private_database_file_is_left_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "s.db"
    SqlitePersistence(str(db)).close()
    caplog.set_level(logging.WARNING, logger="tokensdk.server")
    SqlitePersistence(str(db)).close()
    assert _mode(db) == 0o600
    assert caplog.records == []


def test_unopenable_path_is_a_sqlite_error(tmp_path: Path) -> None:
    # Callers handle sqlite3.Error (the `keys` command); `serve` would report an
    # OSError as "cannot listen".
    with pytest.raises(sqlite3.OperationalError, match="unable to open database file"):
        SqlitePersistence(str(tmp_path / "missing" / "s.db"))
    with pytest.raises(sqlite3.Error):
        SqlitePersistence(str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_memory_database_names_touch_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in (":memory:", ""):
        SqlitePersistence(name).close()
    assert list(tmp_path.iterdir()) == []

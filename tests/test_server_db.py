"""The reference service's SQLite file: private (POSIX modes), one transaction per operation.

Writes happen on a writer thread, never on the event loop, and an answer leaves only
once what it reflects is in the file.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import anyio.from_thread
import anyio.lowlevel
import pytest
from _service import call, login, service

from tokensdk import ManualClock
from tokensdk.server._db import SqlitePersistence
from tokensdk.server._state import ServiceState, token_digest
from tokensdk.server._vault import Vault

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


# -- transactions, off the event loop ---------------------------------------------------


def _rows(db: Path, table: str) -> dict[str, dict[str, object]]:
    """Read a table with a connection of its own, as another process would."""
    with sqlite3.connect(db) as conn:
        return {k: json.loads(v) for k, v in conn.execute(f"SELECT key, value FROM {table}")}


async def test_each_operation_is_one_transaction_durable_before_the_answer(
    http: aiohttp.ClientSession, clock: ManualClock, tmp_path: Path
) -> None:
    db = tmp_path / "s.db"
    async with service(clock, db=str(db)) as svc:
        persistence = svc.state.db
        assert isinstance(persistence, SqlitePersistence)
        tokens = await login(http, svc)
        before = persistence.transactions
        status, pair, _ = await call(
            http,
            svc,
            "POST",
            "/v1/refresh",
            {"username": "alice", "refreshToken": tokens["refreshToken"]},
        )
        assert status == 200
        # A rotation (family, new access, new refresh, old refresh marked used) is
        # one transaction, and all of it is in the file when the answer arrives.
        assert persistence.transactions == before + 1
        refresh = _rows(db, "refresh_tokens")
        assert refresh[token_digest(tokens["refreshToken"])]["used"] is True
        assert token_digest(pair["refreshToken"]) in refresh
        assert token_digest(pair["accessToken"]) in _rows(db, "access_tokens")
        # Reuse revokes the family in an error answer: on disk before the 401 too.
        status, body, _ = await call(
            http,
            svc,
            "POST",
            "/v1/refresh",
            {"username": "alice", "refreshToken": tokens["refreshToken"]},
        )
        assert (status, body["error"]) == (401, "refresh_token_reused")
        family = refresh[token_digest(pair["refreshToken"])]["family"]
        assert _rows(db, "families")[str(family)]["revoked"] is True
        assert persistence.transactions == before + 2
        # Reading changes nothing: no transaction.
        await call(http, svc, "GET", "/v1/status")
        assert persistence.transactions == before + 2


async def test_database_writes_run_off_the_event_loop(
    http: aiohttp.ClientSession,
    clock: ManualClock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop_thread = threading.current_thread()
    writers: list[threading.Thread] = []
    began = anyio.Event()
    release = threading.Event()
    released: list[bool] = []
    async with service(clock, db=str(tmp_path / "s.db")) as svc:
        tokens = await login(http, svc)
        persistence = svc.state.db
        assert isinstance(persistence, SqlitePersistence)
        original = persistence._transaction
        token = anyio.lowlevel.current_token()

        def held(batch: Any) -> None:
            writers.append(threading.current_thread())
            anyio.from_thread.run_sync(began.set, token=token)
            # Written on the event loop, this would wait forever for the loop to set
            # it; the guard turns that into a failed assertion below.
            released.append(release.wait(timeout=30))
            original(batch)

        monkeypatch.setattr(persistence, "_transaction", held)
        answers: list[int] = []

        async def refresh() -> None:
            status, _, _ = await call(
                http,
                svc,
                "POST",
                "/v1/refresh",
                {"username": "alice", "refreshToken": tokens["refreshToken"]},
            )
            answers.append(status)

        async with anyio.create_task_group() as tg:
            tg.start_soon(refresh)
            with anyio.fail_after(30):
                await began.wait()
            # The loop runs on (it set `began`) while the transaction is being written.
            release.set()
    assert released == [True]
    assert answers == [200]
    assert writers
    assert all(w is not loop_thread for w in writers)


async def test_a_failed_write_stops_the_service_answering(
    http: aiohttp.ClientSession,
    clock: ManualClock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    db = tmp_path / "s.db"
    async with service(clock, db=str(db)) as svc:
        tokens = await login(http, svc)
        persistence = svc.state.db
        assert isinstance(persistence, SqlitePersistence)

        def full(batch: Any) -> None:
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(persistence, "_transaction", full)
        body = {"username": "alice", "refreshToken": tokens["refreshToken"]}
        status, answer, _ = await call(http, svc, "POST", "/v1/refresh", body)
        assert (status, answer["error"]) == (503, "service_unavailable")
        # Fail-stop: nothing answers from a memory state the file will never hold.
        monkeypatch.undo()
        status, answer, _ = await call(http, svc, "GET", "/v1/status")
        assert (status, answer["error"]) == (503, "service_unavailable")
    assert "cannot write the service database" in caplog.text
    # The file holds the last consistent state: the rotation never happened there.
    async with service(clock, db=str(db)) as svc:
        status, _, _ = await call(http, svc, "POST", "/v1/refresh", body)
        assert status == 200


def test_close_writes_what_is_queued(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    persistence = SqlitePersistence(str(db))
    persistence.put("assets", "door", {"public_key": "00" * 32})
    persistence.put("assets", "gone", {"public_key": "11" * 32})
    persistence.delete("assets", "gone")
    assert persistence.pending == 2
    assert _rows(db, "assets") == {}
    persistence.close()
    assert _rows(db, "assets") == {"door": {"public_key": "00" * 32}}
    assert persistence.transactions == 1
    with pytest.raises(sqlite3.ProgrammingError):
        persistence.put("assets", "late", {"public_key": "22" * 32})


async def test_a_large_backlog_is_purged_in_passes_by_ordinary_operations(
    http: aiohttp.ClientSession, clock: ManualClock, tmp_path: Path
) -> None:
    # 13,000 expired families with their tokens (52,000 rows) in the file, as a
    # service restarted after a quiet day finds them. Purging them in one go stalled
    # the loop for over half a second; each pass is bounded now (test_server_state.py)
    # and the backlog is worked off by the logins that follow, file and memory alike.
    db = tmp_path / "s.db"
    state = ServiceState(
        access_ttl=10,
        refresh_ttl=100,
        db=SqlitePersistence(str(db)),
        vault=Vault.from_file(f"{db}.key"),
    )
    now = clock.time()
    for _ in range(13_000):
        pair = state.login("alice", now)
        state.create_mac_token(state.access[token_digest(pair.access_token)].family, "alice", ())
    state.db.close()
    clock.advance(100 + state.retention + 1)
    async with service(clock, db=str(db)) as svc:
        rounds = 0  # each login runs a purge pass, and adds a family of its own
        while len(svc.state.families) > rounds:
            await login(http, svc)
            rounds += 1
            assert rounds < 200
        assert rounds > 1  # more than one pass: no pass took the whole backlog
    assert _rows(db, "families").keys() == svc.state.families.keys()
    assert len(_rows(db, "mac_tokens")) == 0

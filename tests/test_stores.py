"""State stores: round trips, atomic and durable files, typed errors, crash durability."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import keyring.backend
import pytest
from _crash_writer import payload_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from keyrings.alt.file import PlaintextKeyring

from tokensdk import InvalidInput, StoreCorrupt, StoreError
from tokensdk.stores import FileStore, KeyringStore, MemoryStore, StateStore
from tokensdk.stores._codec import CorruptState, NewerFormat, decode_state, encode_state

pytestmark = pytest.mark.anyio

SECRET = "s3cr3t-refresh-token-do-not-print"
DOCUMENT: dict[str, Any] = {
    "version": 3,
    "username": "alice",
    "refreshToken": SECRET,
    "deadlines": {"access": 1_700_000_300.5, "refresh": 1_700_086_400},
    "macTokens": [{"name": "päyment ✓", "secret": SECRET, "factors": ["possession"]}],
    "empty": {},
    "none": None,
    "flag": True,
}
CRASH_WRITER = Path(__file__).with_name("_crash_writer.py")
IS_ROOT = os.geteuid() == 0


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _temps(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f".{path.name}.tmp-*"))


def _envelope(state: object, *, version: object = 1, fmt: object = "tokensdk.state") -> bytes:
    return json.dumps({"format": fmt, "version": version, "state": state}).encode()


def _write(path: Path, data: bytes, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


def _read(path: str | Path) -> bytes:
    return Path(path).read_bytes()


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@contextlib.contextmanager
def _flocked(path: Path, flags: int = fcntl.LOCK_EX) -> Iterator[None]:
    with open(path, "rb") as file:
        fcntl.flock(file.fileno(), flags)
        yield


@pytest.fixture
def state_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "session.json"


@pytest.fixture
def keyring_backend(tmp_path: Path) -> keyring.backend.KeyringBackend:
    backend = PlaintextKeyring()
    backend.file_path = str(tmp_path / "keyring.cfg")  # type: ignore[misc]
    return backend


@pytest.fixture(params=["memory", "file", "keyring"])
def store(
    request: pytest.FixtureRequest,
    state_path: Path,
    keyring_backend: keyring.backend.KeyringBackend,
) -> StateStore:
    if request.param == "memory":
        return MemoryStore()
    if request.param == "file":
        return FileStore(state_path)
    return KeyringStore("alice@test", backend=keyring_backend)


# -- every store ----------------------------------------------------------------------


async def test_store_round_trip(store: StateStore) -> None:
    assert isinstance(store, StateStore)
    assert await store.load() is None
    await store.save(DOCUMENT)
    assert await store.load() == DOCUMENT
    await store.save({"seq": 2})
    assert await store.load() == {"seq": 2}
    await store.clear()
    assert await store.load() is None
    await store.clear()  # clearing an empty store is fine
    assert await store.load() is None


async def test_store_copies_documents(store: StateStore) -> None:
    document: dict[str, Any] = {"tokens": [{"id": 1}]}
    await store.save(document)
    document["tokens"].append({"id": 2})
    loaded = await store.load()
    assert loaded == {"tokens": [{"id": 1}]}
    assert loaded is not None
    loaded["tokens"].clear()
    assert await store.load() == {"tokens": [{"id": 1}]}


@pytest.mark.parametrize(
    "bad",
    [{"key": b"bytes"}, {"key": float("nan")}, {"key": object()}, {"key": "\ud800"}],
    ids=["bytes", "nan", "object", "surrogate"],
)
async def test_store_refuses_non_json_documents(store: StateStore, bad: dict[str, Any]) -> None:
    await store.save({"seq": 1})
    with pytest.raises(InvalidInput):
        await store.save(bad)
    assert await store.load() == {"seq": 1}


async def test_store_last_of_concurrent_saves_wins(store: StateStore) -> None:
    async with anyio.create_task_group() as tg:
        for seq in range(30):
            tg.start_soon(store.save, {"seq": seq})
    assert await store.load() == {"seq": 29}


async def test_reprs_show_no_document(
    state_path: Path, keyring_backend: keyring.backend.KeyringBackend
) -> None:
    file_store = FileStore(state_path)
    keyring_store = KeyringStore("alice", backend=keyring_backend)
    memory_store = MemoryStore(DOCUMENT)
    await file_store.save(DOCUMENT)
    await keyring_store.save(DOCUMENT)
    assert repr(file_store) == f"FileStore({str(state_path)!r})"
    assert repr(keyring_store) == "KeyringStore('alice', service='tokensdk')"
    assert repr(memory_store) == "MemoryStore(empty=False)"
    assert repr(MemoryStore()) == "MemoryStore(empty=True)"


def test_memory_store_initial_document_is_copied() -> None:
    initial: dict[str, Any] = {"a": [1]}
    memory_store = MemoryStore(initial)
    initial["a"].append(2)
    assert memory_store.document == {"a": [1]}
    assert MemoryStore().document is None


# -- the codec (pure) ---------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)


@given(st.dictionaries(st.text(), json_values, max_size=5))
def test_codec_round_trip(document: dict[str, Any]) -> None:
    assert decode_state(encode_state(document)) == document


@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_codec_decodes_any_bytes_or_raises_typed(data: bytes) -> None:
    with contextlib.suppress(CorruptState, NewerFormat):
        assert isinstance(decode_state(data), dict)


def test_codec_envelope_and_versions() -> None:
    assert json.loads(encode_state({"a": 1})) == {
        "format": "tokensdk.state",
        "version": 1,
        "state": {"a": 1},
    }
    with pytest.raises(NewerFormat) as newer:
        decode_state(_envelope({}, version=2))
    assert newer.value.version == 2
    for version in (0, -1, "1", 1.0, True, None):
        with pytest.raises(CorruptState):
            decode_state(_envelope({}, version=version))
    with pytest.raises(InvalidInput):
        encode_state(["not", "a", "mapping"])  # type: ignore[arg-type]


# -- FileStore ------------------------------------------------------------------------


async def test_file_store_layout_and_modes(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "state.json"
    store = FileStore(os.fspath(path))
    assert store.path == path
    old_umask = os.umask(0)
    try:
        await store.save(DOCUMENT)
    finally:
        os.umask(old_umask)
    assert json.loads(path.read_bytes().decode("utf-8")) == {
        "format": "tokensdk.state",
        "version": 1,
        "state": DOCUMENT,
    }
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    assert _mode(path.parent.parent) == 0o700
    assert _temps(path) == []


async def test_file_store_tightens_an_open_file_on_save(state_path: Path) -> None:
    os.mkdir(state_path.parent)
    _write(state_path, _envelope({"seq": 1}), 0o644)
    assert await FileStore(state_path, check_permissions=False).load() == {"seq": 1}
    await FileStore(state_path).save({"seq": 2})
    assert _mode(state_path) == 0o600
    assert await FileStore(state_path).load() == {"seq": 2}


async def test_file_store_temp_file_is_private_and_locked(state_path: Path) -> None:
    os.mkdir(state_path.parent)
    store = FileStore(state_path)
    old_umask = os.umask(0)
    try:
        fd, tmp = store._create_temp()
    finally:
        os.umask(old_umask)
    try:
        assert tmp.parent == state_path.parent
        assert tmp.name.startswith(f".{state_path.name}.tmp-")
        assert _mode(tmp) == 0o600
        with pytest.raises(BlockingIOError), _flocked(tmp, fcntl.LOCK_EX | fcntl.LOCK_NB):
            pass
    finally:
        os.close(fd)


async def test_file_store_crash_before_replace_keeps_old_file(state_path: Path) -> None:
    store = FileStore(state_path)
    await store.save({"seq": 1})
    # What a writer killed between writing its temp file and os.replace leaves behind.
    leftover = state_path.with_name(f".{state_path.name}.tmp-deadbeefdeadbeef")
    _write(leftover, _envelope({"seq": 2})[:25])
    assert await FileStore(state_path).load() == {"seq": 1}
    assert _temps(state_path) == [leftover]
    await store.save({"seq": 3})  # the next save cleans up
    assert _temps(state_path) == []
    assert await FileStore(state_path).load() == {"seq": 3}


async def test_file_store_crash_during_first_save_leaves_nothing_stored(
    state_path: Path,
) -> None:
    _write(state_path.with_name(f".{state_path.name}.tmp-0000"), _envelope({"seq": 1}))
    store = FileStore(state_path)
    assert await store.load() is None
    await store.save({"seq": 2})
    assert _names(state_path.parent) == [state_path.name]


async def test_file_store_keeps_temp_files_of_live_writers(state_path: Path) -> None:
    store = FileStore(state_path)
    await store.save({"seq": 1})
    live = state_path.with_name(f".{state_path.name}.tmp-0123456789abcdef")
    _write(live, b"in progress")
    with _flocked(live):
        await store.save({"seq": 2})
        await store.clear()
        assert _temps(state_path) == [live]
    await store.save({"seq": 3})
    assert _temps(state_path) == []


async def test_file_store_clear_removes_abandoned_temps(state_path: Path) -> None:
    store = FileStore(state_path)
    await store.save({"seq": 1})
    _write(state_path.with_name(f".{state_path.name}.tmp-1111"), SECRET.encode())
    await store.clear()
    assert list(state_path.parent.iterdir()) == []


CORRUPT = {
    "bad json": b'{"format": "tokensdk.state", ' + SECRET.encode(),
    "truncated": _envelope({"refreshToken": SECRET})[:-7],
    "empty": b"",
    "blank": b" \n\t",
    "bad utf-8": b'{"format": "tokensdk.state", "version": 1, "state": {"k": "\xff\xfe"}}',
    "utf-16": _envelope({"refreshToken": SECRET}).decode().encode("utf-16"),
    "wrong format": _envelope({"refreshToken": SECRET}, fmt="other.state"),
    "no envelope": json.dumps({"refreshToken": SECRET}).encode(),
    "bad version": _envelope({"refreshToken": SECRET}, version="1"),
    "zero version": _envelope({"refreshToken": SECRET}, version=0),
    "state is a list": _envelope([SECRET]),
    "state is a string": _envelope(SECRET),
    "top level list": json.dumps([SECRET]).encode(),
    "nan": b'{"format": "tokensdk.state", "version": 1, "state": {"x": NaN}}',
    "huge float": b'{"format": "tokensdk.state", "version": 1, "state": {"x": 1e999}}',
    "deep nesting": b'{"format": "tokensdk.state", "version": 1, "state": '
    + b"[" * 100_000
    + b"]" * 100_000
    + b"}",
}


@pytest.mark.parametrize("content", CORRUPT.values(), ids=CORRUPT.keys())
async def test_file_store_moves_corrupt_file_aside(state_path: Path, content: bytes) -> None:
    os.mkdir(state_path.parent)
    _write(state_path, content)
    store = FileStore(state_path)
    with pytest.raises(StoreCorrupt) as caught:
        await store.load()
    moved_to = caught.value.moved_to
    assert moved_to is not None
    assert Path(moved_to).parent == state_path.parent
    assert Path(moved_to).name.startswith(f"{state_path.name}.corrupt-")
    assert _read(moved_to) == content  # nothing lost
    assert str(state_path) in str(caught.value)
    assert moved_to in str(caught.value)
    assert SECRET not in str(caught.value)
    assert state_path.name not in _names(state_path.parent)
    assert await store.load() is None
    await store.save({"seq": 1})
    assert await store.load() == {"seq": 1}


async def test_file_store_never_overwrites_an_earlier_corrupt_file(state_path: Path) -> None:
    os.mkdir(state_path.parent)
    store = FileStore(state_path)
    moved = []
    for content in (b"first", b"second", b"third"):
        _write(state_path, content)
        with pytest.raises(StoreCorrupt) as caught:
            await store.load()
        assert caught.value.moved_to is not None
        moved.append(caught.value.moved_to)
    assert [_read(p) for p in moved] == [b"first", b"second", b"third"]


async def test_file_store_leaves_newer_format_alone(state_path: Path) -> None:
    os.mkdir(state_path.parent)
    content = _envelope({"refreshToken": SECRET, "new": "fields"}, version=2)
    _write(state_path, content)
    with pytest.raises(StoreError) as caught:
        await FileStore(state_path).load()
    assert not isinstance(caught.value, StoreCorrupt)
    assert "newer tokensdk" in str(caught.value)
    assert SECRET not in str(caught.value)
    assert _read(state_path) == content
    assert _names(state_path.parent) == [state_path.name]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o666])
async def test_file_store_refuses_a_file_others_can_read(state_path: Path, mode: int) -> None:
    os.mkdir(state_path.parent)
    _write(state_path, _envelope({"refreshToken": SECRET}), mode)
    with pytest.raises(StoreError) as caught:
        await FileStore(state_path).load()
    assert not isinstance(caught.value, StoreCorrupt)
    assert f"chmod 600 {state_path}" in str(caught.value)
    assert SECRET not in str(caught.value)
    assert _mode(state_path) == mode  # untouched
    lenient = FileStore(state_path, check_permissions=False)
    assert await lenient.load() == {"refreshToken": SECRET}


async def test_file_store_directory_in_place_of_file(state_path: Path) -> None:
    _write(state_path / "inside", b"keep me")
    store = FileStore(state_path)
    with pytest.raises(StoreError, match="is a directory") as caught:
        await store.load()
    assert not isinstance(caught.value, StoreCorrupt)
    with pytest.raises(StoreError):
        await store.save({"seq": 1})
    with pytest.raises(StoreError, match="is a directory"):
        await store.clear()
    assert _read(state_path / "inside") == b"keep me"
    assert _temps(state_path) == []


async def test_file_store_fifo_in_place_of_file(state_path: Path) -> None:
    os.mkdir(state_path.parent)
    os.mkfifo(state_path, 0o600)
    with pytest.raises(StoreError, match="not a regular file"):
        await FileStore(state_path).load()
    assert stat.S_ISFIFO(os.stat(state_path).st_mode)


async def test_file_store_parent_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("")
    store = FileStore(tmp_path / "blocker" / "state.json")
    with pytest.raises(StoreError, match="cannot write state file"):
        await store.save({"seq": 1})
    with pytest.raises(StoreError, match="cannot read state file"):
        await store.load()


@pytest.mark.skipif(IS_ROOT, reason="root reads and writes files regardless of their mode")
async def test_file_store_permission_denied(state_path: Path) -> None:
    store = FileStore(state_path)
    await store.save({"refreshToken": SECRET})
    os.chmod(state_path, 0o000)
    try:
        with pytest.raises(StoreError, match="Permission denied") as caught:
            await store.load()
        assert not isinstance(caught.value, StoreCorrupt)
    finally:
        os.chmod(state_path, 0o600)
    os.chmod(state_path.parent, 0o500)
    try:
        with pytest.raises(StoreError, match="cannot write state file"):
            await store.save({"seq": 2})
    finally:
        os.chmod(state_path.parent, 0o700)
    assert await store.load() == {"refreshToken": SECRET}


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=300))
def test_file_store_load_of_any_content_is_typed(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "fuzz.json"
    _write(path, content)

    async def load() -> None:
        moved_to = None
        try:
            assert isinstance(await FileStore(path).load(), dict)
        except StoreCorrupt as exc:
            moved_to = exc.moved_to
            assert moved_to is not None, "a corrupt file must be moved aside"
        if moved_to is not None:
            os.unlink(moved_to)

    anyio.run(load)


# -- KeyringStore ---------------------------------------------------------------------


async def test_keyring_store_entries_are_separate(
    keyring_backend: keyring.backend.KeyringBackend,
) -> None:
    alice = KeyringStore("alice", backend=keyring_backend)
    bob = KeyringStore("bob", backend=keyring_backend)
    other = KeyringStore("alice", service="other-app", backend=keyring_backend)
    await alice.save({"who": "alice"})
    await bob.save({"who": "bob"})
    assert await other.load() is None
    assert (alice.name, alice.service) == ("alice", "tokensdk")
    assert await alice.load() == {"who": "alice"}
    await alice.clear()
    assert await bob.load() == {"who": "bob"}
    raw = keyring_backend.get_password("tokensdk", "bob")
    assert json.loads(raw) == {"format": "tokensdk.state", "version": 1, "state": {"who": "bob"}}


@pytest.mark.parametrize(
    "content",
    [b"not json " + SECRET.encode(), _envelope([SECRET]), _envelope({"a": SECRET})[:-3], b" "],
    ids=["junk", "state list", "truncated", "blank"],
)
async def test_keyring_store_deletes_corrupt_entry(
    keyring_backend: keyring.backend.KeyringBackend, content: bytes
) -> None:
    keyring_backend.set_password("tokensdk", "alice", content.decode())
    store = KeyringStore("alice", backend=keyring_backend)
    with pytest.raises(StoreCorrupt) as caught:
        await store.load()
    assert caught.value.moved_to is None
    assert "tokensdk/alice" in str(caught.value)
    assert SECRET not in str(caught.value)
    assert keyring_backend.get_password("tokensdk", "alice") is None
    assert await store.load() is None


async def test_keyring_store_leaves_newer_format_alone(
    keyring_backend: keyring.backend.KeyringBackend,
) -> None:
    content = _envelope({"a": SECRET}, version=7).decode()
    keyring_backend.set_password("tokensdk", "alice", content)
    with pytest.raises(StoreError, match="newer tokensdk") as caught:
        await KeyringStore("alice", backend=keyring_backend).load()
    assert not isinstance(caught.value, StoreCorrupt)
    assert keyring_backend.get_password("tokensdk", "alice") == content


async def test_keyring_store_backend_failures_are_store_errors(tmp_path: Path) -> None:
    broken = PlaintextKeyring()
    broken.file_path = str(tmp_path)  # type: ignore[misc]  # a directory: cannot be written
    store = KeyringStore("alice", backend=broken)
    with pytest.raises(StoreError, match="cannot write keyring entry tokensdk/alice"):
        await store.save({"refreshToken": SECRET})
    garbled = PlaintextKeyring()
    garbled.file_path = str(tmp_path / "garbled.cfg")  # type: ignore[misc]
    _write(tmp_path / "garbled.cfg", b"no section header\n")
    store = KeyringStore("alice", backend=garbled)
    with pytest.raises(StoreError, match="cannot read keyring entry tokensdk/alice"):
        await store.load()
    with pytest.raises(StoreError, match="cannot delete keyring entry tokensdk/alice"):
        await store.clear()


def test_keyring_store_needs_a_name_and_the_keyring_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(InvalidInput):
        KeyringStore("")
    with pytest.raises(InvalidInput):
        KeyringStore("alice", service="")
    monkeypatch.setitem(sys.modules, "keyring", None)  # as if not installed
    with pytest.raises(ImportError, match=r"tokensdk\[keyring\]"):
        KeyringStore("alice")


# -- crash durability (issue 7) -------------------------------------------------------


def _crash_settings() -> tuple[int, int]:
    iterations = int(os.environ.get("TOKENSDK_CRASH_ITERATIONS", "20"))
    seed = int(os.environ.get("TOKENSDK_SEED", str(random.randrange(2**32))))
    return iterations, seed


@pytest.fixture
def crash_rng() -> tuple[int, random.Random]:
    iterations, seed = _crash_settings()
    print(f"crash test: TOKENSDK_SEED={seed} TOKENSDK_CRASH_ITERATIONS={iterations}")
    return iterations, random.Random(seed)


def _kill_after_acks(argv: list[str], env: dict[str, str], acks: int, log: Path) -> int:
    """Run the crash writer, SIGKILL it after ``acks`` acks; return the last seq it acked."""
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(CRASH_WRITER), *argv],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
        )
    assert proc.stdout is not None
    last = b""
    try:
        for _ in range(acks):
            last = proc.stdout.readline()
            if not last:
                proc.wait()
                pytest.fail(f"crash writer exited: {log.read_text()}")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # The writer may have acknowledged more than we read before it died.
    with proc.stdout:
        # A line cut short by the kill has no newline: it does not count.
        complete = [last, *proc.stdout.read().split(b"\n")[:-1]]
    return int(complete[-1])


def _check_document(document: dict[str, Any] | None, acked: int) -> int:
    assert document is not None, "acknowledged state lost"
    seq = document["seq"]
    # The last acknowledged one or the one that was in flight: never older, never torn.
    assert acked <= seq <= acked + 1
    assert document == {"seq": seq, "payload": payload_for(seq)}
    return int(seq)


def test_file_store_survives_sigkill(tmp_path: Path, crash_rng: tuple[int, random.Random]) -> None:
    iterations, rng = crash_rng
    path = tmp_path / "crash" / "state.json"
    env = dict(os.environ)
    for _ in range(iterations):
        acked = _kill_after_acks(["file", str(path)], env, rng.randint(1, 20), tmp_path / "log")
        document = anyio.run(FileStore(path).load)
        _check_document(document, acked)
        assert _mode(path) == 0o600
        for leftover in _temps(path):  # a writer killed mid-save
            assert _mode(leftover) == 0o600
        assert len(_temps(path)) <= 1


def test_keyring_store_after_sigkill_is_complete_or_cleanly_lost(
    tmp_path: Path, crash_rng: tuple[int, random.Random]
) -> None:
    """A kill never makes KeyringStore return a torn or older document, or raise untyped.

    The headless keyrings.alt file backend rewrites its file in place (truncate, then
    write), so a kill in the middle can lose the whole entry: that is the backend's
    durability, not the store's (OS keychains are transactional). The store must then
    report the loss as None or a typed StoreError, never hand out a torn document.
    """
    iterations, rng = crash_rng
    # The writer uses keyring's default backend, configured through its environment:
    # nothing global changes in this process.
    env = dict(os.environ)
    env["PYTHON_KEYRING_BACKEND"] = "keyrings.alt.file.PlaintextKeyring"
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    backend = PlaintextKeyring()
    keyring_file = tmp_path / "data" / "python_keyring" / backend.filename
    backend.file_path = str(keyring_file)  # type: ignore[misc]
    complete = 0
    iterations = max(2, iterations // 2)  # each spawn also imports keyring: slower
    for _ in range(iterations):
        acked = _kill_after_acks(["keyring", "crash"], env, rng.randint(1, 20), tmp_path / "log")
        try:
            document = anyio.run(KeyringStore("crash", backend=backend).load)
        except StoreError:
            document = None
        if document is None:
            keyring_file.unlink(missing_ok=True)  # lost by the backend: start over
        else:
            _check_document(document, acked)
            complete += 1
    # Most kills land outside the backend's short rewrite window.
    assert complete >= iterations // 2


# -- the session loading a bad store ----------------------------------------------------


def _moved_aside(path: Path) -> list[Path]:
    """The corrupt copies beside ``path``; asserts that ``path`` itself is gone."""
    assert not path.exists()
    return sorted(path.parent.glob(f"{path.name}.corrupt-*"))


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",  # the envelope is broken: the store itself moves it aside
        _envelope({"version": 1, "status": "active", "credentials": {"username": 5}}),
        _envelope({"version": 1, "macTokens": {"t": {"tokenSecret": "%%"}}}),
    ],
)
async def test_a_session_moves_an_unusable_state_file_aside_and_starts_empty(
    state_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    from tokensdk import Session, SessionStatus

    _write(state_path, content)
    caplog.set_level("WARNING", "tokensdk")
    async with Session("http://127.0.0.1:9", store=FileStore(state_path)) as session:
        assert session.status is SessionStatus.LOGGED_OUT
    (moved,) = _moved_aside(state_path)
    assert _read(moved) == content  # kept, untouched, for whoever wants to look
    (record,) = [r for r in caplog.records if "could not be loaded" in r.getMessage()]
    assert f"moved aside to {moved}" in record.getMessage()


async def test_a_session_deletes_an_unusable_keyring_entry(tmp_path: Path) -> None:
    from tokensdk import Session, SessionStatus

    backend = PlaintextKeyring()
    backend.file_path = str(tmp_path / "keyring.cfg")
    store = KeyringStore("alice@test", backend=backend)
    await store.save({"version": 1, "status": "active", "credentials": []})
    async with Session("http://127.0.0.1:9", store=store) as session:
        assert session.status is SessionStatus.LOGGED_OUT
    assert backend.get_password(store.service, store.name) is None

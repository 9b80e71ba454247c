"""FileStore as a store shared by processes on one host: serials, compare-and-set, lock, watch.

Every cross-process claim is checked with real OS processes (and a real SIGKILL).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

from tokensdk.stores import FileStore

pytestmark = pytest.mark.anyio

_PY = [sys.executable, "-c"]


async def test_save_if_is_a_compare_and_set(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "s.json")
    assert await store.load_versioned() == (None, 0)
    assert await store.save_if({"v": 1}, None) == 1
    assert await store.save_if({"v": "late"}, None) is None
    assert await store.save_if({"v": 2}, 1) == 2
    assert await store.save_if({"v": "stale"}, 1) is None
    await store.save({"v": 3})  # a plain save is numbered too
    assert await store.load_versioned() == ({"v": 3}, 3)
    assert await store.load() == {"v": 3}


async def test_a_file_from_an_earlier_version_has_serial_zero(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_bytes(b'{"format":"tokensdk.state","version":1,"state":{"old":true}}\n')
    path.chmod(0o600)
    store = FileStore(path)
    assert await store.load_versioned() == ({"old": True}, 0)
    assert await store.save_if({"new": True}, 0) == 1


_INCREMENTER = textwrap.dedent(
    """
    import sys, anyio
    from tokensdk.stores import FileStore

    async def main() -> None:
        store, rounds, conflicts = FileStore(sys.argv[1]), int(sys.argv[2]), 0
        for _ in range(rounds):
            while True:
                document, serial = await store.load_versioned()
                count = (document or {}).get("count", 0)
                if await store.save_if({"count": count + 1}, serial) is not None:
                    break
                conflicts += 1
        print(conflicts)

    anyio.run(main)
    """
)


def test_racing_processes_lose_no_update(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    rounds, workers = 40, 4
    procs = [
        subprocess.Popen([*_PY, _INCREMENTER, str(path), str(rounds)], stdout=subprocess.PIPE)
        for _ in range(workers)
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
    document, serial = anyio.run(FileStore(path).load_versioned)
    assert document == {"count": rounds * workers}
    assert serial == rounds * workers


_HOLDER = textwrap.dedent(
    """
    import sys, anyio
    from tokensdk.stores import FileStore

    async def main() -> None:
        lease = await FileStore(sys.argv[1]).try_lock(30.0)
        print("held" if lease is not None else "busy", flush=True)
        await anyio.sleep_forever()

    anyio.run(main)
    """
)


async def test_refresh_lock_is_exclusive_and_freed_by_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    async with await anyio.open_process([*_PY, _HOLDER, str(path)]) as holder:
        try:
            assert holder.stdout is not None
            with anyio.fail_after(60):
                line = await holder.stdout.receive()
            assert line.strip() == b"held"
            store = FileStore(path)
            assert await store.try_lock(30.0) is None
            assert await store.lock_remaining() is not None
            holder.send_signal(signal.SIGKILL)
            await holder.wait()
            # The kernel frees an flock with its holder: no lease to wait out.
            assert await store.lock_remaining() is None
            lease = await store.try_lock(30.0)
            assert lease is not None
            other = FileStore(path)  # another session of this process is another holder
            assert await other.try_lock(30.0) is None
            assert await lease.still_held()
            await lease.release()
            await lease.release()  # idempotent
            assert not await lease.still_held()
            again = await other.try_lock(30.0)
            assert again is not None
            await again.release()
        finally:
            if holder.returncode is None:
                holder.kill()


async def test_changes_sees_writes_by_another_process(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    store = FileStore(path)
    await store.save({"v": 0})
    writer = textwrap.dedent(
        """
        import sys, anyio
        from tokensdk.stores import FileStore
        anyio.run(FileStore(sys.argv[1]).save, {"v": 1})
        """
    )
    async with store.changes(interval=0.02) as serials:
        done = await anyio.run_process([*_PY, writer, str(path)])
        assert done.returncode == 0
        with anyio.fail_after(10):
            serial = await anext(aiter(serials))
    assert serial == 2
    assert await store.load() == {"v": 1}


async def test_side_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    store = FileStore(path)
    await store.save({"v": 1})
    lease = await store.try_lock(1.0)
    assert lease is not None
    await lease.release()
    for name in ("s.json", "s.json.lock", "s.json.refresh-lock"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o600, name

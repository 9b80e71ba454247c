"""Crash-durability helper: a fork server whose children save through a store until killed.

Run as ``python tests/_crash_writer.py file <path>`` or ``... keyring <name>`` (the
keyring backend then comes from the environment, e.g. ``PYTHON_KEYRING_BACKEND``).
The process imports the store once, then serves commands read from stdin:

``run``
    Fork a writer. It loads the stored ``seq`` and reports ``ready <seq>`` (0 when
    nothing is stored; ``ready 0 <ErrorType>`` when the load raised a StoreError), then
    saves ``{"seq": n, "payload": ...}`` for n = seq+1, seq+2, ..., reporting
    ``begin <n>`` before each save and ``ack <n> <ns>`` once the save returned (with
    the save's duration in nanoseconds), then idles as long before the next one.
``kill``
    SIGKILL that writer, reap it and report ``killed <status>`` (``-9``: killed by
    the signal; anything else: the writer ended on its own, see stderr).

Every report is one ``write`` of a short line to stdout, so the lines of the writer
and of the server never interleave, and all of a dead writer's lines come before the
server's ``killed``. Forking a warmed-up process instead of starting one per kill
makes a kill cost milliseconds, so a test can afford hundreds of them.
"""

from __future__ import annotations

import gc
import hashlib
import importlib.util
import os
import signal
import sys
import time
import traceback
import types

import anyio


def _bare_package(name: str) -> None:
    """Register package ``name`` without running its ``__init__``.

    ``import tokensdk`` pulls in the whole SDK (aiohttp, ...) and would make the
    start of this helper several times slower; the stores need none of it.
    """
    spec = importlib.util.find_spec(name)
    assert spec is not None
    assert spec.submodule_search_locations is not None
    package = types.ModuleType(name)
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules.setdefault(name, package)


if __name__ == "__main__":
    _bare_package("tokensdk")

from tokensdk._errors import StoreError  # noqa: E402
from tokensdk.stores import FileStore, KeyringStore, StateStore  # noqa: E402


def payload_for(seq: int) -> str:
    """Return the payload saved with ``seq``: a few KB, different for every seq."""
    return hashlib.sha256(str(seq).encode()).hexdigest() * (20 + seq % 80)


def _report(line: str) -> None:
    # One unbuffered write: a line is in the pipe, whole, before the next step runs.
    os.write(1, f"{line}\n".encode())


async def _write_forever(kind: str, target: str) -> None:
    store: StateStore = FileStore(target) if kind == "file" else KeyringStore(target)
    try:
        document = await store.load()
    except StoreError as exc:
        # Reported, not fatal: the test decides whether this store may fail to load.
        _report(f"ready 0 {type(exc).__name__}")
        seq = 0
    else:
        seq = 0 if document is None else int(document["seq"])
        _report(f"ready {seq}")
    while True:
        seq += 1
        document = {"seq": seq, "payload": payload_for(seq)}
        _report(f"begin {seq}")
        started = time.perf_counter_ns()
        await store.save(document)
        took = time.perf_counter_ns() - started
        _report(f"ack {seq} {took}")
        # Idle as long as the save took, as an application does between changes: a
        # kill then lands between saves about as often as inside one.
        await anyio.sleep(took / 1e9)


def _writer(kind: str, target: str) -> None:
    """The forked child: write until killed; never return into the server loop."""
    try:
        anyio.run(_write_forever, kind, target)
    except BaseException:
        traceback.print_exc()  # into the log the test shows when a writer ends by itself
    os._exit(1)


async def _nothing() -> None:
    pass


def _serve(kind: str, target: str) -> None:
    # Warm up once what every writer needs, so that forking it costs milliseconds:
    # anyio imports its event loop backend on the first run (a loop that is closed
    # again, and no thread, before any fork).
    anyio.run(_nothing)
    if kind == "keyring":
        import keyring

        keyring.get_keyring()  # resolves the backend from the environment
    # Nothing the writers share is garbage: keep the collector from touching (and so
    # copying) every page of the parent in every child.
    gc.freeze()
    child = 0
    try:
        for command in sys.stdin:
            command = command.strip()
            if command == "run" and not child:
                child = os.fork()
                if child == 0:
                    _writer(kind, target)
            elif command == "kill" and child:
                status = _kill(child)
                child = 0
                _report(f"killed {status}")
            else:
                raise SystemExit(f"crash writer: unexpected command {command!r}")
    finally:
        # The test went away (stdin closed, or it failed): no writer outlives us.
        if child:
            _kill(child)


def _kill(child: int) -> int:
    os.kill(child, signal.SIGKILL)
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    # A permissive umask proves the 0600 modes are explicit, not inherited.
    os.umask(0)
    _serve(sys.argv[1], sys.argv[2])

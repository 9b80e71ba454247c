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

import hashlib
import importlib.util
import os
import sys
import time
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

from _forkserver import report, serve  # noqa: E402

from tokensdk._errors import StoreError  # noqa: E402
from tokensdk.stores import FileStore, KeyringStore, StateStore  # noqa: E402


def payload_for(seq: int) -> str:
    """Return the payload saved with ``seq``: a few KB, different for every seq."""
    return hashlib.sha256(str(seq).encode()).hexdigest() * (20 + seq % 80)


async def _write_forever(kind: str, target: str) -> None:
    store: StateStore = FileStore(target) if kind == "file" else KeyringStore(target)
    try:
        document = await store.load()
    except StoreError as exc:
        # Reported, not fatal: the test decides whether this store may fail to load.
        report(f"ready 0 {type(exc).__name__}")
        seq = 0
    else:
        seq = 0 if document is None else int(document["seq"])
        report(f"ready {seq}")
    while True:
        seq += 1
        document = {"seq": seq, "payload": payload_for(seq)}
        report(f"begin {seq}")
        started = time.perf_counter_ns()
        await store.save(document)
        took = time.perf_counter_ns() - started
        report(f"ack {seq} {took}")
        # Idle as long as the save took, as an application does between changes: a
        # kill then lands between saves about as often as inside one.
        await anyio.sleep(took / 1e9)


def _serve(kind: str, target: str) -> None:
    if kind == "keyring":
        import keyring

        keyring.get_keyring()  # resolves the backend from the environment, once
    serve("crash writer", _write_forever, kind, target)


if __name__ == "__main__":
    # A permissive umask proves the 0600 modes are explicit, not inherited.
    os.umask(0)
    _serve(sys.argv[1], sys.argv[2])

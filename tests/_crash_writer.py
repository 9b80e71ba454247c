"""Crash-durability helper: save documents through a store in a loop until killed.

Run as ``python tests/_crash_writer.py file <path>`` or ``... keyring <name>`` (the
keyring backend then comes from the environment, e.g. ``PYTHON_KEYRING_BACKEND``).
It resumes from the stored ``seq``, then saves ``{"seq": n, "payload": ...}`` for
n = seq+1, seq+2, ... and prints each ``n`` (flushed) only after its save returned,
i.e. once it is acknowledged. The test SIGKILLs it at a random point.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import types

import anyio


def _bare_package(name: str) -> None:
    """Register package ``name`` without running its ``__init__``.

    ``import tokensdk`` pulls in the whole SDK (aiohttp, ...) and would make every
    spawn of this helper several times slower; the stores need none of it.
    """
    spec = importlib.util.find_spec(name)
    assert spec is not None
    assert spec.submodule_search_locations is not None
    package = types.ModuleType(name)
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules.setdefault(name, package)


if __name__ == "__main__":
    _bare_package("tokensdk")

from tokensdk.stores import FileStore, KeyringStore, StateStore  # noqa: E402


def payload_for(seq: int) -> str:
    """Return the payload saved with ``seq``: a few KB, different for every seq."""
    return hashlib.sha256(str(seq).encode()).hexdigest() * (20 + seq % 80)


async def _main(kind: str, target: str) -> None:
    store: StateStore = FileStore(target) if kind == "file" else KeyringStore(target)
    document = await store.load()
    seq = 0 if document is None else int(document["seq"])
    while True:
        seq += 1
        await store.save({"seq": seq, "payload": payload_for(seq)})
        sys.stdout.write(f"{seq}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    # A permissive umask proves the 0600 modes are explicit, not inherited.
    os.umask(0)
    anyio.run(_main, sys.argv[1], sys.argv[2])

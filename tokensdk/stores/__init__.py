"""State persistence backends: where a session keeps its state between runs.

A backend implements :class:`StateStore` (``load``/``save``/``clear`` of one
JSON-able document). Shipped: :class:`MemoryStore`, :class:`FileStore` (one JSON
file, atomic and durable, mode 0600) and :class:`KeyringStore` (the OS keychain,
needs the ``keyring`` extra) and :class:`RedisStore` (one credential shared
by a fleet, needs the ``redis`` extra). :func:`read_state_file` reads a ``FileStore``'s
file without changing anything.
"""

from __future__ import annotations

import typing

from tokensdk import _lazy
from tokensdk.stores._base import StateStore
from tokensdk.stores._file import FileStore, read_state_file
from tokensdk.stores._memory import MemoryStore

# The stores with an optional dependency are imported when first named (see _lazy).
if typing.TYPE_CHECKING:
    from tokensdk.stores._keyring import KeyringStore
    from tokensdk.stores._redis import RedisStore
else:
    __getattr__, __dir__ = _lazy.attach(
        __name__,
        {
            "KeyringStore": "tokensdk.stores._keyring",
            "RedisStore": "tokensdk.stores._redis",
        },
    )

__all__ = [
    "FileStore",
    "KeyringStore",
    "MemoryStore",
    "RedisStore",
    "StateStore",
    "read_state_file",
]

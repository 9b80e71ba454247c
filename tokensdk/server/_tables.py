"""The persisted table mirror: a dict of records written through to one database table.

Writes go into the persistence's queue and reach the disk at the next commit,
which the HTTP layer awaits before it answers (see :mod:`tokensdk.server._db`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

import attrs

from tokensdk.server._db import Persistence

__all__ = ["Table", "delete_some"]

_R = TypeVar("_R")


class Table(Mapping[str, _R]):
    """A dict of records mirrored to one persistence table."""

    def __init__(self, kind: str, cls: type[_R], db: Persistence) -> None:
        self._kind = kind
        self._db = db
        self._data: dict[str, _R] = {k: cls(**v) for k, v in db.load(kind).items()}

    def __getitem__(self, key: str) -> _R:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def put(self, key: str, record: _R) -> None:
        self._data[key] = record
        self._db.put(self._kind, key, attrs.asdict(record))  # type: ignore[arg-type]

    def delete(self, key: str) -> None:
        if self._data.pop(key, None) is not None:
            self._db.delete(self._kind, key)


def delete_some(table: Table[Any], keys: Iterator[str], limit: int) -> int:
    """Delete at most ``limit`` of ``keys`` from ``table``; return how many went."""
    chosen = list(itertools.islice(keys, max(limit, 0)))
    for key in chosen:
        table.delete(key)
    return len(chosen)

"""The refresh storm of rows 2 and 12: many callers released at once into the refresh window."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence

import anyio
import attrs

__all__ = ["Storms", "fmt_counts", "storm", "timed"]


def fmt_counts(values: Sequence[int]) -> str:
    """The distinct values, sorted: ``1, 2``."""
    return ", ".join(str(v) for v in sorted(set(values)))


async def timed(op: Callable[[], Awaitable[object]]) -> float:
    """The wall time of one ``await op()``."""
    start = time.perf_counter()
    await op()
    return time.perf_counter() - start


async def storm(
    n: int, call: Callable[[], Awaitable[object]], release: Callable[[], None]
) -> float:
    """Park ``n`` callers on a gate, ``release()`` (e.g. the token enters the refresh
    window), open the gate; the wall time until every caller has returned."""
    gate = anyio.Event()

    async def caller() -> None:
        await gate.wait()
        await call()

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(caller)
        await anyio.sleep(0.01)  # every caller is parked on the gate
        start = time.perf_counter()
        release()
        gate.set()
    return time.perf_counter() - start


@attrs.frozen
class Storms:
    """What a series of storms measured, one entry per storm.

    Attributes:
        refreshes: Refresh requests the server saw during the storm.
        storm: Wall time of the storm.
        alone: Wall time of one refresh alone, just before the storm.
    """

    refreshes: list[int] = attrs.Factory(list)
    storm: list[float] = attrs.Factory(list)
    alone: list[float] = attrs.Factory(list)

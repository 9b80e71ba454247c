"""Timing helpers, the result row and the table: the plumbing every row shares."""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence

import attrs

__all__ = [
    "Comparison",
    "Row",
    "at_least",
    "at_most",
    "compare_async",
    "compare_hot_path",
    "compare_sync",
    "fmt_ratio",
    "fmt_time",
    "render_table",
    "repeat",
]


@attrs.frozen
class Row:
    """One line of the results table.

    Attributes:
        key: The row's id (``1``, ``2``, ... with a letter for sub-rows).
        name: What is measured.
        result: The measurement, as printed (ratio with spread, counts, ...).
        target: The goal, as printed.
        met: True/False against the target, None where there is no target.
        note: Context (absolute numbers, caveats).
    """

    key: str
    name: str
    result: str
    target: str = ""
    met: bool | None = None
    note: str = ""

    @property
    def status(self) -> str:
        """``met``, ``MISSED`` or ``-``."""
        return "-" if self.met is None else "met" if self.met else "MISSED"


@attrs.frozen
class Comparison:
    """Per-operation times of several candidates measured in interleaved rounds.

    Attributes:
        per_op: Candidate name -> the per-operation seconds of every round.
    """

    per_op: dict[str, list[float]]

    def median(self, name: str) -> float:
        """Median seconds per operation of one candidate."""
        return statistics.median(self.per_op[name])

    def ratios(self, name: str, base: str) -> list[float]:
        """Per-round ratios ``name / base`` (same round, so drift cancels)."""
        return [a / b for a, b in zip(self.per_op[name], self.per_op[base], strict=True)]

    def ratio(self, name: str, base: str) -> tuple[float, float, float]:
        """Median ratio ``name / base`` with the 25th and 75th percentile of the rounds."""
        return spread(self.ratios(name, base))

    def speedup(self, name: str, base: str) -> tuple[float, float, float]:
        """Median speed-up of ``name`` over ``base`` (``base / name`` per round), with IQR."""
        return spread([1 / r for r in self.ratios(name, base)])

    def medians(self, *names: str) -> str:
        """``sdk 1.20 µs, raw 1.10 µs``: the median time of each named candidate."""
        return ", ".join(f"{name} {fmt_time(self.median(name))}" for name in names)


def at_most(
    key: str, name: str, value: tuple[float, float, float], limit: float, note: str = ""
) -> Row:
    """A row whose result is a ratio (median and IQR) that must stay at or below ``limit``."""
    return Row(key, name, fmt_ratio(value), f"<= {limit:g}x", value[0] <= limit, note)


def at_least(
    key: str, name: str, value: tuple[float, float, float], limit: float, note: str = ""
) -> Row:
    """A row whose result is a ratio (median and IQR) that must reach at least ``limit``."""
    return Row(key, name, fmt_ratio(value), f">= {limit:g}x", value[0] >= limit, note)


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """Median, 25th and 75th percentile (the extremes when there are few values)."""
    ordered = sorted(values)
    if len(ordered) < 4:
        return statistics.median(ordered), ordered[0], ordered[-1]
    q1, q2, q3 = statistics.quantiles(ordered, n=4)
    return q2, q1, q3


def fmt_ratio(value: tuple[float, float, float], unit: str = "x") -> str:
    """``1.23x [1.20-1.27]``: median and interquartile range."""
    mid, low, high = value
    return f"{mid:.2f}{unit} [{low:.2f}-{high:.2f}]"


def fmt_time(seconds: float) -> str:
    """A duration with a readable unit (a negative one keeps its sign)."""
    if seconds < 0:
        return f"-{fmt_time(-seconds)}"
    if seconds < 1e-6:
        return f"{seconds * 1e9:.0f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def repeat(op: Callable[..., Awaitable[object]], *args: object) -> Callable[[int], Awaitable[None]]:
    """A candidate for :func:`compare_async` that awaits ``op(*args)`` ``n`` times."""

    async def run(n: int) -> None:
        for _ in range(n):
            await op(*args)

    async def run_bare(n: int) -> None:
        for _ in range(n):
            await op()

    # ``op(*args)`` with no args costs ~15 ns more than ``op()``: on a ~400 ns hot path
    # that would be the loop's cost, not the candidate's.
    return run if args else run_bare


def _interleaved(names: list[str], rounds: int) -> Iterator[str]:
    """Each candidate once a round, so drift hits all alike."""
    for r in range(rounds):
        # Rotate who goes first each round, so no candidate always gets a warm cache.
        k = r % len(names)
        yield from names[k:] + names[:k]


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No collection in the middle of a timed loop."""
    gc_was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if gc_was:
            gc.enable()


def compare_sync(
    candidates: dict[str, Callable[[], object]], *, number: int, rounds: int
) -> Comparison:
    """Time ``number`` calls of each candidate per round, candidates interleaved.

    Args:
        candidates: Name -> a function of no arguments.
        number: Calls per candidate per round.
        rounds: Rounds.

    Returns:
        Per-operation times of every round.
    """
    names = list(candidates)
    per_op: dict[str, list[float]] = {n: [] for n in names}
    loop_range = range(number)
    for fn in candidates.values():  # warm up
        for _ in range(min(number, 100)):
            fn()
    with _gc_paused():
        for name in _interleaved(names, rounds):
            fn = candidates[name]
            start = time.perf_counter()
            for _ in loop_range:
                fn()
            per_op[name].append((time.perf_counter() - start) / number)
    return Comparison(per_op)


async def compare_async(
    candidates: dict[str, Callable[[int], Awaitable[None]]], *, number: int, rounds: int
) -> Comparison:
    """Like :func:`compare_sync` for async candidates that run a loop of ``n`` operations.

    Each candidate is ``async def run(n)`` with its own loop, so the loop's cost is
    the same for all and no extra await is added per operation.
    """
    names = list(candidates)
    per_op: dict[str, list[float]] = {n: [] for n in names}
    for run in candidates.values():  # warm up
        await run(min(number, 100))
    with _gc_paused():
        for name in _interleaved(names, rounds):
            start = time.perf_counter()
            await candidates[name](number)
            per_op[name].append((time.perf_counter() - start) / number)
    return Comparison(per_op)


async def compare_hot_path(
    candidates: dict[str, Callable[[int], Awaitable[None]]], *, quick: bool
) -> Comparison:
    """:func:`compare_async` sized for a sub-microsecond ``access_token()`` (rows 1, 11a, 12a)."""
    return await compare_async(
        candidates, number=5_000 if quick else 50_000, rounds=7 if quick else 25
    )


def render_table(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| # | Benchmark | Result | Target | Status | Notes |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = (row.key, row.name, row.result, row.target or "-", row.status, row.note)
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)

"""Rows about the process and the disk: persistence (9) and import time (10)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from benchmarks._harness import Row, fmt_ratio, spread
from tokensdk._persist import CoalescingSaver
from tokensdk.stores import FileStore

__all__ = ["import_rows", "persistence_rows"]


def _document(i: int) -> dict[str, Any]:
    # About the size of a real session state: a token pair and a few asset tokens.
    return {
        "version": 1,
        "change": i,
        "credentials": {"accessToken": f"a{i:032d}", "refreshToken": f"r{i:032d}"},
        "accessTokens": [
            {"assetId": f"asset-{k}", "token": "v4.public." + "x" * 200} for k in range(5)
        ],
    }


async def persistence_rows(quick: bool) -> list[Row]:
    """Row 9: 10,000 changes per second into a FileStore through the CoalescingSaver."""
    rate, seconds = 10_000, (0.5 if quick else 2.0)
    errors: list[BaseException] = []
    with tempfile.TemporaryDirectory() as tmp:
        store = FileStore(Path(tmp) / "state.json")
        saver = CoalescingSaver(store, on_error=errors.append)
        submitted = 0
        async with anyio.create_task_group() as tg:
            tg.start_soon(saver.run)
            start = time.perf_counter()
            while (elapsed := time.perf_counter() - start) < seconds:
                due = int(elapsed * rate)
                while submitted < due:
                    submitted += 1
                    saver.submit(_document(submitted))
                await anyio.sleep(0.0005)
            submit_time = time.perf_counter() - start
            await saver.flush()
            tg.cancel_scope.cancel()
        flushed = time.perf_counter() - start
        equal = await store.load() == _document(submitted)
    writes = saver.writes
    return [
        Row(
            "9",
            "Persistence: 10,000 changes/s into a FileStore (CoalescingSaver)",
            f"{submitted} changes -> {writes} writes ({submitted / max(writes, 1):.0f} per write); "
            f"final file {'equals' if equal else 'DIFFERS FROM'} the final state",
            "coalesced; file == final state",
            equal and writes < submitted and not errors,
            f"{submitted / submit_time:.0f} changes/s offered over {submit_time:.2f} s; "
            f"flushed {flushed - submit_time:.3f} s later; {len(errors)} store errors",
        )
    ]


_TOP = re.compile(r"import time:\s+\d+ \|\s+(\d+) \| (\S.*)$")


def _import_once(code: str, env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds of a fresh interpreter that runs ``code``, and its import µs."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    wall = time.perf_counter() - start
    # Top-level entries (no indentation before the name) sum to the imports' total.
    total = sum(
        int(m.group(1))
        for line in done.stderr.splitlines()
        if (m := _TOP.match(line)) and not m.group(2).startswith(" ")
    )
    return wall, total / 1e6


def import_rows(quick: bool) -> list[Row]:
    """Row 10: ``import tokensdk`` vs importing its heavy dependencies alone."""
    runs = 3 if quick else 15
    sdk = "import tokensdk"
    deps = "import aiohttp, pyseto, anyio"
    walls: dict[str, list[float]] = {sdk: [], deps: []}
    imports: dict[str, list[float]] = {sdk: [], deps: []}
    with tempfile.TemporaryDirectory() as cache:
        # Both sides load cached bytecode, as an installed package does (pip compiles
        # it). Without this, an editable checkout under PYTHONDONTWRITEBYTECODE
        # compiled tokensdk's sources in every run while the dependencies loaded
        # theirs from site-packages, and the row timed mostly the compiler.
        env = {**os.environ, "PYTHONPYCACHEPREFIX": cache}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        for code in (sdk, deps):
            _import_once(code, env)  # write the bytecode, warm the file system cache
        for r in range(runs):
            for code in (sdk, deps) if r % 2 == 0 else (deps, sdk):
                wall, total = _import_once(code, env)
                walls[code].append(wall)
                imports[code].append(total)
    wall_ratio = spread([a / b for a, b in zip(walls[sdk], walls[deps], strict=True)])
    import_ratio = spread([a / b for a, b in zip(imports[sdk], imports[deps], strict=True)])
    return [
        Row(
            "10",
            "Import time: `import tokensdk` vs `import aiohttp, pyseto, anyio` (process wall)",
            fmt_ratio(wall_ratio),
            "<= 1.10x",
            wall_ratio[0] <= 1.10,
            f"imports alone (-X importtime): {fmt_ratio(import_ratio)}; "
            f"sdk {spread(imports[sdk])[0] * 1e3:.0f} ms, "
            f"deps {spread(imports[deps])[0] * 1e3:.0f} ms; bytecode cached for both",
        )
    ]

"""Smoke test of the benchmark suite: it runs and prints every row (numbers are not checked)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROWS = (
    "1a",
    "1b",
    "2a",
    "2b",
    "2c",
    "3",
    "3b",
    "4",
    "5",
    "5b",
    "5c",
    "6a",
    "6b",
    "6c",
    "7a",
    "7b",
    "7c",
    "8a",
    "8b",
    "8c",
    "9",
    "10",
    "11a",
    "11b",
    "11c",
    "11d",
    "11e",
    "12a",
    "12b",
    "12c",
    "12d",
)


def test_quick_run_prints_every_row(tmp_path: Path) -> None:
    output = tmp_path / "RESULTS.md"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    printed = {line.split("|")[1].strip() for line in table[1:]}
    assert set(ROWS) == printed
    assert "error:" not in done.stdout
    page = output.read_text(encoding="utf-8")
    assert "| 10 |" in page
    assert "Python:" in page

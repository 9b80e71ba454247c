"""The fork server behind the crash tests: a warmed-up process forks children to SIGKILL.

Both sides live here. A crash helper script (``_crash_writer.py``,
``_crash_refresher.py``, ``_crash_service.py``) calls :func:`serve` with the
function its children run; the test drives it through :class:`ForkServer`.

The script reads commands from stdin:

``run``
    Fork a child (one at a time); the child reports what it does on stdout.
``kill``
    SIGKILL that child, reap it and report ``killed <status>`` (``-9``: killed by the
    signal; anything else: the child ended on its own, see stderr).

Every report is one ``write`` of a short line to stdout, so the lines of a child and
of the server never interleave, and all of a dead child's lines come before the
server's ``killed``. Forking a warmed-up process instead of starting one per kill
makes a kill cost milliseconds, so a test can afford hundreds of them.

Only the standard library and anyio here: ``_crash_writer.py`` must not import the SDK.
"""

from __future__ import annotations

import gc
import os
import select
import signal
import subprocess
import sys
import traceback
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

import anyio

#: A guard against a hung child only: a fork and a kill take milliseconds.
GUARD = 60.0


def report(line: str) -> None:
    """Write one report line to stdout in one unbuffered write."""
    # One write: a line is in the pipe, whole, before the next step runs.
    os.write(1, f"{line}\n".encode())


def _child(main: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> NoReturn:
    """The forked child: run ``main`` until killed; never return into the command loop."""
    try:
        anyio.run(main, *args)
    except BaseException:
        traceback.print_exc()  # into the log the test shows when a child ends by itself
    os._exit(1)


async def _nothing() -> None:
    pass


def _kill(child: int) -> int:
    os.kill(child, signal.SIGKILL)
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status)


def serve(name: str, main: Callable[..., Awaitable[Any]], *args: Any) -> None:
    """Serve ``run``/``kill`` from stdin; each child runs ``anyio.run(main, *args)``."""
    # anyio imports its event loop backend on the first run: do it once, before any
    # fork (the loop is closed again and no thread is left).
    anyio.run(_nothing)
    # Nothing the children share is garbage: keep the collector from touching (and
    # so copying) every page of the parent in every child.
    gc.freeze()
    child = 0
    try:
        for command in sys.stdin:
            command = command.strip()
            if command == "run" and not child:
                child = os.fork()
                if child == 0:
                    _child(main, args)
            elif command == "kill" and child:
                status = _kill(child)
                child = 0
                report(f"killed {status}")
            else:
                raise SystemExit(f"{name}: unexpected command {command!r}")
    finally:
        # The test went away (stdin closed, or it failed): no child outlives us.
        if child:
            _kill(child)


class ForkServer:
    """The test's side: starts a crash helper script and talks to it.

    Args:
        script: The helper script.
        argv: Its arguments.
        log: Where its stderr goes (shown when it fails).
        env: Its environment (this process's when None).
    """

    def __init__(
        self,
        script: Path,
        argv: list[str],
        log: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = script.stem.lstrip("_").replace("_", " ")
        self._log = log
        with log.open("wb") as stderr:
            self._proc = subprocess.Popen(
                [sys.executable, str(script), *argv],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=None if env is None else dict(env),
            )
        assert self._proc.stdin is not None
        assert self._proc.stdout is not None
        self._stdin = self._proc.stdin
        self._out = self._proc.stdout.fileno()
        self._buffer = b""

    def __enter__(self) -> ForkServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the server (it kills a child still running, then exits)."""
        self._stdin.close()
        try:
            self._proc.wait(GUARD)
        finally:
            if self._proc.returncode is None:
                self._proc.kill()
                self._proc.wait()
            assert self._proc.stdout is not None
            self._proc.stdout.close()

    def send(self, command: str) -> None:
        """Send ``run`` or ``kill``."""
        self._stdin.write(f"{command}\n".encode())
        self._stdin.flush()

    def line(self) -> list[str]:
        """The next report line, split into words (fails the test on a hang or an exit)."""
        while b"\n" not in self._buffer:
            readable, _, _ = select.select([self._out], [], [], GUARD)
            chunk = os.read(self._out, 1 << 16) if readable else b""
            if not chunk:
                self.fail("hung or exited")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode().split()

    def kill(self, take: Callable[[list[str]], None] = lambda words: None) -> None:
        """SIGKILL the child; hand the lines it wrote before it died to ``take``."""
        self.send("kill")
        while (words := self.line())[0] != "killed":
            take(words)
        if words[1] != str(-signal.SIGKILL):
            self.fail(f"child ended by itself ({words[1]})")

    def fail(self, what: str) -> NoReturn:
        import pytest  # here: the helper scripts import this module, not pytest

        pytest.fail(f"{self.name}: {what}: {self._log.read_text()}")

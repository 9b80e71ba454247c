"""Crash helper: a fork server whose children run the reference service on one SQLite file.

Run as ``python tests/_crash_service.py <db path>``. The process imports the
service once, then serves commands read from stdin:

``run``
    Fork a child that runs the service (user ``alice``, password ``wonderland``,
    state in the database file) on a free loopback port and reports
    ``ready <url>`` once it listens.
``kill``
    SIGKILL that child, reap it and report ``killed <status>`` (``-9``: killed by
    the signal; anything else: the child ended on its own, see stderr).

Every report is one ``write`` of a short line to stdout. Forking a warmed-up
process instead of starting ``python -m tokensdk serve`` for every kill makes a
restart cost milliseconds, so a test can afford many; the child is the same
service ``serve`` runs (``running_service`` with a database), killed for real.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import traceback

import anyio

from tokensdk.server import ServiceConfig, running_service

#: The one user of the crash service.
USER, PASSWORD = "alice", "wonderland"


def _report(line: str) -> None:
    os.write(1, f"{line}\n".encode())


async def _run(db: str) -> None:
    config = ServiceConfig(
        users={USER: PASSWORD},
        db=db,
        scrypt_n=2**10,
        # Long lifetimes: nothing expires while the test runs, whatever the load.
        access_ttl=3600,
        refresh_ttl=86400,
        login_rate_limit=10**6,
    )
    async with running_service(config) as svc:
        _report(f"ready {svc.url}")
        await anyio.sleep_forever()


def _child(db: str) -> None:
    """The forked child: serve until killed; never return into the command loop."""
    try:
        anyio.run(_run, db)
    except BaseException:
        traceback.print_exc()  # into the log the test shows when a child ends by itself
    os._exit(1)


async def _nothing() -> None:
    pass


def _kill(child: int) -> int:
    os.kill(child, signal.SIGKILL)
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status)


def _serve(db: str) -> None:
    # anyio imports its event loop backend on the first run: do it once, before any
    # fork (the loop is closed again and no thread is left).
    anyio.run(_nothing)
    gc.freeze()  # keep the collector from copying every page of the parent per child
    child = 0
    try:
        for command in sys.stdin:
            command = command.strip()
            if command == "run" and not child:
                child = os.fork()
                if child == 0:
                    _child(db)
            elif command == "kill" and child:
                status = _kill(child)
                child = 0
                _report(f"killed {status}")
            else:
                raise SystemExit(f"crash service: unexpected command {command!r}")
    finally:
        if child:  # the test went away: no service outlives us
            _kill(child)


if __name__ == "__main__":
    _serve(sys.argv[1])

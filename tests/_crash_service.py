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

import sys

import anyio
from _forkserver import report, serve

from tokensdk.server import ServiceConfig, running_service

#: The one user of the crash service.
USER, PASSWORD = "alice", "wonderland"


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
        report(f"ready {svc.url}")
        await anyio.sleep_forever()


if __name__ == "__main__":
    serve("crash service", _run, sys.argv[1])

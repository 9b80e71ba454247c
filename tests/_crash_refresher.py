"""Crash-safe refresh helper: a fork server whose children refresh a session until killed.

Run as ``python tests/_crash_refresher.py <url> <state path>``: the reference service
runs at ``url`` (user ``alice``, see ``_service.PASSWORDS``). The process imports the
SDK once, then serves commands read from stdin, like ``_crash_writer.py``:

``run``
    Fork a bot. It opens ``Session(url, store=FileStore(path))`` and reports
    ``ready <status> <pending>`` (the loaded status, and ``1`` when the stored state
    held a refresh under way, else ``0``), logs in when nothing is stored
    (``login``), then calls ``token_refresh()`` for n = 1, 2, ..., reporting
    ``begin <n>`` before each call and ``ack <n> <ns>`` once it returned (with its
    duration in nanoseconds), then idles as long. A lost session is reported as
    ``lost <reason>`` (the bot then waits to be killed); another error as
    ``error <type>`` (and it carries on).
``kill``
    SIGKILL that bot, reap it and report ``killed <status>``.
"""

from __future__ import annotations

import sys
import time

import anyio
from _forkserver import report, serve

from tokensdk import FileStore, Session, SessionLost, SessionStatus, TokenSDKError

PASSWORD = "wonderland"  # alice's, as in _service.PASSWORDS


async def _refresh_forever(url: str, path: str) -> None:
    async with Session(url, store=FileStore(path), timeout=5.0) as session:
        snapshot = session.snapshot
        # getattr: the same helper runs against a tokensdk without the field, to show
        # that this test fails there.
        pending = getattr(snapshot, "pending_refresh", None) is not None
        report(f"ready {snapshot.status.value} {int(pending)}")
        if snapshot.status is SessionStatus.LOGGED_OUT:
            await session.login("alice", PASSWORD)
            report("login")
        elif snapshot.status is SessionStatus.NEEDS_LOGIN:
            report("lost stored")
            await anyio.sleep_forever()
        seq = 0
        while True:
            seq += 1
            report(f"begin {seq}")
            started = time.perf_counter_ns()
            try:
                await session.token_refresh()
            except SessionLost as exc:
                report(f"lost {exc.reason}")
                await anyio.sleep_forever()
            except TokenSDKError as exc:
                report(f"error {type(exc).__name__}")
                continue
            took = time.perf_counter_ns() - started
            report(f"ack {seq} {took}")
            # Idle about as long as a refresh takes: a kill then lands between
            # refreshes about as often as inside one.
            await anyio.sleep(took / 1e9)


if __name__ == "__main__":
    serve("crash refresher", _refresh_forever, sys.argv[1], sys.argv[2])

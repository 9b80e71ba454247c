"""A long-running bot: logs in once, then keeps calling the API for as long as it runs.

    python examples/bot.py --duration 5          # first run: logs in with the password
    python examples/bot.py --duration 5          # later runs: resume, no password

The session lives in a FileStore, so a restarted bot resumes without a password;
every request goes through the aiohttp middleware, which attaches a fresh access
token (the session refreshes it in the background) and recovers once from a 401.
With no ``--url`` the reference service runs in-process, its state in a SQLite file
next to the bot's state so the second run's service still knows the session.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path

import aiohttp
import anyio
from _embedded import USERS, token_service

import tokensdk


async def run(url: str | None, state: Path, duration: float, interval: float) -> None:
    state.parent.mkdir(parents=True, exist_ok=True)
    db = str(state.parent / "service.sqlite3")
    async with (
        token_service(url, db=db) as base,
        tokensdk.Session(base, store=tokensdk.FileStore(state)) as session,
    ):
        if session.status is tokensdk.SessionStatus.ACTIVE:
            try:
                await session.login_with_token()
                print(f"resumed as {session.username}, no password needed")
            except tokensdk.SessionLost:
                print("the saved session is gone")
        if session.status is not tokensdk.SessionStatus.ACTIVE:
            password = os.environ.get("BOT_PASSWORD", USERS["alice"])
            await session.login("alice", password)
            print(f"logged in as {session.username} with the password")
        calls = 0
        async with (
            session.events() as events,
            aiohttp.ClientSession(middlewares=(session.middleware(),)) as http,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(report, events)
            with anyio.move_on_after(duration):
                while True:
                    async with http.get(f"{base}/v1/me") as response:
                        response.raise_for_status()
                        me = await response.json()
                    calls += 1
                    print(f"call {calls}: /v1/me says {me['username']}")
                    await anyio.sleep(interval)
            tg.cancel_scope.cancel()
        print(f"stopping after {calls} calls; state kept in {state}")


async def report(events: tokensdk.EventStream) -> None:
    """Print what the session does in the background (refreshes, losses)."""
    async for event in events:
        if event.type in (tokensdk.EventType.REFRESHED, tokensdk.EventType.SESSION_LOST):
            print(f"{event.type.value} {event.detail or ''}".rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="token service (default: run one in-process)")
    parser.add_argument("--state", type=Path, default=Path(".tokensdk-bot/state.json"))
    parser.add_argument("--duration", type=float, default=float("inf"), help="seconds to run")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between calls")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(run, args.url, args.state, args.duration, args.interval)


if __name__ == "__main__":
    main()

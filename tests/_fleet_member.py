"""Fleet member: one OS process sharing a credential with its siblings until time is up.

Run as ``python tests/_fleet_member.py <url> <store> <seconds> [options]``:

``<store>``
    ``file:<path>`` (a FileStore) or ``redis:<redis url>#<name>`` (a RedisStore).
``--login``
    Log in as alice when the shared state holds no session (one member does).
``--lease S``
    The refresh lease in seconds (default 10).
``--local``
    No coordination: the in-process coordinator, as every store had before fleet
    mode (shows what the fleet tests guard against).
``--callers N``
    Concurrent ``access_token()`` callers (default 10).
``--oauth``
    ``<url>`` is an OAuth 2.0 provider (the tests' oidc-provider): the session speaks
    ``tokensdk.OAuth2`` (client ``app``, password grant with ``offline_access``,
    rotating refresh tokens) and the checker presents tokens at the provider's
    ``/_harness/resource``.

A member without ``--login`` expects the session in the shared state (the test
starts it after the first member said ``ready``). The member reports ``ready`` once
its session is active, then runs the callers for
``<seconds>`` while a checker presents a fresh token at ``GET /v1/me`` every 100 ms,
and prints one JSON line of counters: ``tokens``, ``checked``, ``refused``, ``lost``,
``errors`` (by type), ``refreshed_events``, ``adopted`` (pairs that arrived as
changes written by a sibling). The SDK's own requests carry an
``X-Fleet-Member: <pid>`` header.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import time

import aiohttp
import anyio

from tokensdk import (
    EventType,
    FileStore,
    LocalCoordinator,
    OAuth2,
    RedisStore,
    Session,
    SessionLost,
    SessionStatus,
    StateStore,
    StoreCoordinator,
    TokenSDKError,
)
from tokensdk._coordinator import Coordinator

PASSWORD = "wonderland"  # alice's, as in _service.PASSWORDS


def _report(line: str) -> None:
    os.write(1, f"{line}\n".encode())


def _store(spec: str) -> StateStore:
    kind, _, rest = spec.partition(":")
    if kind == "file":
        return FileStore(rest)
    if kind == "redis":
        url, _, name = rest.rpartition("#")
        return RedisStore(url, name=name)
    raise SystemExit(f"unknown store {spec!r}")


def _backend(args: argparse.Namespace) -> str | OAuth2:
    if not args.oauth:
        return str(args.url)
    # The harness's confidential client and its scopes; offline_access for a refresh token.
    return OAuth2(
        args.url, client_id="app", client_secret="app-secret", scope="openid offline_access"
    )


async def _member(args: argparse.Namespace) -> dict[str, object]:
    store = _store(args.store)
    coordinator: Coordinator = (
        LocalCoordinator(store) if args.local else StoreCoordinator(store, lease=args.lease)
    )
    counts: collections.Counter[str] = collections.Counter()
    errors: collections.Counter[str] = collections.Counter()
    # The SDK's own calls carry the member's pid, so a proxy can tell who asked.
    own = aiohttp.ClientSession(headers={"X-Fleet-Member": str(os.getpid())})
    async with (
        own,
        Session(_backend(args), coordinator=coordinator, timeout=5.0, http=own) as session,
        aiohttp.ClientSession() as http,
    ):
        events = session.events(100_000)
        if args.login and session.status is not SessionStatus.ACTIVE:
            await session.login("alice", PASSWORD)
        if session.status is not SessionStatus.ACTIVE:
            raise SystemExit("the shared state holds no session: start a --login member first")
        _report("ready")
        check_path = "/_harness/resource" if args.oauth else "/v1/me"
        stop = time.monotonic() + args.seconds
        lost = anyio.Event()

        async def call() -> str | None:
            try:
                return await session.access_token()
            except SessionLost:
                counts["lost"] += 1
                lost.set()
            except TokenSDKError as exc:
                errors[type(exc).__name__] += 1
            return None

        async def caller() -> None:
            while time.monotonic() < stop and not lost.is_set():
                if await call() is not None:
                    counts["tokens"] += 1
                await anyio.sleep(random.uniform(0.005, 0.05))

        async def checker() -> None:
            while time.monotonic() < stop and not lost.is_set():
                token = await call()
                if token is not None:
                    headers = {"Authorization": f"Bearer {token}"}
                    async with http.get(args.url + check_path, headers=headers) as reply:
                        counts["checked" if reply.status == 200 else "refused"] += 1
                await anyio.sleep(0.1)

        async with anyio.create_task_group() as tg:
            for _ in range(args.callers):
                tg.start_soon(caller)
            tg.start_soon(checker)
        await events.aclose()
        async for event in events:
            if event.type is EventType.REFRESHED:
                counts["refreshed_events"] += 1
    if isinstance(store, RedisStore):
        await store.aclose()
    return {**counts, "errors": dict(errors)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("store")
    parser.add_argument("seconds", type=float)
    parser.add_argument("--login", action="store_true")
    parser.add_argument("--local", action="store_true")
    parser.add_argument("--lease", type=float, default=10.0)
    parser.add_argument("--callers", type=int, default=10)
    parser.add_argument("--oauth", action="store_true")
    args = parser.parse_args()
    result = anyio.run(_member, args)
    _report(json.dumps(result))


if __name__ == "__main__":
    main()

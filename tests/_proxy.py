"""A scriptable fault-injecting HTTP proxy between the SDK and the reference service.

Real sockets on loopback: the SDK talks to the proxy, the proxy forwards to the
service unless a fault is scheduled for the request.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
import anyio
from aiohttp import web

Fault = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def unavailable(request: web.Request) -> web.StreamResponse:
    """503 with a contract error body."""
    return web.json_response({"error": "unavailable", "code": 503, "message": "down"}, status=503)


def rate_limited(retry_after: int = 1) -> Fault:
    """429 with Retry-After."""

    async def fault(request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {"error": "rate_limited", "code": 429, "message": "slow down"},
            status=429,
            headers={"Retry-After": str(retry_after)},
        )

    return fault


async def html_ok(request: web.Request) -> web.StreamResponse:
    """An HTML page with status 200 (a captive portal, a misrouted proxy)."""
    return web.Response(text="<html><body>Oops</body></html>", content_type="text/html")


class FaultProxy:
    """Forwards to ``upstream``; ``faults`` is a queue of faults for the next requests.

    Attributes:
        seen: Requests received, by path.
        faulted: Requests answered by a fault, by path.
        request_seen: Set whenever a request arrives (replace it to wait again).
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.faults: deque[Fault] = deque()
        self.sticky: Fault | None = None
        self.only_paths: set[str] | None = None
        self.seen: Counter[str] = Counter()
        self.faulted: Counter[str] = Counter()
        self.request_seen = anyio.Event()
        self.url = ""
        self._http: aiohttp.ClientSession | None = None

    async def wait_for(self, path: str, count: int = 1) -> None:
        """Wait until ``count`` requests for ``path`` have arrived."""
        while self.seen[path] < count:
            self.request_seen = anyio.Event()
            await self.request_seen.wait()

    def fail_next(self, count: int, fault: Fault = unavailable) -> None:
        """Answer the next ``count`` (matching) requests with ``fault``."""
        self.faults.extend([fault] * count)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen[request.path] += 1
        self.request_seen.set()
        matches = self.only_paths is None or request.path in self.only_paths
        fault = None
        if matches and self.faults:
            fault = self.faults.popleft()
        elif matches and self.sticky is not None:
            fault = self.sticky
        if fault is not None:
            self.faulted[request.path] += 1
            return await fault(request)
        assert self._http is not None
        body = await request.read()
        headers = {
            k: v for k, v in request.headers.items() if k.lower() not in {"host", "content-length"}
        }
        async with self._http.request(
            request.method, self.upstream + request.path_qs, data=body or None, headers=headers
        ) as upstream:
            payload = await upstream.read()
            out_headers = {
                k: v
                for k, v in upstream.headers.items()
                if k.lower()
                not in {"content-length", "transfer-encoding", "connection", "content-encoding"}
            }
            return web.Response(body=payload, status=upstream.status, headers=out_headers)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[FaultProxy]:
        """Serve on a free loopback port until the block ends."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        self._http = aiohttp.ClientSession()
        try:
            yield self
        finally:
            await self._http.close()
            await runner.cleanup()

"""A scriptable fault-injecting HTTP proxy between the SDK and the reference service.

Real sockets on loopback: the SDK talks to the proxy, the proxy forwards to the
service unless a fault is scheduled for the request.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

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


def truncated_json(request: web.Request) -> Awaitable[web.StreamResponse]:
    """Status 200, JSON content type, a body cut in the middle of an object."""
    return _static(200, b'{"accessToken": "v4.public.abc", "accessExp', "application/json")


def wrong_content_type(request: web.Request) -> Awaitable[web.StreamResponse]:
    """Status 200, a plain-text body that is not JSON."""
    return _static(200, b"accessToken=abc&accessExpire=60", "text/plain")


def json_body(payload: bytes, status: int = 200, content_type: str = "application/json") -> Fault:
    """Answer exactly ``payload`` (any bytes) with ``status``."""
    return lambda request: _static(status, payload, content_type)


def huge_body(size: int = 5 << 20) -> Fault:
    """Status 200, a JSON object padded with ``size`` bytes of whitespace."""
    return json_body(b"{" + b" " * size + b"}")


async def _static(status: int, body: bytes, content_type: str) -> web.StreamResponse:
    return web.Response(body=body, status=status, headers={"Content-Type": content_type})


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
        self.released = anyio.Event()
        #: Bodies the service produced that ``reset_mid_response`` kept from the client.
        self.lost: list[bytes] = []
        self._http: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._port = 0

    async def wait_for(self, path: str, count: int = 1) -> None:
        """Wait until ``count`` requests for ``path`` have arrived."""
        while self.seen[path] < count:
            self.request_seen = anyio.Event()
            await self.request_seen.wait()

    def fail_next(self, count: int, fault: Fault = unavailable) -> None:
        """Answer the next ``count`` (matching) requests with ``fault``."""
        self.faults.extend([fault] * count)

    # -- faults that need the proxy ----------------------------------------------------

    async def hang(self, request: web.Request) -> web.StreamResponse:
        """Never answer (until the proxy stops): the client's timeout must cut it."""
        await self.released.wait()
        raise ConnectionResetError("proxy stopped")

    async def reset_mid_response(self, request: web.Request) -> web.StreamResponse:
        """Forward (the service processes it), then send half the answer and abort."""
        status, headers, payload = await self.forward(request)
        self.lost.append(payload)
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = len(payload)
        await response.prepare(request)
        await response.write(payload[: len(payload) // 2])
        assert request.transport is not None
        request.transport.abort()
        return response

    async def reset_before_forward(self, request: web.Request) -> web.StreamResponse:
        """Abort the connection without forwarding (the service never sees it)."""
        await request.read()
        assert request.transport is not None
        request.transport.abort()
        return web.Response(status=500)

    def delayed(self, clock: Any, seconds: float) -> Fault:
        """Forward after ``seconds`` on ``clock`` (a ManualClock moved by the test)."""

        async def fault(request: web.Request) -> web.StreamResponse:
            await clock.sleep_until(clock.monotonic() + seconds)
            return await self._forward_response(request)

        return fault

    def relabelled(self, content_type: str) -> Fault:
        """Forward, but answer with another Content-Type (the body unchanged)."""

        async def fault(request: web.Request) -> web.StreamResponse:
            status, headers, payload = await self.forward(request)
            headers["Content-Type"] = content_type
            return web.Response(body=payload, status=status, headers=headers)

        return fault

    async def refuse(self) -> None:
        """Close the listening socket: new connections are refused until :meth:`accept`."""
        assert self._site is not None
        assert self._runner is not None
        await self._site.stop()
        self._site = None
        server = self._runner.server
        for handler in list(server.connections if server is not None else ()):
            handler.force_close()

    async def accept(self) -> None:
        """Listen again on the same port after :meth:`refuse`."""
        assert self._runner is not None
        assert self._site is None
        self._site = web.TCPSite(self._runner, "127.0.0.1", self._port, reuse_address=True)
        await self._site.start()

    async def forward(self, request: web.Request) -> tuple[int, dict[str, str], bytes]:
        """Send ``request`` upstream; return its status, headers and body."""
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
            return upstream.status, out_headers, payload

    async def _forward_response(self, request: web.Request) -> web.StreamResponse:
        status, headers, payload = await self.forward(request)
        return web.Response(body=payload, status=status, headers=headers)

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
        return await self._forward_response(request)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[FaultProxy]:
        """Serve on a free loopback port until the block ends."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, reuse_address=True)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._runner, self._site, self._port = runner, site, port
        self.url = f"http://127.0.0.1:{port}"
        self._http = aiohttp.ClientSession()
        try:
            yield self
        finally:
            self.released.set()
            await self._http.close()
            await runner.cleanup()

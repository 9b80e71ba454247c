"""A scriptable fault-injecting HTTP proxy between the SDK and the reference service.

Real sockets on loopback: the SDK talks to the proxy, the proxy forwards to the
service unless a fault is scheduled for the request. The proxy logs every request
(:attr:`FaultProxy.hits`) and counts the ones it is still working on in an
:class:`Activity`, so that a test moving a fake clock can wait until nothing is
in flight before it moves time (see ``Driver`` in ``test_faults.py``).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import aiohttp
import anyio
import attrs
from aiohttp import web

from tokensdk import Clock

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


class Activity:
    """Work under way that a fake clock must not move under, counted by kind.

    Kinds: ``proxy`` (requests the proxy is working on, forwarding included),
    ``parked`` (proxy requests deliberately waiting on the fake clock), and whatever
    the test counts itself (the SDK's HTTP attempts, its own calls to the service).
    """

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._changed = anyio.Event()

    @contextmanager
    def busy(self, kind: str) -> Iterator[None]:
        """Count one piece of work of ``kind`` while the block runs."""
        self.counts[kind] += 1
        try:
            yield
        finally:
            self.counts[kind] -= 1
            self._changed.set()

    @contextmanager
    def parked(self) -> Iterator[None]:
        """Count the current proxy request as waiting on the fake clock, not working."""
        self.counts["proxy"] -= 1
        self.counts["parked"] += 1
        self._changed.set()  # a parked request lets the clock move: tell the driver
        try:
            yield
        finally:
            self.counts["parked"] -= 1
            self.counts["proxy"] += 1

    def quiet(self, *kinds: str) -> bool:
        """True when nothing of ``kinds`` (and no proxy work) is under way.

        A request parked on the fake clock is still under way for its client (one of
        ``kinds``) but does not keep the clock still: moving the clock is what ends it.
        """
        counts = self.counts
        own = sum(counts[kind] for kind in kinds)
        return counts["proxy"] == 0 and own == counts["parked"]

    async def changed(self) -> None:
        """Wait until some work ends (or gets parked)."""
        if self._changed.is_set():  # an old change, seen already by whoever checked
            self._changed = anyio.Event()
        await self._changed.wait()


@attrs.define
class Hit:
    """One request the proxy received.

    Attributes:
        path: The request path.
        at: When it arrived, on the proxy's clock (the test's fake clock if given).
        body: The request body.
        faulted: Whether a fault answered it (instead of the service).
        status: The status the proxy answered with; None if it never answered.
        retry_after: The Retry-After header it answered with, if any.
        cut_after: Real seconds from arrival until the client hung up, for a
            request the proxy was still holding (``hang``, ``late``).
    """

    path: str
    at: float
    body: bytes
    faulted: bool
    status: int | None = None
    retry_after: str | None = None
    cut_after: float | None = None


_HIT = web.RequestKey("hit", Hit)


class FaultProxy:
    """Forwards to ``upstream``; ``faults`` is a queue of faults for the next requests.

    Args:
        upstream: The service root URL.
        clock: Stamps :attr:`hits` (the test's fake clock); real monotonic time otherwise.
        cancel_on_hangup: Cancel a request's handler when its client hangs up (as
            aiohttp's ``handler_cancellation``), so that a held request ends with it.

    Attributes:
        seen: Requests received, by path.
        faulted: Requests answered by a fault, by path.
        hits: Every request received, in order.
        activity: The requests being worked on (and any other work the test counts).
        request_seen: Set whenever a request arrives (replace it to wait again).
    """

    def __init__(
        self, upstream: str, *, clock: Clock | None = None, cancel_on_hangup: bool = False
    ) -> None:
        self.upstream = upstream
        self.faults: deque[Fault] = deque()
        self.sticky: Fault | None = None
        self.only_paths: set[str] | None = None
        self.seen: Counter[str] = Counter()
        self.faulted: Counter[str] = Counter()
        self.hits: list[Hit] = []
        self.activity = Activity()
        self.request_seen = anyio.Event()
        self.url = ""
        self.released = anyio.Event()
        #: Bodies the service produced that ``reset_mid_response`` kept from the client.
        self.lost: list[bytes] = []
        self._clock = clock
        self._cancel_on_hangup = cancel_on_hangup
        self._http: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._port = 0
        self._late: set[asyncio.Task[Any]] = set()

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
        """Never answer: the client's timeout must cut it.

        The handler ends when the client hangs up (with ``cancel_on_hangup``; the
        time that took goes to the request's :attr:`Hit.cut_after`), or with a 503
        when the proxy stops, so that no connection is left open and nothing is
        logged as an error.
        """
        started = time.monotonic()
        try:
            await self.released.wait()
        except asyncio.CancelledError:
            _hit(request).cut_after = time.monotonic() - started
            raise
        return web.Response(status=503)

    def late(self, seconds: float) -> Fault:
        """Forward after ``seconds`` of real time, even when the client has given up.

        Use it with a client timeout shorter than ``seconds``: the service still acts
        on the request (a slow link), but its answer comes too late for the client.
        """

        async def fault(request: web.Request) -> web.StreamResponse:
            started = time.monotonic()
            task = asyncio.ensure_future(self._late_forward(request, seconds))
            self._late.add(task)
            task.add_done_callback(self._late.discard)
            try:
                # shield: a hang-up cancels this handler, not the forward behind it
                status, headers, payload = await asyncio.shield(task)
            except asyncio.CancelledError:
                _hit(request).cut_after = time.monotonic() - started
                raise
            return web.Response(body=payload, status=status, headers=headers)

        return fault

    async def _late_forward(
        self, request: web.Request, seconds: float
    ) -> tuple[int, dict[str, str], bytes]:
        with self.activity.busy("proxy"):
            # Real time on purpose: this is the fault (a slow hop), and the client's
            # HTTP timeout it must outlast is real time too.
            await anyio.sleep(seconds)
            return await self.forward(request)

    async def reset_mid_response(self, request: web.Request) -> web.StreamResponse:
        """Forward (the service acts on it), then send half the answer and abort.

        An answer without a body (204) is cut before its status line: sent whole,
        its headers alone would be a complete answer.
        """
        status, headers, payload = await self.forward(request)
        self.lost.append(payload)
        response = web.StreamResponse(status=status, headers=headers)
        if payload:
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

    def delayed(self, seconds: float) -> Fault:
        """Forward after ``seconds`` on the proxy's clock (a ManualClock moved by the test)."""
        clock = self._clock
        assert clock is not None, "give the proxy the test's clock"

        async def fault(request: web.Request) -> web.StreamResponse:
            with self.activity.parked():
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

    def _now(self) -> float:
        return self._clock.monotonic() if self._clock is not None else time.monotonic()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        with self.activity.busy("proxy"):
            self.seen[request.path] += 1
            self.request_seen.set()
            matches = self.only_paths is None or request.path in self.only_paths
            fault = None
            if matches and self.faults:
                fault = self.faults.popleft()
            elif matches and self.sticky is not None:
                fault = self.sticky
            hit = Hit(request.path, self._now(), await request.read(), fault is not None)
            self.hits.append(hit)
            request[_HIT] = hit
            if fault is not None:
                self.faulted[request.path] += 1
                response = await fault(request)
            else:
                response = await self._forward_response(request)
            hit.status = response.status
            hit.retry_after = response.headers.get("Retry-After")
            return response

    @asynccontextmanager
    async def running(self) -> AsyncIterator[FaultProxy]:
        """Serve on a free loopback port until the block ends."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, handler_cancellation=self._cancel_on_hangup)
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
            if self._late:
                await asyncio.wait(self._late)
            # Handlers first: one still forwarding (a request that came in as the
            # client closed) must not find the upstream session closed under it.
            await runner.cleanup()
            await self._http.close()


def _hit(request: web.Request) -> Hit:
    return request[_HIT]

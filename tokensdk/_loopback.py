"""A one-shot loopback HTTP listener for the authorization code redirect (RFC 8252 §7.3).

It listens on ``127.0.0.1`` (an ephemeral port by default), answers the browser's
redirect to ``/callback`` with a short page, and hands the query to whoever waits.
Requests with another ``state`` (a stray tab, a forged request) are refused and do
not end the wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import TracebackType

from aiohttp import web

__all__ = ["LoopbackRedirect"]

_DONE = "<!doctype html><title>Signed in</title><p>Signed in. You can close this window.</p>"


class LoopbackRedirect:
    """Receive one authorization redirect on a loopback port.

    Args:
        state: The ``state`` the authorization request carried.
        port: The port (0: any free one).
    """

    def __init__(self, state: str, port: int = 0) -> None:
        self._state = state
        self._port = port
        self._runner: web.AppRunner | None = None
        self._result: asyncio.Future[Mapping[str, str]] | None = None
        self.redirect_uri = ""

    async def __aenter__(self) -> LoopbackRedirect:
        self._result = asyncio.get_running_loop().create_future()
        app = web.Application()
        app.router.add_get("/callback", self._callback)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self._port)
        await site.start()
        port = self._runner.addresses[0][1]
        self.redirect_uri = f"http://127.0.0.1:{port}/callback"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait(self) -> Mapping[str, str]:
        """The redirect's query parameters, once a request with the right state came."""
        assert self._result is not None
        return await asyncio.shield(self._result)

    async def _callback(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        if query.get("state") != self._state:
            return web.Response(status=400, text="unexpected request")
        if self._result is not None and not self._result.done():
            self._result.set_result(query)
        return web.Response(text=_DONE, content_type="text/html")

"""The HTTP plumbing: JSON error bodies, the commit middleware, the connection handler.

Every failure, including malformed JSON, wrong types, unknown routes, wrong
methods, oversized bodies and unparsable request heads, leaves as the contract's
JSON error body; an unexpected exception becomes a JSON 500 and a log record,
never an HTML page.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from aiohttp import streams, web, web_protocol

from tokensdk.server._api_errors import ApiError
from tokensdk.server._service import SERVICE_KEY

__all__ = [
    "HTTP_ERRORS",
    "JsonErrorRequestHandler",
    "Runner",
    "error_response",
    "errors_middleware",
]

log = logging.getLogger("tokensdk.server")

HTTP_ERRORS = {
    400: "invalid_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


def error_response(
    status: int,
    error: str,
    message: str,
    code: int | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> web.Response:
    body: dict[str, Any] = {"error": error, "code": status if code is None else code}
    body["message"] = message
    body.update(extra or {})
    return web.json_response(body, status=status, headers=headers)


@web.middleware
async def errors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    service = request.app[SERVICE_KEY]
    resource = request.match_info.route.resource
    service.stats.requests_by_path[
        resource.canonical if resource is not None else "<unmatched>"
    ] += 1
    response: web.StreamResponse
    try:
        response = await handler(request)
    except ApiError as exc:
        response = error_response(
            exc.status, exc.error, exc.message, exc.code, exc.headers, exc.extra
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        response = error_response(
            exc.status, HTTP_ERRORS.get(exc.status, "http_error"), exc.reason, headers=headers
        )
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("internal error on %s %s", request.method, resource)
        response = error_response(500, "internal", "internal server error")
    # Errors change state too (a reused refresh token revokes its family): every
    # answer waits until what it reflects is on disk, off the event loop.
    try:
        await service.state.db.commit()
    except sqlite3.Error:  # PersistenceFailed; the writer logged why
        return error_response(
            503, "service_unavailable", "the service cannot store its state; try again later"
        )
    return response


class JsonErrorRequestHandler(web_protocol.RequestHandler):
    """Answers HTTP-level parse errors with JSON too, and drops slow request heads.

    A request head (request line and headers) must arrive within
    ``header_timeout`` seconds, counted from the connection's start and, on a
    kept-alive connection, from the first byte after the previous request's
    body; otherwise the connection is closed (a connection that trickles its
    headers holds memory as long as it is open). An idle kept-alive connection is
    left to aiohttp's ``keepalive_timeout``. aiohttp has no such option itself.

    Args:
        manager: The server.
        loop: The event loop.
        header_timeout: Seconds a request head may take.
        **kwargs: aiohttp's RequestHandler options.
    """

    __slots__ = ("_head_payload", "_head_timeout", "_head_timer")

    def __init__(
        self,
        manager: web.Server,
        *,
        loop: asyncio.AbstractEventLoop,
        header_timeout: float = 5.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self._head_timeout = header_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        # The body of the newest request parsed: bytes before its end are body bytes.
        self._head_payload: streams.StreamReader | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # Every byte before this chunk belongs to complete requests: the chunk
        # starts a new head (body bytes of a request never start the timer).
        between = self._head_payload is None or self._head_payload.is_eof()
        count = self._request_count
        super().data_received(data)
        if self._request_count != count:
            self._disarm_head_timer()
            if self._messages:
                self._head_payload = self._messages[-1][1]
        elif data and between and self._head_timer is None:
            self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        self._head_timer = self._loop.call_later(self._head_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._force_close or self._close:
            return
        if self._request_in_progress or self._messages:
            # A pipelined head behind a request still being handled: its turn comes.
            self._arm_head_timer()
            return
        log.debug("no request head within %s s from %s; closing", self._head_timeout, self.peername)
        self.force_close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("a response was sent already; cannot send the error")
        # Not aiohttp's own logging: its parse errors quote the offending header line,
        # which may be an Authorization header.
        log.debug("unparsable request from %s: HTTP %d", request.remote, status)
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
        response = error_response(
            status,
            HTTP_ERRORS.get(status, "internal" if status >= 500 else "invalid_request"),
            phrase or "request failed",
        )
        response.force_close()
        return response


class JsonErrorServer(web.Server):
    """A :class:`aiohttp.web.Server` whose connections use :class:`JsonErrorRequestHandler`."""

    def __call__(self) -> web_protocol.RequestHandler:
        return JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class Runner(web.AppRunner):
    """An AppRunner whose connections answer even unparsable requests with JSON.

    Why the class swap below stays (checked against aiohttp 3.14): aiohttp offers
    no public seam for the per-connection protocol object. ``web.Server`` accepts
    ``request_factory``, which builds the ``Request`` of a parsed request (too
    late: parse errors and slow heads happen before one exists), and has no
    ``handler_factory``; its ``__call__`` always builds a plain ``RequestHandler``.
    Building the ``web.Server`` ourselves (``web.ServerRunner``) would need the
    application's private ``_handle`` and ``_make_request`` and would bypass
    ``AppRunner``'s startup and cleanup. Swapping the class of the server that
    ``AppRunner`` built changes only which handler it creates per connection; the
    ``type(server) is web.Server`` check leaves any other server alone.
    """

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        if type(server) is web.Server:
            # aiohttp builds its Server privately; swapping the class only changes
            # which RequestHandler it creates per connection.
            server.__class__ = JsonErrorServer
        return server

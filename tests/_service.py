"""Test helpers: run the reference service on a free loopback port with test settings.

Import from any test module (``tests/`` is on ``sys.path`` under pytest)::

    from _service import service

    async with service(clock, access_ttl=2) as svc:
        ...  # svc.url, svc.stats, svc.state
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from tokensdk import Clock
from tokensdk.server import RunningService, ServiceConfig, running_service

__all__ = ["PASSWORDS", "call", "login", "service"]

#: The default test users.
PASSWORDS = {"alice": "wonderland", "bob": "builder"}


@asynccontextmanager
async def service(clock: Clock, **overrides: Any) -> AsyncIterator[RunningService]:
    """Run the reference service with fast test settings until the block ends.

    Args:
        clock: The clock the service reads (share it with the SDK under test).
        **overrides: Any :class:`ServiceConfig` field (``users``, ``access_ttl``, ...).

    Yields:
        The running service.
    """
    settings: dict[str, Any] = {"users": dict(PASSWORDS), "scrypt_n": 2**10, "clock": clock}
    settings.update(overrides)
    async with running_service(ServiceConfig(**settings)) as running:
        yield running


async def call(
    http: aiohttp.ClientSession,
    svc: RunningService,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
) -> tuple[int, Any, Any]:
    """Send one request; return ``(status, parsed JSON body or None, headers)``.

    Args:
        http: The client session.
        svc: The running service.
        method: The HTTP method.
        path: The path, e.g. ``/v1/login``.
        body: A JSON body, or None.
        token: A bearer token to send.
        headers: More headers.
        data: A raw body (instead of ``body``).
    """
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    kwargs: dict[str, Any] = {"headers": all_headers}
    if data is not None:
        kwargs["data"] = data
    elif body is not None:
        kwargs["json"] = body
    async with http.request(method, svc.url + path, **kwargs) as response:
        raw = await response.read()
        parsed = await response.json(content_type=None) if raw else None
        return response.status, parsed, response.headers


async def login(
    http: aiohttp.ClientSession, svc: RunningService, username: str = "alice"
) -> dict[str, Any]:
    """Log a default test user in with its password; return the LoginTokens body."""
    status, body, _ = await call(
        http,
        svc,
        "POST",
        "/v1/login",
        {"username": username, "password": PASSWORDS[username]},
    )
    assert status == 200, body
    return dict(body)

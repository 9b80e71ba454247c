"""Shared by the examples: use a given service URL, or run the reference service here.

Every example takes ``--url``; without it the reference token service runs
in-process on a free loopback port, so each example is one command.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

#: The users of the embedded service.
USERS = {"alice": "wonderland", "backend": "backend-secret"}


@asynccontextmanager
async def token_service(url: str | None, **config: Any) -> AsyncIterator[str]:
    """Yield ``url``, or the URL of an embedded service running for the block.

    Args:
        url: A running service's root URL, or None to start one here.
        **config: :class:`tokensdk.server.ServiceConfig` fields for the embedded one.
    """
    if url is not None:
        yield url.rstrip("/")
        return
    from tokensdk.server import ServiceConfig, running_service

    settings: dict[str, Any] = {"users": dict(USERS), "access_ttl": 2}
    settings.update(config)
    async with running_service(ServiceConfig(**settings)) as svc:
        yield svc.url

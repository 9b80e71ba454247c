"""The reference token service: the whole wire contract as an aiohttp.web application.

Start it in-process with :func:`running_service` (tests, demos) or build the
application with :func:`create_app`; ``python -m tokensdk serve`` runs it from the
command line (see :mod:`tokensdk.server._cli`).
"""

from __future__ import annotations

from tokensdk.server._app import (
    STATS_KEY,
    RunningService,
    ServiceStats,
    create_app,
    running_service,
)
from tokensdk.server._config import ServiceConfig

__all__ = [
    "STATS_KEY",
    "RunningService",
    "ServiceConfig",
    "ServiceStats",
    "create_app",
    "running_service",
]

"""tokensdk: keep an asyncio application authenticated for as long as it runs."""

from __future__ import annotations

from tokensdk._clock import Clock, ManualClock, SystemClock
from tokensdk._errors import *  # noqa: F403  (curated in _errors.__all__)
from tokensdk._errors import __all__ as _error_names

__all__ = sorted(["Clock", "ManualClock", "SystemClock", *_error_names])

"""Shared fixtures: the anyio backend, a manual clock."""

from __future__ import annotations

import pytest

from tokensdk import ManualClock


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()

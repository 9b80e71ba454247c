"""Shared fixtures: the anyio backend, a manual clock, the real OAuth provider factory."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from _oidc import OIDCProvider, provider_factory

from tokensdk import ManualClock


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


async def autojump(clock: ManualClock) -> None:
    """Advance ``clock`` to the next sleeper whenever every task is blocked.

    Run it in a task group for tests whose code under test sleeps on the clock
    (backoff); cancel the group to stop it.
    """
    import anyio

    while True:
        await anyio.wait_all_tasks_blocked()
        if not clock.advance_to_next():
            await clock.wait_for_sleeper()


@pytest.fixture(scope="session")
def oidc_provider() -> Iterator[Callable[..., OIDCProvider]]:
    """Factory ``oidc_provider(config=None, *, shared=True)`` → a running oidc-provider.

    Runs ``npm ci`` in tests/oidc on first use; see tests/_oidc.py and tests/oidc/README.md.
    Every provider it started stops at the end of the session.
    """
    with provider_factory() as factory:
        yield factory

"""What a session's components receive instead of the Session: one small context.

:class:`AccessTokens`, :class:`MacTokenStore` and the aiohttp middleware work on a
:class:`SessionContext`: the state hub, the clock, the transport, the timer heap, a
way to start background work in the session's task group, a valid bearer token, a
forced refresh, and the backend's resource endpoints as calls (components know no
path of the contract). The lifecycle facts they read (which activation is current, why
the last one was lost, whether a logout is under way, the service's clock offset)
sit in one :class:`Lifecycle` the session writes and the components read. No
component reads a private attribute of the Session.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any

import attrs

from tokensdk._backend import ResourceBackend
from tokensdk._clock import Clock
from tokensdk._dpop import DPoPState
from tokensdk._models import Credentials
from tokensdk._observable import StateHub
from tokensdk._scheduler import Scheduler
from tokensdk._transport import Transport

__all__ = ["Lifecycle", "SessionContext"]

_NOTHING_TO_SHARE: AbstractAsyncContextManager[None] = nullcontext()


def _resources_of(backend: object) -> ResourceBackend | None:
    # Checked once, here: a runtime Protocol check costs tens of microseconds.
    return backend if isinstance(backend, ResourceBackend) else None


@attrs.define
class Lifecycle:
    """The session's lifecycle facts: written by the session, read by its components.

    Attributes:
        generation: Increases whenever the current activation ends or is replaced
            (login, resume, loss, logout): work started under an older generation
            belongs to a dead activation.
        lost_reason: Why the session is not active (``not_logged_in``,
            ``token_expired``, ``refresh_token_reused``, ``logged_out``, ...).
        logging_out: A logout is under way (a refresh failing meanwhile must not
            call the relogin hook; a MAC token arriving meanwhile is not kept).
        clock_offset: Seconds to add to local wall time to get the service's.
    """

    generation: int = 0
    lost_reason: str = "not_logged_in"
    logging_out: bool = False
    clock_offset: float = 0.0


@attrs.frozen(eq=False)
class SessionContext:
    """Everything a session component may use, handed over at construction.

    Attributes:
        hub: The state: snapshots, commits, events.
        clock: Wall and monotonic time.
        transport: The service calls.
        scheduler: The session's one timer heap.
        lifecycle: The lifecycle facts (see :class:`Lifecycle`).
        spawn: ``spawn(func, *args)`` starts ``func(*args)`` in the session's task
            group; raises SessionClosed when the session is not open.
        bearer: Returns a valid access token (refreshing first when needed).
        refresh: Forces a refresh (joining one under way); returns the new pair.
        sync_clock: Re-estimates :attr:`Lifecycle.clock_offset` from the service.
        on_open: Registers an async callable the session awaits once its stored
            state is loaded (restored tokens get their timers there).
        own_call: Tells whether a URL is one of the session's own unauthenticated
            calls (login, refresh, status, keys), which middleware must pass through.
        dpop: The DPoP key and nonces, when the backend binds tokens with DPoP.
        exclusive: ``async with exclusive():`` runs a block with the state freshly
            loaded, under the refresh lock of the members sharing the store (in one
            process: no lock, nothing loaded); what it commits is saved before the
            lock is released. One member creates what all share (a MAC token).
        resources: The backend's resource endpoints (asset and MAC tokens), or None
            when it has none (an OAuth 2.0 provider). Given the session's backend:
            one that is not a :class:`~tokensdk.ResourceBackend` becomes None.
    """

    hub: StateHub
    clock: Clock
    transport: Transport
    scheduler: Scheduler
    lifecycle: Lifecycle
    spawn: Callable[..., None]
    bearer: Callable[[], Awaitable[str]]
    refresh: Callable[[], Awaitable[Credentials]]
    sync_clock: Callable[[], Awaitable[float]]
    on_open: Callable[[Callable[[], Awaitable[None]]], None]
    own_call: Callable[[Any], bool]
    dpop: DPoPState | None = None
    exclusive: Callable[[], AbstractAsyncContextManager[None]] = attrs.field(
        default=lambda: _NOTHING_TO_SHARE
    )
    resources: ResourceBackend | None = attrs.field(default=None, converter=_resources_of)

    def __repr__(self) -> str:
        return f"SessionContext({self.transport.base_url!r})"

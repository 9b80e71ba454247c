"""Restoring a session: from the state loaded at open to the session's first commit.

:func:`load_state` runs once, when the session opens: it loads the stored document
through the coordinator and decodes it (an unusable one is moved aside; a broken
store is reported and the session starts empty), asks the pure :func:`restore_state`
what to commit, then commits it, installs the pair and sets the lifecycle facts the
answer names. An activation that expired while no process held it is dropped here,
with everything that belonged to it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from tokensdk._context import SessionContext
from tokensdk._coordinator import Coordinator
from tokensdk._errors import InvalidInput, StoreCorrupt, StoreError
from tokensdk._fleet import Fleet
from tokensdk._models import (
    AssetToken,
    Credentials,
    EventType,
    SessionSnapshot,
    SessionStatus,
    document_to_snapshot,
)
from tokensdk._refresh import RefreshEngine
from tokensdk.stores import StateStore

__all__ = ["Restored", "asset_list", "load_state", "restore_state"]

log = logging.getLogger("tokensdk")


@attrs.frozen
class Restored:
    """What a session commits first, from its stored state and restored asset tokens.

    Attributes:
        changes: The fields to commit.
        credentials: The pair restored (None when there is none, or it expired).
        expired: The activation expired while away: commit a ``token_expired`` loss.
        serve: The restored pair is active: install it (and emit RESUMED).
        retry_pending: A refresh was under way when the last process stopped: retry
            it now, with its key, while the service still recognises the retry.
        lost: The stored session needs a login (``stored_session_lost``).
        matches_store: The commit is exactly what the store holds.
    """

    changes: Mapping[str, Any]
    credentials: Credentials | None
    expired: bool = False
    serve: bool = False
    retry_pending: bool = False
    lost: bool = False
    matches_store: bool = False


def restore_state(
    snapshot: SessionSnapshot | None,
    restore_tokens: tuple[AssetToken, ...] | None,
    *,
    next_revision: int,
    wall: float,
    monotonic: float,
) -> Restored | None:
    """Decide the first commit of a session that loaded ``snapshot``.

    Args:
        snapshot: The decoded stored state, if any.
        restore_tokens: Asset tokens given to the Session; they replace the stored ones.
        next_revision: The lowest revision the commit may carry.
        wall: Wall time now (for the activation's expiry).
        monotonic: Monotonic time now.

    Returns:
        What to commit, or None when there is nothing to restore.
    """
    changes: dict[str, Any] = {}
    if snapshot is not None:
        changes = {
            "status": snapshot.status,
            "credentials": snapshot.credentials,
            "access_tokens": snapshot.access_tokens,
            "mac_tokens": snapshot.mac_tokens,
            "pending_refresh": snapshot.pending_refresh,
            "revision": max(snapshot.revision, next_revision),
        }
    if restore_tokens is not None:
        changes["access_tokens"] = restore_tokens
    if not changes:
        return None
    creds: Credentials | None = changes.get("credentials")
    if creds is not None and creds.refresh_left(wall, monotonic) <= 0:
        # The activation expired while we were away: what belonged to it goes.
        changes.update(
            status=SessionStatus.NEEDS_LOGIN,
            credentials=None,
            mac_tokens={},
            pending_refresh=None,
        )
        return Restored(changes, None, expired=True)
    status = changes.get("status")
    serve = creds is not None and status is SessionStatus.ACTIVE
    return Restored(
        changes,
        creds,
        serve=serve,
        retry_pending=serve and changes.get("pending_refresh") is not None,
        lost=not serve and status is SessionStatus.NEEDS_LOGIN,
        matches_store=snapshot is not None and restore_tokens is None,
    )


def asset_list(items: Iterable[AssetToken | Mapping[str, Any]]) -> tuple[AssetToken, ...]:
    """Turn a saved asset-token array (tokens or their saved mappings) into tokens.

    Raises:
        InvalidInput: An entry has no string ``assetId`` and ``token``.
    """
    tokens = []
    for item in items:
        if isinstance(item, AssetToken):
            tokens.append(item)
            continue
        asset_id = item.get("assetId", item.get("asset_id")) if isinstance(item, Mapping) else None
        token = item.get("token") if isinstance(item, Mapping) else None
        if not isinstance(asset_id, str) or not isinstance(token, str):
            raise InvalidInput("each saved access token needs a string assetId and token")
        expires = item.get("expiresAt", item.get("expires_at"))
        tokens.append(
            AssetToken(asset_id, token, expires if isinstance(expires, int | float) else None)
        )
    return tuple(tokens)


async def load_state(
    context: SessionContext,
    *,
    coord: Coordinator,
    fleet: Fleet,
    engine: RefreshEngine,
    restore_tokens: tuple[AssetToken, ...] | None,
    install: Callable[[Credentials], None],
) -> None:
    """Load the stored state into a session that opens, and serve a pair it holds.

    A store that cannot be read is reported (a STORE_FAILED event) and the session
    starts empty: a broken store must not stop the application.

    Args:
        context: The session's hub (the first commit), clock and lifecycle facts.
        coord: The coordinator of the session's store (the load, with its version;
            an unusable state is moved aside through its store).
        fleet: The session's side of the shared state (the version loaded).
        engine: The session's refresh engine (retries a refresh left unfinished).
        restore_tokens: Asset tokens given to the Session (they replace the stored).
        install: Makes a pair the served pair and schedules its refresh.
    """
    hub, clock, life = context.hub, context.clock, context.lifecycle
    snapshot = None
    try:
        document, fleet.version = await coord.load()
        if document is not None:
            try:
                snapshot = document_to_snapshot(
                    document, wall=clock.time(), monotonic=clock.monotonic()
                )
            except StoreCorrupt as exc:
                # A readable envelope around an unusable state: keep it for a look.
                raise await _quarantine(coord.store, exc) from None
    except StoreError as exc:
        # A broken store must not stop the application: start empty and say so.
        log.warning("tokensdk: the stored state could not be loaded: %s", exc)
        hub.emit(hub.event(EventType.STORE_FAILED, type(exc).__name__, exc))
    restored = restore_state(
        snapshot,
        restore_tokens,
        next_revision=hub.snapshot.revision + 1,
        wall=clock.time(),
        monotonic=clock.monotonic(),
    )
    if restored is None:
        return
    if restored.expired:
        life.lost_reason = "token_expired"
        hub.commit(hub.event(EventType.SESSION_LOST, "token_expired"), **restored.changes)
        return
    creds = restored.credentials
    events = [hub.event(EventType.RESUMED, creds.username)] if creds else []
    hub.commit(*events, **restored.changes)
    if restored.matches_store:
        fleet.saved_rev = hub.snapshot.revision  # it is what the store holds
    if restored.serve and creds is not None:
        install(creds)
        if restored.retry_pending:
            # The service may have rotated the pair already: retry the refresh
            # now, with its key, while the service still recognises the retry.
            engine.schedule(clock.monotonic())
    elif restored.lost:
        life.lost_reason = "stored_session_lost"


async def _quarantine(store: StateStore, error: StoreCorrupt) -> StoreError:
    quarantine = getattr(store, "quarantine", None)
    if quarantine is None:
        return error
    try:
        moved_to = await quarantine()
    except StoreError as exc:
        return StoreCorrupt(f"{error}; it could not be moved aside ({exc})")
    where = f"moved aside to {moved_to}" if moved_to else "it was removed"
    return StoreCorrupt(f"{error}; {where}", moved_to=moved_to)

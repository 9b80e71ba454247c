"""Restoring a session: from the state loaded at open to the session's first commit.

Pure: the session decodes the stored document (quarantining an unusable one), asks
:func:`restore_state` what to commit, then commits it, installs the pair and sets the
lifecycle facts the answer names. An activation that expired while no process held
it is dropped here, with everything that belonged to it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from tokensdk._errors import InvalidInput
from tokensdk._models import AssetToken, Credentials, SessionSnapshot, SessionStatus

__all__ = ["Restored", "asset_list", "restore_state"]


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

"""Housekeeping: expired records are purged in bounded batches, inside operations."""

from __future__ import annotations

import itertools
from typing import Any

from tokensdk.server._core import StateCore
from tokensdk.server._tables import Table, delete_some

__all__ = ["Housekeeping"]


class Housekeeping(StateCore):
    """Purging of expired tokens, keys, challenges and families (part of ``ServiceState``)."""

    #: The most records one purge pass deletes. A pass runs inside an operation on
    #: the event loop, and its deletions go into that operation's transaction; a
    #: backlog (a service restarted after a day) is worked off by later passes.
    PURGE_BATCH = 500

    def maybe_purge(self, now: float, every: float = 60.0) -> None:
        """Run :meth:`purge` at most once per ``every`` seconds of wall time.

        A pass that leaves expired records behind (more than :attr:`PURGE_BATCH`)
        lets the next call run another pass, until the backlog is gone.
        """
        if now >= self._next_purge:
            self._next_purge = now + every
            if not self.purge(now - self.retention):
                self._next_purge = now

    def purge(self, now: float, limit: int | None = None) -> bool:
        """Drop up to ``limit`` records expired at ``now``: tokens, keys, challenges, families.

        Only in-memory scans and at most ``limit`` deletions happen here; the
        deletions are written by the next commit, off the event loop.

        Args:
            now: Records that expired at or before this wall time go.
            limit: The most records to delete (default :attr:`PURGE_BATCH`).

        Returns:
            True when no expired record is left, False when the limit stopped the pass.
        """
        budget = self.PURGE_BATCH if limit is None else limit
        tables: tuple[Table[Any], ...] = (
            self.access,
            self.refresh_tokens,
            self.one_time_keys,
            self.challenges,
            self.revoked,
        )
        for table in tables:
            budget -= delete_some(table, (k for k, r in table.items() if r.expires <= now), budget)
            if budget <= 0:
                return False
        dead = set(
            itertools.islice((k for k, r in self.families.items() if r.expires <= now), budget)
        )
        if not dead:
            return True
        # A family goes after its MAC tokens, so that no pass leaves a token whose
        # family record is gone (and whose deletion would then be forgotten).
        macs = [k for k, r in self.mac_tokens.items() if r.family in dead]
        budget -= delete_some(self.mac_tokens, iter(macs), budget)
        if budget <= 0:
            return False
        budget -= delete_some(self.families, iter(dead), budget)
        return budget > 0

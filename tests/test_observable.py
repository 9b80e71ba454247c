"""The state hub: commits, snapshots and change dispatch (unit tests, no network)."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from tokensdk import AssetToken, Credentials, MacToken, ManualClock, SessionSnapshot, SessionStatus
from tokensdk._models import PendingRefresh
from tokensdk._observable import StateHub


def _non_default_fields() -> dict[str, Any]:
    creds = Credentials("alice", "a", "r", 10.0, 20.0, 10.0, 20.0, 10.0)
    mac = MacToken("t", "id", bytes(16), ("possession",))
    return {
        "status": SessionStatus.ACTIVE,
        "credentials": creds,
        "access_tokens": (AssetToken("door", "tok", 5.0),),
        "mac_tokens": {"t": mac},
        "pending_refresh": PendingRefresh("r", "key", 1.0),
    }


def test_a_commit_keeps_every_snapshot_field_it_does_not_change() -> None:
    """StateHub.commit builds the snapshot field by field (not attrs.evolve).

    A field added to SessionSnapshot and not to commit would be reset on every
    commit; naming every field here makes such a field fail this test instead.
    """
    values = _non_default_fields()
    names = {f.name for f in attrs.fields(SessionSnapshot)} - {"revision"}
    assert set(values) == names, "a SessionSnapshot field StateHub.commit may drop"
    hub = StateHub(ManualClock())
    first = hub.commit(**values)
    for name in names:
        other = {n: v for n, v in values.items() if n != name}
        after = hub.commit(**other)
        assert attrs.evolve(after, revision=first.revision) == first, name
    assert hub.snapshot.revision == first.revision + len(names)


def test_a_commit_refuses_a_name_that_is_not_a_snapshot_field() -> None:
    hub = StateHub(ManualClock())
    with pytest.raises(TypeError):
        hub.commit(status=SessionStatus.ACTIVE, colour="blue")
    assert hub.snapshot == SessionSnapshot()

"""Clock sync: the service's clock offset from one status answer.

Pure: the session times a status call and hands the answer here. MAC headers carry
the local wall time plus this offset.
"""

from __future__ import annotations

from typing import Any

import attrs

from tokensdk._errors import ProtocolError

__all__ = ["MIN_OFFSET", "ClockReading", "read_clock"]

#: Offsets smaller than this many seconds are taken as 0 (network noise).
MIN_OFFSET = 2.0


@attrs.frozen
class ClockReading:
    """What one status answer says about the service's clock.

    Attributes:
        offset: Seconds to add to local wall time to get the service's.
        realm: The service's realm, when the answer names one.
    """

    offset: float
    realm: str | None


def read_clock(body: Any, sent_wall: float, rtt: float) -> ClockReading:
    """Read the offset (and realm) from a status answer.

    Args:
        body: The answer's body (``serverTime`` in milliseconds, ``realm``).
        sent_wall: Local wall time when the request was sent.
        rtt: Seconds the round trip took (monotonic).

    Raises:
        ProtocolError: There is no valid ``serverTime``.
    """
    server_ms = body.get("serverTime")
    # 0 < t < 2**53 also turns away NaN, infinities and 400-digit integers.
    if (
        not isinstance(server_ms, int | float)
        or isinstance(server_ms, bool)
        or not 0 < server_ms < 2**53
    ):
        raise ProtocolError("status has no valid serverTime")
    realm = body.get("realm")
    offset = server_ms / 1000 + rtt / 2 - (sent_wall + rtt)
    return ClockReading(
        0.0 if abs(offset) < MIN_OFFSET else offset, realm if isinstance(realm, str) else None
    )

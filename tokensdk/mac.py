"""The ``X-PowerAuth-Token`` header (PowerAuth 3.3), for backends that verify it.

Pure functions: no clock, network or disk; time comes in as Unix milliseconds::

    from tokensdk.mac import ReplayGuard, TimestampWindow, verify_token_header

    guard = ReplayGuard(TimestampWindow())
    parsed = verify_token_header(
        request.headers["X-PowerAuth-Token"],
        secret_lookup=secrets_by_token_id.get,  # token id -> 16-byte secret, or None
        now_ms=int(time.time() * 1000),
        replay_guard=guard,
    )  # raises tokensdk.HeaderInvalid (error: token_invalid, timestamp_*, replayed)

Clients do not need this module: ``session.token_store.generate_header_for_token``
builds headers with the session's tokens and clock offset.
"""

from __future__ import annotations

from tokensdk._mac import (
    HEADER_NAME,
    MAX_HEADER_LENGTH,
    NONCE_LENGTH,
    SECRET_LENGTH,
    VERSIONS,
    ParsedHeader,
    ReplayGuard,
    TimestampWindow,
    build_header,
    compute_digest,
    parse_header,
    verify_token_header,
)

__all__ = [
    "HEADER_NAME",
    "MAX_HEADER_LENGTH",
    "NONCE_LENGTH",
    "SECRET_LENGTH",
    "VERSIONS",
    "ParsedHeader",
    "ReplayGuard",
    "TimestampWindow",
    "build_header",
    "compute_digest",
    "parse_header",
    "verify_token_header",
]

"""Named MAC tokens: the PowerAuth 3.x ``X-PowerAuth-Token`` header, pure.

Build, parse and verify the header exactly as the wire contract says::

    PowerAuth version="3.3", token_id="<uuid>", token_digest="<b64>", nonce="<b64>",
        timestamp="<unix ms>"

``token_digest = Base64(HMAC-SHA256(secret, data))`` with
``data = nonce || "&" || timestamp || "&" || version`` for 3.2/3.3 and
``data = nonce || "&" || timestamp`` for 3.0/3.1.

Nothing here reads a clock, touches the network or the disk: time comes in as
arguments (Unix milliseconds), so servers and tests drive it. Backends that verify
headers use it directly::

    from tokensdk.mac import ReplayGuard, TimestampWindow, verify_token_header

    guard = ReplayGuard(TimestampWindow())
    parsed = verify_token_header(
        request.headers["X-PowerAuth-Token"],
        secret_lookup=secrets_by_token_id.get,  # token id -> 16-byte secret, or None
        now_ms=int(time.time() * 1000),
        replay_guard=guard,
    )  # raises tokensdk.HeaderInvalid (error: token_invalid, timestamp_*, replayed)

Backends with several workers or hosts share one replay guard in Redis, so a
header accepted by one worker is ``replayed`` at every other::

    guard = RedisReplayGuard(redis.asyncio.Redis.from_url(url), TimestampWindow())
    parsed = await averify_token_header(header, secrets_by_token_id.get, now_ms, replay_guard=guard)

Clients do not need it: ``session.token_store.generate_header_for_token`` builds
headers with the session's tokens and clock offset.
"""

from __future__ import annotations

import binascii
import heapq
import hmac
import os
import re
from collections.abc import Callable
from typing import Any, Protocol

import attrs

from tokensdk._errors import HeaderInvalid, InvalidInput

__all__ = [
    "HEADER_NAME",
    "MAX_HEADER_LENGTH",
    "NONCE_LENGTH",
    "SECRET_LENGTH",
    "VERSIONS",
    "AsyncReplayGuard",
    "ParsedHeader",
    "RedisReplayGuard",
    "ReplayGuard",
    "TimestampWindow",
    "averify_token_header",
    "build_header",
    "compute_digest",
    "parse_header",
    "verify_token_header",
]

HEADER_NAME = "X-PowerAuth-Token"
"""The HTTP header that carries a MAC token."""

VERSIONS = ("3.0", "3.1", "3.2", "3.3")
"""Protocol versions whose headers verify; ``3.3`` is what :func:`build_header` writes."""

SECRET_LENGTH = 16
"""Length in bytes of a token secret."""

NONCE_LENGTH = 16
"""Length in bytes of a header nonce."""

DIGEST_LENGTH = 32
"""Length in bytes of an HMAC-SHA256 digest."""

MAX_HEADER_LENGTH = 1024
"""Headers longer than this (in characters) are rejected unread."""

# Largest accepted timestamp: 15 decimal digits (about the year 33658); anything
# longer is absurd and would only make int() and the digest work harder.
_MAX_TIMESTAMP_DIGITS = 15

# The part of the HMAC input after the timestamp, per version. 3.0/3.1 do not bind
# the version into the digest; 3.2/3.3 do.
_DATA_SUFFIX: dict[str, bytes] = {
    "3.0": b"",
    "3.1": b"",
    "3.2": b"&3.2",
    "3.3": b"&3.3",
}

# Header text before the token id, per version (precomputed for the hot path).
_PREFIX: dict[str, str] = {v: f'PowerAuth version="{v}", token_id="' for v in VERSIONS}

_urandom = os.urandom
_hmac_digest = hmac.digest
_b2a = binascii.b2a_base64
_a2b = binascii.a2b_base64
_compare = hmac.compare_digest

_SCHEME = "PowerAuth "
_FIELDS = frozenset({"version", "token_id", "token_digest", "nonce", "timestamp"})
# One key="value" pair, optional blanks around it, then a comma or the end. Values
# are printable ASCII without quotes or backslashes: nothing legitimate needs more.
_PAIR = re.compile(r'[ \t]*([a-z_]{1,32})="([\x21\x23-\x5b\x5d-\x7e]{0,256})"[ \t]*(,|\Z)')
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
_TIMESTAMP = re.compile(rf"(?:0|[1-9][0-9]{{0,{_MAX_TIMESTAMP_DIGITS - 1}}})\Z")


def compute_digest(secret: bytes, nonce: bytes, timestamp_ms: int, version: str = "3.3") -> bytes:
    """Compute the raw HMAC-SHA256 token digest.

    Args:
        secret: The token secret (16 raw bytes).
        nonce: The nonce (16 raw bytes).
        timestamp_ms: Unix time in milliseconds.
        version: One of :data:`VERSIONS`.

    Returns:
        The 32-byte digest (not yet Base64-encoded).

    Raises:
        InvalidInput: An unknown version, a secret or nonce of the wrong length, or a
            negative or non-integer timestamp.
    """
    suffix = _DATA_SUFFIX.get(version)
    if suffix is None:
        raise InvalidInput(f"unsupported PowerAuth version {version!r}")
    _check_inputs(secret, nonce, timestamp_ms)
    data = b"%b&%d%b" % (nonce, timestamp_ms, suffix)
    return _hmac_digest(secret, data, "sha256")


def _check_inputs(secret: bytes, nonce: bytes, timestamp_ms: int) -> None:
    if len(secret) != SECRET_LENGTH:
        raise InvalidInput(f"token secret must be {SECRET_LENGTH} bytes")
    if len(nonce) != NONCE_LENGTH:
        raise InvalidInput(f"nonce must be {NONCE_LENGTH} bytes")
    if type(timestamp_ms) is not int or timestamp_ms < 0:
        raise InvalidInput("timestamp_ms must be a non-negative int")


def build_header(
    token_id: str,
    secret: bytes,
    timestamp_ms: int,
    *,
    nonce: bytes | None = None,
    version: str = "3.3",
) -> str:
    """Build the value of an ``X-PowerAuth-Token`` header.

    This is the hot path of the MAC token store: one random nonce, one HMAC and two
    Base64 encodings; everything else is precomputed.

    Args:
        token_id: The token id (a UUID string) the service issued.
        secret: The token secret (16 raw bytes).
        timestamp_ms: Unix time in milliseconds, already corrected for clock offset.
        nonce: 16 raw bytes; a fresh ``os.urandom(16)`` when omitted (tests pass one).
        version: One of :data:`VERSIONS`.

    Returns:
        The header value (without the ``X-PowerAuth-Token:`` name).

    Raises:
        InvalidInput: An unknown version, a secret or nonce of the wrong length, or a
            negative or non-integer timestamp.
    """
    prefix = _PREFIX.get(version)
    if prefix is None:
        raise InvalidInput(f"unsupported PowerAuth version {version!r}")
    if nonce is None:
        nonce = _urandom(NONCE_LENGTH)
    if (
        len(secret) != SECRET_LENGTH
        or len(nonce) != NONCE_LENGTH
        or type(timestamp_ms) is not int
        or timestamp_ms < 0
    ):
        _check_inputs(secret, nonce, timestamp_ms)
    digest = _hmac_digest(
        secret, b"%b&%d%b" % (nonce, timestamp_ms, _DATA_SUFFIX[version]), "sha256"
    )
    return (
        f'{prefix}{token_id}", token_digest="{_b2a(digest, newline=False).decode()}", '
        f'nonce="{_b2a(nonce, newline=False).decode()}", timestamp="{timestamp_ms}"'
    )


@attrs.frozen
class ParsedHeader:
    """A syntactically valid ``X-PowerAuth-Token`` header, not yet verified.

    Attributes:
        version: The protocol version (one of :data:`VERSIONS`).
        token_id: The token id (lowercase canonical UUID).
        token_digest: The 32 raw digest bytes (kept out of the repr).
        nonce: The 16 raw nonce bytes.
        timestamp_ms: Unix time in milliseconds.
    """

    version: str
    token_id: str
    token_digest: bytes = attrs.field(repr=False)
    nonce: bytes
    timestamp_ms: int


def _invalid(why: str) -> HeaderInvalid:
    # The message says what was wrong with the shape, never echoes a value.
    return HeaderInvalid("token_invalid", f"token_invalid: {why}")


def _strict_b64(text: str, length: int, what: str) -> bytes:
    # Canonical, padded standard Base64 of exactly ``length`` bytes: a2b in strict
    # mode refuses stray characters and bad padding; the re-encode check refuses
    # non-zero trailing bits, so each byte string has exactly one accepted spelling.
    if len(text) != 4 * ((length + 2) // 3):
        raise _invalid(f"{what} has the wrong length")
    try:
        raw = _a2b(text, strict_mode=True)
    except (binascii.Error, ValueError):
        raise _invalid(f"{what} is not canonical Base64") from None
    if len(raw) != length or _b2a(raw, newline=False).decode() != text:
        raise _invalid(f"{what} is not canonical Base64")
    return raw


def parse_header(value: str) -> ParsedHeader:
    """Parse an ``X-PowerAuth-Token`` header value, strictly.

    Fields may come in any order, but each of ``version``, ``token_id``,
    ``token_digest``, ``nonce`` and ``timestamp`` must appear exactly once and
    nothing else may.

    Args:
        value: The header value, starting with ``PowerAuth``.

    Returns:
        The parsed header.

    Raises:
        HeaderInvalid: With ``error == "token_invalid"`` for anything malformed:
            oversize, wrong scheme, missing, duplicate or unknown fields, an unknown
            version, a non-UUID token id, non-canonical Base64, wrong nonce or digest
            length, a non-decimal or absurd timestamp.
    """
    if not isinstance(value, str):
        raise _invalid("header is not text")
    if len(value) > MAX_HEADER_LENGTH:
        raise _invalid("header too long")
    if not value.startswith(_SCHEME):
        raise _invalid("not a PowerAuth header")
    fields: dict[str, str] = {}
    pos = len(_SCHEME)
    end = len(value)
    while True:
        m = _PAIR.match(value, pos)
        if m is None:
            raise _invalid("malformed field list")
        key, val, sep = m.groups()
        if key not in _FIELDS:
            raise _invalid("unknown field")
        if key in fields:
            raise _invalid("duplicate field")
        fields[key] = val
        pos = m.end()
        if not sep:
            break
        if pos >= end:
            raise _invalid("trailing comma")
    if len(fields) != len(_FIELDS):
        raise _invalid("missing field")
    version = fields["version"]
    if version not in _DATA_SUFFIX:
        raise _invalid("unsupported version")
    token_id = fields["token_id"]
    if _UUID.match(token_id) is None:
        raise _invalid("token_id is not a lowercase UUID")
    timestamp = fields["timestamp"]
    if _TIMESTAMP.match(timestamp) is None:
        raise _invalid("timestamp is not a canonical decimal")
    return ParsedHeader(
        version=version,
        token_id=token_id,
        token_digest=_strict_b64(fields["token_digest"], DIGEST_LENGTH, "token_digest"),
        nonce=_strict_b64(fields["nonce"], NONCE_LENGTH, "nonce"),
        timestamp_ms=int(timestamp),
    )


@attrs.frozen
class TimestampWindow:
    """How far a header's timestamp may lie from the verifier's clock.

    Attributes:
        past_ms: Oldest accepted age in milliseconds (default 10 minutes).
        future_ms: Furthest accepted lead in milliseconds (default 2 minutes).
    """

    past_ms: int = attrs.field(default=600_000)
    future_ms: int = attrs.field(default=120_000)

    @past_ms.validator
    @future_ms.validator
    def _non_negative(self, attribute: attrs.Attribute[int], value: int) -> None:
        if type(value) is not int or value < 0:
            raise InvalidInput(f"{attribute.name} must be a non-negative int")


_DEFAULT_WINDOW = TimestampWindow()


class ReplayGuard:
    """Remembers ``(token_id, nonce)`` pairs for as long as their timestamp is acceptable.

    An entry lives until ``timestamp_ms + window.past_ms``: after that the same
    header fails the timestamp check anyway, so it can be forgotten. Memory is thus
    bounded by the rate of accepted headers times the window length. Headers whose
    timestamp lies outside the window are never stored (they must be rejected by
    the window check), so an attacker cannot plant far-future entries.

    Args:
        window: The verifier's timestamp window.
    """

    __slots__ = ("_expiries", "_heap", "_window")

    def __init__(self, window: TimestampWindow = _DEFAULT_WINDOW) -> None:
        self._window = window
        self._expiries: dict[tuple[str, bytes], int] = {}
        self._heap: list[tuple[int, str, bytes]] = []

    def _purge(self, now_ms: int) -> None:
        heap = self._heap
        expiries = self._expiries
        while heap and heap[0][0] < now_ms:
            _, token_id, nonce = heapq.heappop(heap)
            expiries.pop((token_id, nonce), None)

    def check_and_remember(
        self, token_id: str, nonce: bytes, timestamp_ms: int, now_ms: int
    ) -> bool:
        """Record a header's ``(token_id, nonce)`` unless it was seen before.

        Args:
            token_id: The header's token id.
            nonce: The header's raw nonce.
            timestamp_ms: The header's timestamp.
            now_ms: The verifier's current time in milliseconds.

        Returns:
            True if the pair is fresh (and is now remembered), False if it is a replay.
            A timestamp outside the window returns True without being remembered:
            the window check must reject that header.
        """
        self._purge(now_ms)
        key = (token_id, nonce)
        if key in self._expiries:
            return False
        expiry = timestamp_ms + self._window.past_ms
        if expiry < now_ms or timestamp_ms > now_ms + self._window.future_ms:
            return True
        self._expiries[key] = expiry
        heapq.heappush(self._heap, (expiry, token_id, nonce))
        return True

    def __len__(self) -> int:
        """Return how many pairs are remembered (expired ones go on the next check)."""
        return len(self._expiries)

    def __repr__(self) -> str:
        return f"ReplayGuard(window={self._window!r}, entries={len(self._expiries)})"


class AsyncReplayGuard(Protocol):
    """A replay guard shared by several verifiers: the check is one atomic remote call."""

    async def check_and_remember(
        self, token_id: str, nonce: bytes, timestamp_ms: int, now_ms: int
    ) -> bool:
        """Record ``(token_id, nonce)`` unless it was seen before; see :class:`ReplayGuard`."""
        ...


class _RedisSetNx(Protocol):
    async def set(self, name: str, value: bytes, *, nx: bool, px: int) -> Any: ...


class RedisReplayGuard:
    """A :class:`ReplayGuard` in Redis, shared by every process that verifies headers.

    Each accepted ``(token_id, nonce)`` becomes one key, written with ``SET NX PX``:
    the first writer wins atomically across processes and hosts, and Redis forgets
    the key when its timestamp leaves the window (``timestamp + past`` window), as
    the in-process guard does. A header outside the window is never stored.

    Keys are ``<prefix>{<token_id>}:<nonce hex>``; the braces make every key of one
    token live in one Redis Cluster slot.

    Args:
        client: A ``redis.asyncio.Redis`` (or cluster) client; this module does not
            import redis itself.
        window: The verifier's timestamp window.
        prefix: Key prefix (one namespace per service).
    """

    __slots__ = ("_client", "_prefix", "_window")

    def __init__(
        self,
        client: _RedisSetNx,
        window: TimestampWindow = _DEFAULT_WINDOW,
        *,
        prefix: str = "tokensdk:mac-nonce:",
    ) -> None:
        self._client = client
        self._window = window
        self._prefix = prefix

    async def check_and_remember(
        self, token_id: str, nonce: bytes, timestamp_ms: int, now_ms: int
    ) -> bool:
        """Record a header's ``(token_id, nonce)`` in Redis unless it is there already.

        Returns:
            True if the pair is fresh (now remembered fleet-wide), False if replayed.
        """
        expiry = timestamp_ms + self._window.past_ms
        if expiry < now_ms or timestamp_ms > now_ms + self._window.future_ms:
            return True
        key = f"{self._prefix}{{{token_id}}}:{nonce.hex()}"
        created = await self._client.set(key, b"1", nx=True, px=max(1, expiry - now_ms))
        return bool(created)

    def __repr__(self) -> str:
        return f"RedisReplayGuard(window={self._window!r}, prefix={self._prefix!r})"


def verify_token_header(
    header: str,
    secret_lookup: Callable[[str], bytes | None],
    now_ms: int,
    window: TimestampWindow = _DEFAULT_WINDOW,
    *,
    replay_guard: ReplayGuard | None = None,
) -> ParsedHeader:
    """Parse and verify an ``X-PowerAuth-Token`` header.

    The digest is checked (in constant time) before the timestamp, so only a holder
    of the secret learns whether the clock was off.

    Args:
        header: The header value.
        secret_lookup: Returns the 16-byte secret of a token id, or None if unknown.
        now_ms: The verifier's current time in Unix milliseconds.
        window: The accepted timestamp window.
        replay_guard: If given, a header whose ``(token_id, nonce)`` was accepted
            before is rejected with ``replayed``; accepted ones are remembered.

    Returns:
        The verified header.

    Raises:
        HeaderInvalid: ``token_invalid`` (malformed, unknown token id, wrong digest),
            ``timestamp_too_old``, ``timestamp_in_future`` or ``replayed``.
    """
    parsed = _verify_digest_and_time(header, secret_lookup, now_ms, window)
    if replay_guard is not None and not replay_guard.check_and_remember(
        parsed.token_id, parsed.nonce, parsed.timestamp_ms, now_ms
    ):
        raise HeaderInvalid("replayed")
    return parsed


async def averify_token_header(
    header: str,
    secret_lookup: Callable[[str], bytes | None],
    now_ms: int,
    window: TimestampWindow = _DEFAULT_WINDOW,
    *,
    replay_guard: AsyncReplayGuard | ReplayGuard | None = None,
) -> ParsedHeader:
    """Like :func:`verify_token_header`, with a replay guard that may be shared (async).

    Several verifying processes (workers of one backend, hosts behind a balancer)
    must share one guard, or a header accepted by one is accepted again by the next:
    pass a :class:`RedisReplayGuard`. The digest and the timestamp are checked
    before the guard is asked, so a forged or stale header never plants an entry.

    Args:
        header: The header value.
        secret_lookup: Returns the 16-byte secret of a token id, or None if unknown.
        now_ms: The verifier's current time in Unix milliseconds.
        window: The accepted timestamp window.
        replay_guard: A :class:`RedisReplayGuard` (any :class:`AsyncReplayGuard`) or
            an in-process :class:`ReplayGuard`.

    Returns:
        The verified header.

    Raises:
        HeaderInvalid: As :func:`verify_token_header`.
        Exception: Whatever the shared guard raises when it cannot be reached (for
            redis-py, ``redis.exceptions.ConnectionError``): the header is then
            neither accepted nor remembered.
    """
    parsed = _verify_digest_and_time(header, secret_lookup, now_ms, window)
    if replay_guard is None:
        return parsed
    fresh = replay_guard.check_and_remember(
        parsed.token_id, parsed.nonce, parsed.timestamp_ms, now_ms
    )
    if not isinstance(fresh, bool):
        fresh = await fresh
    if not fresh:
        raise HeaderInvalid("replayed")
    return parsed


def _verify_digest_and_time(
    header: str,
    secret_lookup: Callable[[str], bytes | None],
    now_ms: int,
    window: TimestampWindow,
) -> ParsedHeader:
    parsed = parse_header(header)
    secret = secret_lookup(parsed.token_id)
    if secret is None or len(secret) != SECRET_LENGTH:
        raise HeaderInvalid("token_invalid", "token_invalid: unknown token")
    expected = _hmac_digest(
        secret,
        b"%b&%d%b" % (parsed.nonce, parsed.timestamp_ms, _DATA_SUFFIX[parsed.version]),
        "sha256",
    )
    if not _compare(expected, parsed.token_digest):
        raise HeaderInvalid("token_invalid", "token_invalid: digest mismatch")
    if parsed.timestamp_ms < now_ms - window.past_ms:
        raise HeaderInvalid("timestamp_too_old")
    if parsed.timestamp_ms > now_ms + window.future_ms:
        raise HeaderInvalid("timestamp_in_future")
    return parsed

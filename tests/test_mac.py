"""Tests for tokensdk.mac: the PowerAuth token header."""

from __future__ import annotations

import base64
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokensdk._errors import HeaderInvalid, InvalidInput
from tokensdk.mac import (
    HEADER_NAME,
    MAX_HEADER_LENGTH,
    VERSIONS,
    ParsedHeader,
    ReplayGuard,
    TimestampWindow,
    build_header,
    compute_digest,
    parse_header,
    verify_token_header,
)

SECRET = base64.b64decode("VqAXEhziiT27lxoqREjtcQ==")
NONCE = bytes(range(16))
TS = 1_700_000_000_000
TOKEN_ID = "d6a8fa11-7e61-4c36-9a4b-8a0e8ec0bd5c"

CHECK_VALUES = {
    "3.3": "GuLCnTklFG25WnjMiFI0k7dc4DJsP/1pW6ko/RY7BTI=",
    "3.2": "hIDgtR6M8kk4gSC2sBollOuJX/QE/K8z5l9F1j9vwbE=",
    "3.1": "AP1YyPm0tcsSTGiwyPSMeSmcGD+WXFM9eh0VvIqfx4w=",
    "3.0": "AP1YyPm0tcsSTGiwyPSMeSmcGD+WXFM9eh0VvIqfx4w=",
}


def lookup(token_id: str) -> bytes | None:
    return SECRET if token_id == TOKEN_ID else None


def header(**fields: str) -> str:
    base = {
        "version": "3.3",
        "token_id": TOKEN_ID,
        "token_digest": CHECK_VALUES["3.3"],
        "nonce": "AAECAwQFBgcICQoLDA0ODw==",
        "timestamp": str(TS),
    }
    base.update(fields)
    return "PowerAuth " + ", ".join(f'{k}="{v}"' for k, v in base.items())


def test_header_name() -> None:
    assert HEADER_NAME == "X-PowerAuth-Token"
    assert VERSIONS == ("3.0", "3.1", "3.2", "3.3")


@pytest.mark.parametrize(("version", "expected"), sorted(CHECK_VALUES.items()))
def test_check_values(version: str, expected: str) -> None:
    digest = compute_digest(SECRET, NONCE, TS, version)
    assert base64.b64encode(digest).decode() == expected


@pytest.mark.parametrize(("version", "expected"), sorted(CHECK_VALUES.items()))
def test_build_header_exact_format(version: str, expected: str) -> None:
    value = build_header(TOKEN_ID, SECRET, TS, nonce=NONCE, version=version)
    assert value == (
        f'PowerAuth version="{version}", token_id="{TOKEN_ID}", '
        f'token_digest="{expected}", nonce="AAECAwQFBgcICQoLDA0ODw==", '
        f'timestamp="{TS}"'
    )


def test_build_header_random_nonce_differs() -> None:
    a = parse_header(build_header(TOKEN_ID, SECRET, TS))
    b = parse_header(build_header(TOKEN_ID, SECRET, TS))
    assert a.nonce != b.nonce
    assert len(a.nonce) == 16


@pytest.mark.parametrize("version", VERSIONS)
def test_round_trip_verifies(version: str) -> None:
    value = build_header(TOKEN_ID, SECRET, TS, version=version)
    parsed = verify_token_header(value, lookup, TS)
    assert parsed.version == version
    assert parsed.token_id == TOKEN_ID
    assert parsed.timestamp_ms == TS
    assert base64.b64encode(parsed.token_digest).decode() in value


@pytest.mark.parametrize(
    ("kwargs", "secret"),
    [
        ({"version": "3.4"}, SECRET),
        ({"version": "2.1"}, SECRET),
        ({"nonce": b"short"}, SECRET),
        ({}, SECRET[:15]),
        ({}, SECRET + b"x"),
    ],
)
def test_build_header_rejects_bad_input(kwargs: dict[str, object], secret: bytes) -> None:
    with pytest.raises(InvalidInput):
        build_header(TOKEN_ID, secret, TS, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("ts", [-1, 1.5, "1700000000000"])
def test_build_header_rejects_bad_timestamp(ts: object) -> None:
    with pytest.raises(InvalidInput):
        build_header(TOKEN_ID, SECRET, ts)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        compute_digest(SECRET, NONCE, ts)  # type: ignore[arg-type]


def test_compute_digest_rejects_unknown_version() -> None:
    with pytest.raises(InvalidInput):
        compute_digest(SECRET, NONCE, TS, "4.0")


def test_parse_accepts_any_field_order_and_blanks() -> None:
    value = (
        f'PowerAuth timestamp="{TS}",nonce="AAECAwQFBgcICQoLDA0ODw==" ,  '
        f'token_digest="{CHECK_VALUES["3.3"]}", token_id="{TOKEN_ID}", version="3.3"'
    )
    assert parse_header(value) == parse_header(header())


def test_parsed_header_repr_hides_digest() -> None:
    parsed = parse_header(header())
    assert "token_digest" not in repr(parsed)
    assert isinstance(parsed, ParsedHeader)


MALFORMED = [
    pytest.param("", id="empty"),
    pytest.param("PowerAuth", id="scheme-only"),
    pytest.param("PowerAuth ", id="scheme-blank"),
    pytest.param(header().replace("PowerAuth ", "Bearer "), id="other-scheme"),
    pytest.param(header().replace("PowerAuth ", "powerauth "), id="scheme-case"),
    pytest.param(header() + ",", id="trailing-comma"),
    pytest.param(header() + ", ", id="trailing-comma-blank"),
    pytest.param(header() + ' extra="1"', id="no-comma"),
    pytest.param(header() + ', extra="1"', id="unknown-field"),
    pytest.param(header() + ', nonce="AAECAwQFBgcICQoLDA0ODw=="', id="duplicate-field"),
    pytest.param(
        header().replace(', version="3.3"', "").replace('version="3.3", ', ""), id="missing-version"
    ),
    pytest.param(header().replace(f', timestamp="{TS}"', ""), id="missing-timestamp"),
    pytest.param(header().replace('"3.3"', "3.3", 1), id="unquoted"),
    pytest.param(header().replace('version="3.3"', "version='3.3'"), id="single-quotes"),
    pytest.param(header(version="3.4"), id="version-3.4"),
    pytest.param(header(version="3.3 "), id="version-blank"),
    pytest.param(header(version=""), id="version-empty"),
    pytest.param(header(token_id="not-a-uuid"), id="token-id-not-uuid"),
    pytest.param(header(token_id=TOKEN_ID.upper()), id="token-id-upper"),
    pytest.param(header(token_id=TOKEN_ID.replace("-", "")), id="token-id-no-dashes"),
    pytest.param(header(token_id="{" + TOKEN_ID + "}"), id="token-id-braces"),
    pytest.param(header(token_id=TOKEN_ID + "0"), id="token-id-long"),
    pytest.param(header(nonce="AAECAwQFBgcICQoLDA0ODw"), id="nonce-unpadded"),
    pytest.param(header(nonce="AAECAwQFBgcICQoLDA0ODx=="), id="nonce-noncanonical-bits"),
    pytest.param(header(nonce="AAECAwQFBgcICQoLDA0O-w=="), id="nonce-urlsafe"),
    pytest.param(header(nonce="AAECAwQFBgcICQoLDA0O"), id="nonce-short"),
    pytest.param(header(nonce="AAECAwQFBgcICQoLDA0ODxAR"), id="nonce-18-bytes"),
    pytest.param(header(nonce="AAECAwQF BgcICQoLDA0ODw="), id="nonce-space"),
    pytest.param(header(nonce="AAECAwQFBgcICQoLDA0OD===="), id="nonce-extra-pad"),
    pytest.param(header(nonce=""), id="nonce-empty"),
    pytest.param(header(token_digest=CHECK_VALUES["3.3"][:-1]), id="digest-unpadded"),
    pytest.param(header(token_digest=CHECK_VALUES["3.3"][:-2] + "J="), id="digest-noncanon"),
    pytest.param(header(token_digest="AAAA"), id="digest-short"),
    pytest.param(header(token_digest="é" * 44), id="digest-non-ascii"),
    pytest.param(header(timestamp=""), id="ts-empty"),
    pytest.param(header(timestamp="-1"), id="ts-negative"),
    pytest.param(header(timestamp="+1700000000000"), id="ts-plus"),
    pytest.param(header(timestamp="01700000000000"), id="ts-leading-zero"),
    pytest.param(header(timestamp="1_700_000_000_000"), id="ts-underscores"),
    pytest.param(header(timestamp="1700000000000.0"), id="ts-float"),
    pytest.param(header(timestamp="0x1"), id="ts-hex"),
    pytest.param(header(timestamp="١٧٠٠"), id="ts-arabic-digits"),
    pytest.param(header(timestamp="9" * 16), id="ts-absurd"),
    pytest.param(header(timestamp="9" * 5000), id="ts-huge"),
    pytest.param(header() + " " * MAX_HEADER_LENGTH, id="oversize"),
    pytest.param(header().replace(", ", "\n, "), id="newline"),
    pytest.param(header().replace('="', '= "'), id="blank-after-equals"),
    pytest.param(header(version='3.3\\"'), id="backslash"),
]


@pytest.mark.parametrize("value", MALFORMED)
def test_parse_rejects_malformed(value: str) -> None:
    with pytest.raises(HeaderInvalid) as info:
        parse_header(value)
    assert info.value.error == "token_invalid"


@pytest.mark.parametrize("value", MALFORMED)
def test_verify_rejects_malformed(value: str) -> None:
    with pytest.raises(HeaderInvalid) as info:
        verify_token_header(value, lookup, TS)
    assert info.value.error == "token_invalid"


def test_parse_rejects_non_text() -> None:
    with pytest.raises(HeaderInvalid):
        parse_header(b"PowerAuth x")  # type: ignore[arg-type]


def test_well_formed_baseline_parses() -> None:
    # The malformed cases above are mutations of this header, so it must pass.
    parsed = parse_header(header())
    assert parsed.token_digest == base64.b64decode(CHECK_VALUES["3.3"])
    assert verify_token_header(header(), lookup, TS) == parsed


def test_verify_unknown_token() -> None:
    other = str(uuid.uuid4())
    value = build_header(other, SECRET, TS)
    with pytest.raises(HeaderInvalid) as info:
        verify_token_header(value, lookup, TS)
    assert info.value.error == "token_invalid"


def test_verify_wrong_secret() -> None:
    value = build_header(TOKEN_ID, bytes(16), TS)
    with pytest.raises(HeaderInvalid) as info:
        verify_token_header(value, lookup, TS)
    assert info.value.error == "token_invalid"
    assert base64.b64encode(SECRET).decode() not in str(info.value)


@pytest.mark.parametrize("version", ["3.0", "3.1", "3.2"])
def test_verify_rejects_version_swap(version: str) -> None:
    # A 3.3 digest relabelled as another version must not verify (3.0 and 3.1
    # share the digest, so only 3.2 vs the rest and 3.3 vs the rest are checked).
    value = header(version=version)
    with pytest.raises(HeaderInvalid):
        verify_token_header(value, lookup, TS)


def test_verify_rejects_moved_timestamp() -> None:
    with pytest.raises(HeaderInvalid) as info:
        verify_token_header(header(timestamp=str(TS + 1)), lookup, TS)
    assert info.value.error == "token_invalid"


def test_verify_rejects_wrong_length_secret_from_lookup() -> None:
    with pytest.raises(HeaderInvalid):
        verify_token_header(header(), lambda _: SECRET[:8], TS)


@pytest.mark.parametrize(
    ("now", "error"),
    [
        (TS + 600_000, None),
        (TS + 600_001, "timestamp_too_old"),
        (TS - 120_000, None),
        (TS - 120_001, "timestamp_in_future"),
        (TS, None),
    ],
)
def test_window_edges(now: int, error: str | None) -> None:
    value = build_header(TOKEN_ID, SECRET, TS)
    if error is None:
        assert verify_token_header(value, lookup, now).timestamp_ms == TS
    else:
        with pytest.raises(HeaderInvalid) as info:
            verify_token_header(value, lookup, now)
        assert info.value.error == error


def test_custom_window() -> None:
    window = TimestampWindow(past_ms=1000, future_ms=0)
    value = build_header(TOKEN_ID, SECRET, TS)
    verify_token_header(value, lookup, TS + 1000, window)
    with pytest.raises(HeaderInvalid, match="timestamp_too_old"):
        verify_token_header(value, lookup, TS + 1001, window)
    with pytest.raises(HeaderInvalid, match="timestamp_in_future"):
        verify_token_header(value, lookup, TS - 1, window)


@pytest.mark.parametrize("bad", [-1, 1.5])
def test_window_validation(bad: object) -> None:
    with pytest.raises(InvalidInput):
        TimestampWindow(past_ms=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        TimestampWindow(future_ms=bad)  # type: ignore[arg-type]


def test_timestamp_checked_only_after_digest() -> None:
    # An attacker without the secret learns nothing about the verifier's clock.
    value = build_header(TOKEN_ID, bytes(16), TS)
    with pytest.raises(HeaderInvalid) as info:
        verify_token_header(value, lookup, TS + 10**9)
    assert info.value.error == "token_invalid"


def test_replay_guard_in_verify() -> None:
    guard = ReplayGuard(TimestampWindow())
    value = build_header(TOKEN_ID, SECRET, TS)
    verify_token_header(value, lookup, TS, replay_guard=guard)
    with pytest.raises(HeaderInvalid) as info:
        verify_token_header(value, lookup, TS + 1, replay_guard=guard)
    assert info.value.error == "replayed"
    # Past the window the old header is too old, not replayed.
    with pytest.raises(HeaderInvalid) as info:
        verify_token_header(value, lookup, TS + 600_001, replay_guard=guard)
    assert info.value.error == "timestamp_too_old"


def test_replay_guard_rejects_second_use() -> None:
    guard = ReplayGuard(TimestampWindow())
    assert guard.check_and_remember(TOKEN_ID, NONCE, TS, TS) is True
    assert guard.check_and_remember(TOKEN_ID, NONCE, TS, TS + 5) is False
    # Same nonce, other token: independent.
    assert guard.check_and_remember(str(uuid.uuid4()), NONCE, TS, TS) is True
    # A different timestamp does not launder a replayed nonce.
    assert guard.check_and_remember(TOKEN_ID, NONCE, TS + 10, TS + 10) is False
    assert len(guard) == 2


def test_replay_guard_remembers_until_last_acceptable_moment() -> None:
    window = TimestampWindow(past_ms=1000, future_ms=500)
    guard = ReplayGuard(window)
    assert guard.check_and_remember(TOKEN_ID, NONCE, TS, TS)
    assert not guard.check_and_remember(TOKEN_ID, NONCE, TS, TS + 1000)
    assert len(guard) == 1
    guard.check_and_remember(TOKEN_ID, b"x" * 16, TS + 1001, TS + 1001)
    assert len(guard) == 1  # the first entry is gone, the new one is kept


def test_replay_guard_does_not_store_out_of_window() -> None:
    guard = ReplayGuard(TimestampWindow(past_ms=1000, future_ms=500))
    assert guard.check_and_remember(TOKEN_ID, NONCE, TS + 501, TS)
    assert guard.check_and_remember(TOKEN_ID, NONCE, TS - 1001, TS)
    assert len(guard) == 0


def test_replay_guard_memory_is_bounded() -> None:
    window = TimestampWindow(past_ms=10_000, future_ms=2_000)
    guard = ReplayGuard(window)
    now = TS
    for i in range(5_000):
        now += 10  # 100 headers per second of fake time
        assert guard.check_and_remember(TOKEN_ID, i.to_bytes(16, "big"), now, now)
        # Never more than the window (plus one step) worth of entries.
        assert len(guard) <= 10_000 // 10 + 1
    assert len(guard) > 900
    guard.check_and_remember(TOKEN_ID, b"z" * 16, now + 20_000, now + 20_000)
    assert len(guard) == 1
    assert "entries=1" in repr(guard)


@given(st.text(max_size=300))
def test_parse_arbitrary_text_raises_only_header_invalid(text: str) -> None:
    error = None
    try:
        parse_header(text)
    except HeaderInvalid as exc:
        error = exc.error
    assert error in {None, "token_invalid"}


_field_names = st.sampled_from(
    ["version", "token_id", "token_digest", "nonce", "timestamp", "x", "Version"]
)
_field_values = st.one_of(
    st.sampled_from(
        ["3.3", "3.0", TOKEN_ID, CHECK_VALUES["3.3"], "AAECAwQFBgcICQoLDA0ODw==", str(TS)]
    ),
    st.text(alphabet="0123456789abcdefABCDEF+/=-_ ", max_size=50),
)


@given(
    st.lists(st.tuples(_field_names, _field_values), max_size=7),
    st.sampled_from([", ", ",", " , "]),
)
def test_verify_structured_fuzz_raises_only_header_invalid(
    fields: list[tuple[str, str]], sep: str
) -> None:
    value = "PowerAuth " + sep.join(f'{k}="{v}"' for k, v in fields)
    try:
        parsed = verify_token_header(value, lookup, TS)
    except HeaderInvalid as exc:
        error = exc.error
    else:
        error = parsed.token_id
    assert error in {"token_invalid", "timestamp_too_old", "timestamp_in_future", TOKEN_ID}


@given(st.binary(min_size=16, max_size=16), st.integers(min_value=0, max_value=10**15 - 1))
def test_round_trip_property(nonce: bytes, ts: int) -> None:
    value = build_header(TOKEN_ID, SECRET, ts, nonce=nonce)
    parsed = parse_header(value)
    assert (parsed.nonce, parsed.timestamp_ms) == (nonce, ts)
    assert parsed.token_digest == compute_digest(SECRET, nonce, ts)
    assert verify_token_header(value, lookup, ts) == parsed


def test_the_public_module_verifies_as_its_docstring_shows() -> None:
    import tokensdk.mac as mac

    secret = bytes(range(16))
    secrets_by_token_id = {"b0e8d2a4-6f0c-4c1e-9d7a-2f5e3c1b0a99": secret}
    header = mac.build_header("b0e8d2a4-6f0c-4c1e-9d7a-2f5e3c1b0a99", secret, 1_700_000_000_000)
    guard = mac.ReplayGuard(mac.TimestampWindow())
    parsed = mac.verify_token_header(
        header, secrets_by_token_id.get, now_ms=1_700_000_001_000, replay_guard=guard
    )
    assert parsed.token_id in secrets_by_token_id
    with pytest.raises(HeaderInvalid) as info:
        mac.verify_token_header(
            header, secrets_by_token_id.get, now_ms=1_700_000_001_000, replay_guard=guard
        )
    assert info.value.error == "replayed"

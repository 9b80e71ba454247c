"""NativeBackend: request building and answer classification, pure (no network)."""

from __future__ import annotations

import pytest
from yarl import URL

import tokensdk
from tokensdk import (
    AccountFrozen,
    Conflict,
    Credentials,
    InvalidCredentials,
    InvalidInput,
    NativeBackend,
    OAuth2,
    ProtocolError,
    RateLimited,
    ResourceBackend,
    ServiceUnavailable,
)
from tokensdk._backend import (
    AccessExpired,
    AuthBackend,
    Call,
    CallerError,
    ErrorDetails,
    Lost,
    Transient,
)
from tokensdk._errors import printable

BACKEND = NativeBackend("http://127.0.0.1:8080/")
CREDS = Credentials(
    username="alice",
    access_token="A",
    refresh_token="R",
    access_expires_at=160.0,
    refresh_expires_at=1100.0,
    access_deadline=60.0,
    refresh_deadline=1000.0,
    lifetime=60.0,
)


def test_native_backend_is_an_auth_backend_with_the_contract_root() -> None:
    assert isinstance(BACKEND, AuthBackend)
    assert (BACKEND.base_url, BACKEND.api_path) == ("http://127.0.0.1:8080", "/v1")
    with pytest.raises(InvalidInput):
        NativeBackend("ftp://example.com")


def test_requests_for_each_intent() -> None:
    assert BACKEND.password_login("alice", "pw") == Call(
        "POST", "/login", {"username": "alice", "password": "pw"}
    )
    assert "pw" not in repr(BACKEND.password_login("alice", "pw"))
    assert BACKEND.refresh(CREDS, "K") == Call(
        "POST", "/refresh", {"username": "alice", "refreshToken": "R", "idempotencyKey": "K"}
    )
    assert BACKEND.with_token(CREDS) == Call(
        "POST", "/login/with-token", {"username": "alice", "accessToken": "A"}
    )
    # A one-time key answer and a logout are never retried by the transport.
    assert BACKEND.with_one_time_key("alice", "h").retry is False
    assert BACKEND.revoke() == Call("POST", "/logout", retry=False, bearer=True)
    assert BACKEND.status() == Call("GET", "/status")
    assert BACKEND.one_time_key_from({"key": "k"}) == "k"
    with pytest.raises(ProtocolError):
        BACKEND.one_time_key_from({"key": ""})


def test_resource_calls_are_the_contracts_paths_bodies_and_flags() -> None:
    assert isinstance(BACKEND, ResourceBackend)
    assert BACKEND.keys() == Call("GET", "/keys")
    # Proof of key needs no bearer (the asset's key is the proof); the signed
    # challenge is single-use, so its token request is never retried.
    assert BACKEND.asset_challenge("sensor-1") == Call(
        "POST", "/assets/challenge", {"assetId": "sensor-1"}
    )
    challenge = {"assetId": "sensor-1", "nonce": "bm9uY2U", "timestamp": 1700000000}
    assert BACKEND.asset_token(challenge, b"\x01\xab") == Call(
        "POST", "/assets/token", {"challenge": challenge, "signature": "01ab"}, retry=False
    )
    assert BACKEND.asset_validate("T") == Call("POST", "/assets/validate", {"token": "T"})
    assert BACKEND.asset_revoke("T") == Call("POST", "/assets/revoke", {"token": "T"})
    # MAC tokens belong to the session: the bearer goes with them. A creation with a
    # password is never retried (a retry would spend a second password attempt).
    assert BACKEND.mac_token_create(("possession",), None) == Call(
        "POST", "/tokens/create", {"factors": ["possession"]}, bearer=True
    )
    assert BACKEND.mac_token_create(("possession", "knowledge"), "pw") == Call(
        "POST",
        "/tokens/create",
        {"factors": ["possession", "knowledge"], "password": "pw"},
        retry=False,
        bearer=True,
    )
    assert BACKEND.mac_token_remove("5c3e") == Call(
        "POST", "/tokens/remove", {"tokenId": "5c3e"}, bearer=True
    )


def test_resource_calls_keep_their_secrets_out_of_reprs() -> None:
    calls = [
        BACKEND.asset_token({"assetId": "a", "nonce": "SECRET-NONCE"}, b"\x5e\xc2\xe7"),
        BACKEND.asset_validate("SECRET-TOKEN"),
        BACKEND.asset_revoke("SECRET-TOKEN"),
        BACKEND.mac_token_create(("possession", "knowledge"), "SECRET-PASSWORD"),
    ]
    for call in calls:
        assert "SECRET" not in repr(call), call
        assert "5ec2e7" not in repr(call), call


def test_an_oauth2_provider_has_no_resource_endpoints() -> None:
    assert not isinstance(OAuth2("http://127.0.0.1:1", client_id="app"), ResourceBackend)


def test_grant_reads_login_tokens() -> None:
    body = {
        "username": "alice",
        "accessToken": "A1",
        "refreshToken": "R1",
        "accessExpire": 60,
        "refreshExpire": 600,
    }
    creds = BACKEND.grant(body, wall=100.0, monotonic=5.0)
    assert (creds.access_expires_at, creds.refresh_deadline) == (160.0, 605.0)
    with pytest.raises(ProtocolError):
        BACKEND.grant({**body, "accessExpire": "60"}, wall=100.0, monotonic=5.0)


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (
            InvalidCredentials("x", error="refresh_token_reused", code=401),
            Lost("refresh_token_reused"),
        ),
        (InvalidCredentials("x", error="", code=401), Lost("invalid_token")),
        (AccountFrozen("x", error="account_frozen", code=403), Lost("account_frozen")),
        (InvalidCredentials("x", error="token_expired", code=701), AccessExpired("token_expired")),
        (RateLimited("x", retry_after=3.0), Transient(3.0)),
        (ServiceUnavailable("x"), Transient()),
        (ProtocolError("x"), Transient()),
        (Conflict("x", error="conflict", code=409), CallerError("conflict")),
    ],
)
def test_classification(error: tokensdk.TokenSDKError, outcome: object) -> None:
    assert BACKEND.classify(error) == outcome


def test_own_calls_are_the_unauthenticated_contract_paths() -> None:
    assert BACKEND.own_call(URL("http://127.0.0.1:8080/v1/refresh"))
    assert BACKEND.own_call(URL("http://127.0.0.1:8080/v1/keys"))
    assert not BACKEND.own_call(URL("http://127.0.0.1:8080/v1/me"))
    assert not BACKEND.own_call(URL("http://127.0.0.1:9999/v1/refresh"))


def test_a_session_accepts_a_backend_or_a_url() -> None:
    for given in (BACKEND, "http://127.0.0.1:8080"):
        session = tokensdk.Session(given)
        assert repr(session).startswith("Session('http://127.0.0.1:8080'")
    with pytest.raises(InvalidInput):
        tokensdk.Session(42)  # type: ignore[arg-type]


def test_native_error_details_read_the_contract_error_body() -> None:
    body = {"error": "invalid_token", "code": 701, "message": "expired\n\x1b[31m", "reason": "x"}
    assert BACKEND.error_details(401, body) == ErrorDetails(
        error="invalid_token", code=701, message=printable("expired\n\x1b[31m"), reason="x"
    )
    # Untrusted members: a name that is not snake_case, a boolean code, a non-string
    # message count as absent; a body that is not an object says nothing.
    hostile = {"error": "Bad Name", "code": True, "message": 5, "reason": "<b>"}
    assert BACKEND.error_details(400, hostile) == ErrorDetails()
    assert BACKEND.error_details(502, None) == ErrorDetails()
    assert BACKEND.error_details(400, ["error"]) == ErrorDetails()


@pytest.mark.parametrize(
    ("member", "window"),
    [
        (30, 30.0),
        (12.5, 12.5),
        (True, None),
        (0, None),
        (-1, None),
        (float("nan"), None),
        (float("inf"), None),
        (10**9, None),
        ("30", None),
        (None, None),
    ],
)
def test_the_retry_window_is_read_strictly_from_a_refresh_answer(
    member: object, window: float | None
) -> None:
    """Only a sane number means the service answers a re-sent refresh as a retry."""
    body = {} if member is None else {"idempotencyWindow": member}
    assert NativeBackend("http://127.0.0.1:1").retry_window(body) == window

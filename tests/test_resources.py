"""The contract's resource endpoints (asset and MAC tokens) behind ResourceBackend.

A session whose backend has no such endpoints (OAuth 2.0: the reference service in
its provider role here) refuses the operations that need them before sending
anything, and keeps serving what it holds.
"""

from __future__ import annotations

import uuid
from contextlib import AbstractAsyncContextManager, nullcontext

import attrs
import pytest
from _service import PASSWORDS, service

from tokensdk import (
    AssetToken,
    Authentication,
    InvalidInput,
    MacToken,
    ManualClock,
    MemoryStore,
    OAuth2,
    Session,
    SessionStatus,
    TokenValidator,
)
from tokensdk._assets import Ed25519Signer
from tokensdk._models import document_to_snapshot, snapshot_to_document
from tokensdk._paseto import KeySet
from tokensdk.mac import HEADER_NAME, parse_header

pytestmark = pytest.mark.anyio

SIGNER = Ed25519Signer.from_seed(bytes(range(32)))
CLIENTS: dict[str, str | None] = {"app": "app-secret"}
# What the service may see from an OAuth 2.0 session: discovery and its token endpoint.
OAUTH_PATHS = {
    "/.well-known/openid-configuration",
    "/.well-known/oauth-authorization-server",
    "/oauth2/token",
}


class Attempts:
    """An attempt hook that writes down every call the session's transport sends."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def __call__(self, method: str, path: str) -> AbstractAsyncContextManager[object]:
        self.sent.append(f"{method} {path}")
        return nullcontext()

    def resource_calls(self) -> list[str]:
        return [s for s in self.sent if any(p in s for p in ("/assets", "/tokens/", "/keys"))]


def provider(url: str) -> OAuth2:
    return OAuth2(url, client_id="app", client_secret=CLIENTS["app"])


async def test_an_oauth2_session_refuses_asset_and_mac_calls_before_sending(
    clock: ManualClock,
) -> None:
    attempts = Attempts()
    restored = AssetToken("sensor-1", "v4.public.restored", clock.time() + 600)
    assets = {"sensor-1": SIGNER.public_key_hex}
    async with (
        service(clock, clients=dict(CLIENTS), assets=assets) as svc,
        Session(
            provider(svc.url), clock=clock, attempt_hook=attempts, access_tokens=[restored]
        ) as session,
    ):
        await session.login("alice", PASSWORDS["alice"])
        assert attempts.sent  # the hook sees the session's calls

        with pytest.raises(InvalidInput, match="asset endpoints"):
            await session.access_tokens.request("sensor-1", SIGNER)
        with pytest.raises(InvalidInput, match="asset endpoints"):
            await session.access_tokens.request("sensor-1", SIGNER, renew=True)
        with pytest.raises(InvalidInput, match="asset endpoints"):
            await session.access_tokens.revoke("sensor-1")
        with pytest.raises(InvalidInput, match="asset endpoints"):
            await session.validate_access_token(restored.token, remote=True)
        with pytest.raises(InvalidInput, match="asset endpoints"):
            await session.access_tokens.revalidate()
        with pytest.raises(InvalidInput, match="MAC token endpoints"):
            await session.token_store.request_access_token("payments", Authentication.possession())
        with pytest.raises(InvalidInput, match="MAC token endpoints"):
            await session.token_store.request_access_token(
                "signing", Authentication.possession_knowledge(PASSWORDS["alice"])
            )

        # What the session holds is still served, and nothing was dropped.
        assert list(session.access_tokens) == [restored]
        assert session.access_tokens.headers_for("sensor-1") == {
            "Authorization": f"Bearer {restored.token}"
        }
        assert not session.token_store.has_local_token("payments")
        assert session.status is SessionStatus.ACTIVE

    # Nothing left for an asset or MAC endpoint: not from the calls above, not from
    # a background revalidation of the restored token.
    assert attempts.resource_calls() == []
    assert set(svc.stats.requests_by_path) <= OAUTH_PATHS
    assert svc.stats.asset_tokens_issued == svc.stats.mac_tokens_created == 0


async def test_an_oauth2_session_signs_with_a_stored_mac_token_but_cannot_remove_it_remotely(
    clock: ManualClock,
) -> None:
    attempts = Attempts()
    async with service(clock, clients=dict(CLIENTS)) as svc:
        first = MemoryStore()
        async with Session(provider(svc.url), clock=clock, store=first) as session:
            await session.login("alice", PASSWORDS["alice"])
        document = first.document
        assert document is not None
        # A MAC token in the saved state (how it got there does not matter here).
        token = MacToken("payments", str(uuid.uuid4()), bytes(range(16)), ("possession",))
        snapshot = document_to_snapshot(document, wall=clock.time(), monotonic=clock.monotonic())
        saved = snapshot_to_document(attrs.evolve(snapshot, mac_tokens={"payments": token}))

        async with Session(
            provider(svc.url), clock=clock, store=MemoryStore(saved), attempt_hook=attempts
        ) as session:
            store = session.token_store
            assert store.has_local_token("payments")
            name, value = store.generate_header_for_token("payments")
            assert name == HEADER_NAME
            assert parse_header(value).token_id == token.token_id
            # A local hit needs no endpoint: the stored token is returned.
            assert await store.request_access_token("payments", Authentication.possession()) == (
                token
            )
            with pytest.raises(InvalidInput, match="MAC token endpoints"):
                await store.remove_access_token("payments")
            assert store.get_local_token("payments") == token  # kept: nothing was sent
            assert store.remove_local_token("payments")
            assert not store.has_local_token("payments")

    assert attempts.resource_calls() == []
    assert set(svc.stats.requests_by_path) <= OAUTH_PATHS


async def test_a_validator_needs_keys_with_a_backend_that_has_no_key_set() -> None:
    backend = OAuth2("http://127.0.0.1:9", client_id="app")
    with pytest.raises(InvalidInput, match="key set"):
        TokenValidator(backend)
    with pytest.raises(InvalidInput, match="remote validation"):
        TokenValidator(backend, keys=KeySet(), remote=True)
    async with TokenValidator(backend, keys=KeySet()) as validator:
        with pytest.raises(InvalidInput):
            await validator.refresh_keys()

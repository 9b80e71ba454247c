"""Cancel callers and close the session at random points (seeded, many iterations).

``TOKENSDK_SEED`` and ``TOKENSDK_ITERATIONS`` make the run longer.
"""

from __future__ import annotations

import os
import random

import anyio
import pytest
from _service import PASSWORDS, service

import tokensdk
from tokensdk import ManualClock, MemoryStore, Session, TokenSDKError
from tokensdk._assets import Ed25519Signer
from tokensdk._models import encode_state

pytestmark = pytest.mark.anyio

SEED = int(os.environ.get("TOKENSDK_SEED", "7"))
ITERATIONS = int(os.environ.get("TOKENSDK_ITERATIONS", "40"))


async def test_cancel_and_close_at_random_points(clock: ManualClock) -> None:
    await _run(clock, ["refresh", "mac"], guard=30)


async def test_cancel_and_close_during_proof_of_key(clock: ManualClock) -> None:
    await _run(clock, ["asset", "refresh"], guard=5)


async def _run(clock: ManualClock, kinds: list[str], guard: float) -> None:
    rng = random.Random(SEED)
    signer = Ed25519Signer.generate()
    outcomes: dict[str, int] = {}
    async with service(clock, access_ttl=60, assets={"door": signer.public_key_hex}) as svc:
        for _ in range(ITERATIONS):
            store = MemoryStore()
            session = Session(svc.url, clock=clock, store=store, rng=random.Random(rng.random()))

            async def op(kind: str, scope: anyio.CancelScope, session: Session = session) -> None:
                with scope:
                    try:
                        if kind == "refresh":
                            await session.token_refresh()
                        elif kind == "asset":
                            await session.access_tokens.request("door", signer, renew=True)
                        else:
                            await session.token_store.request_access_token(
                                f"t{rng.randrange(3)}", tokensdk.Authentication.possession()
                            )
                        outcomes[kind] = outcomes.get(kind, 0) + 1
                    except TokenSDKError as exc:
                        outcomes[type(exc).__name__] = outcomes.get(type(exc).__name__, 0) + 1

            with anyio.fail_after(guard):
                async with anyio.create_task_group() as callers, session:
                    await session.login("alice", PASSWORDS["alice"])
                    scopes = []
                    for _ in range(rng.randrange(1, 8)):
                        scope = anyio.CancelScope()
                        scopes.append(scope)
                        kind = rng.choice(kinds)
                        callers.start_soon(op, kind, scope)
                    for _ in range(rng.randrange(30)):
                        await anyio.lowlevel.checkpoint()
                        if scopes and rng.random() < 0.2:
                            scopes.pop(rng.randrange(len(scopes))).cancel()
                    # closed at a random point: every caller ends (no deadlock)
            assert store.document == encode_state(session.snapshot)
    assert sum(outcomes.values()) > 0

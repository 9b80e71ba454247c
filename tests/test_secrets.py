"""No secret leaks: logs at DEBUG (every logger), reprs, strs and error messages.

Every kind of secret is issued, the lifecycle runs with its error paths, and
every text that could reach a log or a user is searched for every secret.
"""

from __future__ import annotations

import base64
import logging
import os
import stat
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from _service import PASSWORDS, service

import tokensdk
from tokensdk import FileStore, ManualClock, Session, TokenSDKError
from tokensdk._assets import Ed25519Signer
from tokensdk._models import encode_state

pytestmark = pytest.mark.anyio

SEED = bytes(range(32))


def forms(secret: str | bytes) -> set[str]:
    """The spellings a secret could leak in."""
    raw = secret.encode() if isinstance(secret, str) else secret
    found = {raw.hex(), base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()}
    if isinstance(secret, str):
        found.add(secret)
    return {text.rstrip("=") for text in found if len(text.rstrip("=")) >= 8}


async def test_no_secret_in_logs_reprs_or_errors(
    clock: ManualClock, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)  # root: every logger, aiohttp included
    for name in ("tokensdk", "aiohttp", "aiohttp.access", "aiohttp.server", "aiohttp.client"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    signer = Ed25519Signer.from_seed(SEED)
    secrets: set[str] = set(forms(PASSWORDS["alice"])) | forms(SEED)
    errors: list[BaseException] = []
    texts: list[str] = []
    store_path = tmp_path / "state" / "session.json"
    db = tmp_path / "service.db"
    async with (
        service(clock, access_ttl=60, db=str(db), assets={"door": signer.public_key_hex}) as svc,
        aiohttp.ClientSession() as http,
    ):
        store = FileStore(store_path)
        async with Session(svc.url, clock=clock, store=store) as session:
            try:
                await session.login("alice", "wrong-password-123")
            except TokenSDKError as exc:
                errors.append(exc)
            secrets |= forms("wrong-password-123")
            await session.login("alice", PASSWORDS["alice"])
            first = session.credentials
            assert first is not None
            secrets |= forms(first.access_token) | forms(first.refresh_token)
            creds = await session.token_refresh()
            secrets |= forms(creds.access_token) | forms(creds.refresh_token)
            asset = await session.access_tokens.request("door", signer)
            secrets |= forms(asset.token)
            mac = await session.token_store.request_access_token(
                "main", tokensdk.Authentication.possession()
            )
            secrets |= forms(mac.secret)
            header_name, header = session.token_store.generate_header_for_token("main")
            texts += [repr(mac), str(mac), repr(asset), str(asset), repr(creds), str(creds)]
            texts += [repr(session), repr(session.snapshot), str(session.snapshot), repr(store)]
            texts += [repr(session.access_tokens), repr(signer), str(signer)]
            # error paths: bad MAC header, replayed header, invalid asset token
            bad = header.replace('token_digest="', 'token_digest="AAAA')
            for value in (bad, header, header):
                async with http.get(svc.url + "/v1/me/token", headers={header_name: value}) as r:
                    texts.append(await r.text())
            try:
                await session.access_tokens.validate(asset.token[:-4] + "AAAA", remote=True)
            except TokenSDKError as exc:
                errors.append(exc)
            # refresh reuse: the old refresh token again (revokes the family)
            body = {"username": "alice", "refreshToken": first.refresh_token}
            async with http.post(svc.url + "/v1/refresh", json=body) as r:
                texts.append(await r.text())
            try:
                await session.token_refresh()
            except TokenSDKError as exc:
                errors.append(exc)
            events = session.events()
            await session.flush()
        texts += [repr(e) for e in _drain(events)]
        # one-time key
        async with http.post(svc.url + "/v1/login/one-time-key", json={"username": "bob"}) as r:
            key = (await r.json())["key"]
        secrets |= forms(key) | forms(PASSWORDS["bob"])
        # corrupt store: loaded by a new session, error reported, nothing leaked
        store_path.write_text('{"version": 1, "credentials": {"accessToken": "' + "x" * 40)
        async with Session(svc.url, clock=clock, store=FileStore(store_path)) as again:
            texts.append(repr(again))
        state_text = repr(svc.state)
    texts += [state_text]
    texts += [str(e) for e in errors] + [repr(e) for e in errors]
    texts += [record.getMessage() for record in caplog.records]
    texts += [str(record.args) for record in caplog.records]
    texts += [repr(record.exc_info) for record in caplog.records if record.exc_info]
    assert len(errors) >= 3
    assert len(caplog.records) > 5
    assert len(secrets) > 10
    leaks = [(s, t[:200]) for t in texts for s in secrets if s in t]
    assert leaks == []
    # the service stores password hashes, never passwords (or the tokens themselves)
    raw_db = _read_all(tmp_path, "service.db*")
    for password in PASSWORDS.values():
        assert password.encode() not in raw_db
        assert password not in state_text
    assert creds.refresh_token.encode() not in raw_db


def _drain(events: Any) -> list[Any]:
    out = []
    while events._buffer:
        out.append(events._buffer.popleft())
    return out


async def test_file_store_and_its_temp_file_are_private(
    clock: ManualClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    modes: list[int] = []
    real_replace = os.replace

    def spy(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        modes.append(stat.S_IMODE(os.stat(src).st_mode))
        real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", spy)
    path = tmp_path / "dir" / "state.json"
    async with service(clock) as svc, Session(svc.url, clock=clock, store=FileStore(path)) as s:
        await s.login("alice", PASSWORDS["alice"])
        await s.flush()
        document = encode_state(s.snapshot)
    assert modes
    assert set(modes) == {0o600}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert document["credentials"] is not None


def _read_all(directory: Path, pattern: str) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.glob(pattern)))

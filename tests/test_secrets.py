"""No secret leaks: logs at DEBUG (every logger), reprs, strs and error messages.

Every kind of secret is issued (passwords, access and refresh tokens, MAC secrets,
a one-time key and its answer, the holder's and the service's signing keys, the
service's password hashes), the lifecycle runs through its error paths (wrong
credentials, rate limiting, transport faults, refresh reuse, revoked and tampered
tokens, refused MAC headers, corrupt and failing stores), and every text that could
reach a log or a user is searched for every secret, and for every 12-character
fragment of it: logging a truncated secret is a leak too.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import stat
from collections.abc import Awaitable, Iterable
from pathlib import Path
from typing import Any

import _proxy
import aiohttp
import pytest
from _proxy import FaultProxy
from _service import PASSWORDS, service
from keyrings.alt.file import PlaintextKeyring

import tokensdk
from tokensdk import (
    EventType,
    FileStore,
    HeaderInvalid,
    InvalidCredentials,
    KeyringStore,
    ManualClock,
    ProtocolError,
    RateLimited,
    RetryConfig,
    ServiceUnavailable,
    Session,
    SessionLost,
    SessionSnapshot,
    StoreError,
    TokenInvalid,
    TokenRevoked,
    TokenSDKError,
    one_time_key_answer,
)
from tokensdk._assets import Ed25519Signer
from tokensdk._models import snapshot_to_document
from tokensdk.mac import verify_token_header
from tokensdk.server._state import ha1_digest

pytestmark = pytest.mark.anyio

HOLDER_SEED = bytes(range(32))
# Retries without waiting: the transport's retry path (and its log lines) runs, and
# nothing sleeps on the manual clock.
FAST_RETRY = RetryConfig(initial=0.0, maximum=0.0, jitter=0.0, max_attempts=3)
FRAGMENT = 12
# Planted where the SDK must read and refuse them, never repeat them.
CORRUPT_MARKER = "Cm9ycnVwdC1zdG9yZS1tYXJrZXItMQ"
INVALID_STATE_MARKER = "aW52YWxpZC1zdGF0ZS1tYXJrZXItMg"
TRUNCATED_ANSWER_MARKER = "dHJ1bmNhdGVkLWFuc3dlci1tYXJrZXI"
KEYRING_MARKER = "a2V5cmluZy1lbnRyeS1tYXJrZXItNA"


class Secrets:
    """Every secret, in each form it could leak in, and a search for them.

    A text leaks a secret when it contains any of its forms whole, or any
    ``FRAGMENT``-character piece of a form (a truncated secret in a log line).
    Forms shorter than that (a short password) are searched whole.
    """

    def __init__(self) -> None:
        self.whole: dict[str, str] = {}  # form -> what it is
        self.pieces: dict[str, str] = {}  # FRAGMENT-long piece -> what it is

    def add(self, what: str, secret: str | bytes, *, whole_only: bool = False) -> None:
        for form in _forms(secret):
            self.whole[form] = what
            if whole_only or len(form) <= FRAGMENT:
                continue
            for i in range(len(form) - FRAGMENT + 1):
                self.pieces[form[i : i + FRAGMENT]] = what

    def add_tokens(self, what: str, body: Any) -> None:
        """Add the tokens of a LoginTokens (or MAC token) JSON body, if it is one."""
        if isinstance(body, dict):
            for field in ("accessToken", "refreshToken", "key"):
                if isinstance(body.get(field), str):
                    self.add(f"{what} {field}", body[field])
            if isinstance(body.get("tokenSecret"), str):
                self.add(f"{what} tokenSecret", base64.b64decode(body["tokenSecret"]))

    def leaks(self, texts: Iterable[str]) -> list[tuple[str, str]]:
        found = []
        for text in texts:
            hits = {what for form, what in self.whole.items() if form in text}
            hits |= {
                self.pieces[text[i : i + FRAGMENT]]
                for i in range(len(text) - FRAGMENT + 1)
                if text[i : i + FRAGMENT] in self.pieces
            }
            found += [(what, text[:300]) for what in sorted(hits)]
        return found

    def __len__(self) -> int:
        return len(set(self.whole.values()))


def _forms(secret: str | bytes) -> set[str]:
    """The spellings a secret could leak in."""
    if isinstance(secret, str):
        return {secret}
    found = {
        secret.hex(),
        base64.b64encode(secret).decode(),
        base64.urlsafe_b64encode(secret).decode(),
        repr(secret)[2:-1],  # an escaped bytes repr, as in "secret=b'...'"
    }
    return {form.rstrip("=") for form in found}


def _chain(error: BaseException) -> list[str]:
    """str, repr and args of an exception and of every exception behind it."""
    texts: list[str] = []
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        exc = pending.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        texts += [str(exc), repr(exc), *map(repr, exc.args)]
        pending += [exc.__cause__, exc.__context__]
        pending += list(getattr(exc, "exceptions", ()))
    return texts


async def test_no_secret_in_logs_reprs_or_errors(
    clock: ManualClock, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)  # the root logger: every logger, aiohttp included
    for name in ("tokensdk", "tokensdk.server", "aiohttp", "aiohttp.access", "aiohttp.client"):
        caplog.set_level(logging.DEBUG, logger=name)
    secrets = Secrets()
    texts: list[str] = []
    errors: list[TokenSDKError] = []

    async def fails(kind: type[TokenSDKError], call: Awaitable[Any]) -> None:
        # Every error path must really be taken: a path that stops failing is a hole.
        with pytest.raises(kind) as caught:
            await call
        errors.append(caught.value)

    def collect(snapshot: SessionSnapshot) -> None:
        # Every token a session ever holds, refreshed in the background or not.
        creds = snapshot.credentials
        if creds is not None:
            secrets.add("access token", creds.access_token)
            secrets.add("refresh token", creds.refresh_token)
        for item in snapshot.access_tokens:
            secrets.add("asset token", item.token)
        for mac in snapshot.mac_tokens.values():
            secrets.add("MAC secret", mac.secret)
        texts.extend([repr(snapshot), str(snapshot)])

    holder = Ed25519Signer.from_seed(HOLDER_SEED)
    secrets.add("holder seed", HOLDER_SEED)
    for name, password in PASSWORDS.items():
        secrets.add(f"{name}'s password", password)
        secrets.add(f"{name}'s HA1", ha1_digest(name, "tokensdk", password))
    for wrong in ("wrong-password-123", "guess-number-1", "guess-number-2", "guess-number-3"):
        secrets.add("a wrong password", wrong)
    for marker in (CORRUPT_MARKER, INVALID_STATE_MARKER, TRUNCATED_ANSWER_MARKER, KEYRING_MARKER):
        secrets.add("a secret in a corrupt store or answer", marker)

    state_dir = tmp_path / "state"
    store_path = state_dir / "session.json"
    db = tmp_path / "service.db"
    config = {"access_ttl": 60, "login_rate_limit": 3, "db": str(db)}
    async with (
        service(clock, assets={"door": holder.public_key_hex}, **config) as svc,
        aiohttp.ClientSession() as http,
    ):
        # The service's own secrets: its signing key and its password hashes.
        signing_key = svc.state.active_signing_key()
        secrets.add("service signing key", signing_key.seed)
        secrets.add("service signing key", signing_key.paserk_secret, whole_only=True)
        for name in PASSWORDS:
            secrets.add(f"{name}'s scrypt hash", svc.state.users[name].hash)
        proxy = FaultProxy(svc.url)
        async with proxy.running():
            store = FileStore(store_path)
            async with Session(
                proxy.url, clock=clock, store=store, retry=FAST_RETRY, on_change=collect
            ) as session:
                events = session.events()
                await fails(InvalidCredentials, session.login("alice", "wrong-password-123"))
                await session.login("alice", PASSWORDS["alice"])
                first = session.credentials
                assert first is not None

                # Transport faults: a 503 burst (retried), an answer lost mid-way
                # (retried), a truncated answer and an HTML page (until retries run out).
                proxy.fail_next(2)
                await session.token_refresh()
                proxy.fail_next(1, proxy.reset_mid_response)
                await session.token_refresh()
                assert proxy.lost
                cut = b'{"serverTime": 1, "realm": "' + TRUNCATED_ANSWER_MARKER.encode()
                proxy.fail_next(3, _proxy.json_body(cut))
                await fails(ProtocolError, session.sync_clock())
                proxy.fail_next(3, _proxy.html_ok)
                await fails(ProtocolError, session.access_tokens.validator.refresh_keys())
                proxy.fail_next(3)
                await fails(ServiceUnavailable, session.token_refresh())

                # Asset tokens, by the service's first key and by a rotated one.
                asset = await session.access_tokens.request("door", holder)
                new_kid = svc.rotate_key()
                secrets.add("service signing key", svc.state.active_signing_key().seed)
                assert svc.state.active_signing_key().public_key.pid == new_kid
                renewed = await session.access_tokens.request("door", holder, renew=True)
                assert (await session.access_tokens.validate(renewed.token, remote=True)).kid
                tampered = renewed.token[:-6] + (
                    "AAAAAA" if renewed.token[-6:] != "AAAAAA" else "BBBBBB"
                )
                await fails(TokenInvalid, session.access_tokens.validate(tampered, remote=True))

                # MAC tokens: possession, knowledge, knowledge with a wrong password.
                mac = await session.token_store.request_access_token(
                    "main", tokensdk.Authentication.possession()
                )
                strong = await session.token_store.request_access_token(
                    "strong", tokensdk.Authentication.possession_knowledge(PASSWORDS["alice"])
                )
                await fails(
                    InvalidCredentials,
                    session.token_store.request_access_token(
                        "weak", tokensdk.Authentication.possession_knowledge("guess-number-1")
                    ),
                )
                header_name, header = session.token_store.generate_header_for_token("main")
                bad = header.replace('token_digest="', 'token_digest="AAAA')
                for value in (header, header, bad):  # accepted, replayed, refused
                    async with http.get(
                        svc.url + "/v1/me/token", headers={header_name: value}
                    ) as r:
                        texts.append(await r.text())
                with pytest.raises(HeaderInvalid) as refused:
                    verify_token_header(header, lambda _: bytes(16), int(clock.time() * 1000))
                errors.append(refused.value)

                # The application's own requests through the session's middleware.
                middlewares = (session.middleware(), session.middleware(mac_token="strong"))
                for middleware, path in zip(middlewares, ("/v1/me", "/v1/me/token"), strict=True):
                    async with (
                        aiohttp.ClientSession(middlewares=(middleware,)) as app_http,
                        app_http.get(svc.url + path) as r,
                    ):
                        assert r.status == 200, await r.text()
                    texts.append(repr(middleware))

                # The store fails (its directory is gone): the session carries on.
                shutil.rmtree(state_dir)
                state_dir.write_text("not a directory")
                await session.token_refresh()
                await session.flush()  # the write was attempted (and failed)
                state_dir.unlink()
                state_dir.mkdir(mode=0o700)

                texts += [repr(mac), str(mac), repr(strong), repr(asset), str(asset)]
                texts += [repr(session), repr(session.snapshot), repr(store), repr(holder)]
                texts += [repr(session.access_tokens), repr(session.token_store)]
                texts += [repr(session.access_tokens.validator), repr(session.credentials)]

                # Revocation, refresh reuse (the family dies), a logout that fails.
                assert await session.access_tokens.revoke("door")
                await fails(
                    TokenRevoked, session.access_tokens.validate(renewed.token, remote=True)
                )
                body = {"username": "alice", "refreshToken": first.refresh_token}
                async with http.post(svc.url + "/v1/refresh", json=body) as r:
                    assert r.status == 401
                    texts.append(await r.text())
                await fails(SessionLost, session.token_refresh())
                await session.login("alice", PASSWORDS["alice"])
                proxy.only_paths = {"/v1/logout"}
                proxy.fail_next(1)
                assert not await session.logout()
                proxy.only_paths = None
                await session.flush()
            reported = [e async for e in events]
            texts += [repr(event) for event in reported]
            assert EventType.STORE_FAILED in {event.type for event in reported}
            for body in proxy.lost:
                secrets.add_tokens("lost answer", json.loads(body))

            # Login brute force: the rate limit engages.
            async with Session(proxy.url, clock=clock, retry=FAST_RETRY) as brute:
                for guess in ("guess-number-1", "guess-number-2", "guess-number-3"):
                    await fails(InvalidCredentials, brute.login("mallory", guess))
                await fails(RateLimited, brute.login("mallory", "guess-number-1"))

            # One-time key login, the SDK's way: the application's backend answers.
            async def answer(key: str) -> str:
                digest = one_time_key_answer(key, "bob", "tokensdk", PASSWORDS["bob"])
                secrets.add("one-time key", key)
                secrets.add("one-time key answer", digest)
                return digest

            async with Session(proxy.url, clock=clock, on_change=collect) as otk:
                await otk.login_with_one_time_key("bob", answer)
                assert otk.username == "bob"
                await fails(
                    InvalidCredentials, otk.login_with_one_time_key("bob", lambda key: "0" * 64)
                )
                texts.append(repr(otk))

        # Corrupt stores: each is read, refused and reported without its content.
        keyring = PlaintextKeyring()
        keyring.file_path = str(tmp_path / "keyring.cfg")
        keyring.set_password(
            "tokensdk", "alice", '{"format": "tokensdk.state", "x": "' + KEYRING_MARKER
        )
        broken_keyring = PlaintextKeyring()
        broken_keyring.file_path = str(tmp_path)  # a directory: every write fails
        invalid_state = {
            "version": 1,
            "status": "active",
            "credentials": {"username": "alice", "accessToken": INVALID_STATE_MARKER},
        }
        cut_envelope = '{"format": "tokensdk.state", "version": 1, "state": {"a": "'
        for content, store in [
            (cut_envelope + CORRUPT_MARKER, FileStore(store_path)),
            (encode_state_text(invalid_state), FileStore(store_path)),
            (None, KeyringStore("alice", backend=keyring)),
            (None, KeyringStore("x", backend=broken_keyring)),
        ]:
            if content is not None:
                store_path.write_text(content)
            async with Session(svc.url, clock=clock, store=store) as again:
                failures = again.events()
                await again.login("alice", PASSWORDS["alice"])  # saving may fail: logged
                await again.flush()
                texts += [repr(again), repr(store)]
                collect(again.snapshot)
            texts += [repr(e) for e in [e async for e in failures]]
        state_texts = [repr(svc.config)]
        for table in (svc.state.users, svc.state.mac_tokens, svc.state.signing_keys):
            state_texts += [repr(record) for record in table.values()]
        state_texts += [repr(record) for record in svc.state.one_time_keys.values()]

    store_errors = [e for e in errors if isinstance(e, StoreError)]
    texts += state_texts
    for error in errors:
        texts += _chain(error)
    formatter = logging.Formatter()
    for record in caplog.records:
        texts += [record.getMessage(), repr(record.args)]
        if record.exc_info:
            texts.append(formatter.formatException(record.exc_info))

    # Every path was taken, and the search itself finds what it looks for.
    kinds = {type(e) for e in errors}
    assert {InvalidCredentials, RateLimited, ProtocolError, ServiceUnavailable} <= kinds
    assert {SessionLost, TokenRevoked, HeaderInvalid} <= kinds
    assert any(isinstance(e, TokenInvalid) and not isinstance(e, TokenRevoked) for e in errors)
    assert store_errors == []  # store failures are reported as events and logs, not raised
    messages = caplog.text
    assert "saving the session state failed" in messages
    assert messages.count("the stored state could not be loaded") >= 3
    assert "retrying" in messages
    assert len(caplog.records) > 20
    assert len(secrets) >= 15
    some_token = first.refresh_token
    assert secrets.leaks([f"log: ...{some_token[5 : 5 + FRAGMENT]}..."]) != []
    assert secrets.leaks([repr(mac.secret)[2:-1]]) != []

    assert secrets.leaks(texts) == []

    # The service stores password hashes, never passwords (nor the tokens themselves).
    raw_db = _read_all(tmp_path, "service.db*")
    for password in PASSWORDS.values():
        assert password.encode() not in raw_db
    assert first.refresh_token.encode() not in raw_db
    assert first.access_token.encode() not in raw_db


def encode_state_text(document: dict[str, Any]) -> str:
    """The stored envelope of a state document (valid JSON, whatever the state)."""
    return json.dumps({"format": "tokensdk.state", "version": 1, "state": document})


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
        document = snapshot_to_document(s.snapshot)
    assert modes
    assert set(modes) == {0o600}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert document["credentials"] is not None


def _read_all(directory: Path, pattern: str) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.glob(pattern)))


def test_secret_forms_cover_the_spellings_the_sdk_uses() -> None:
    secret = hashlib.sha256(b"x").digest()[:16]
    forms = _forms(secret)
    assert base64.b64encode(secret).decode().rstrip("=") in forms
    assert secret.hex() in forms

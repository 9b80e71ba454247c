"""Secrets at rest: sealed under the service key file, so a copy of the database opens nothing.

Before the fix MAC token secrets, each user's ``ha1``, the signing-key seeds and the
expected answer of a pending one-time key were stored in the clear (issue 10 section 5).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sqlite3
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from _service import PASSWORDS, call, login, service

from tokensdk import ManualClock
from tokensdk._paseto import SigningKey
from tokensdk.mac import build_header
from tokensdk.server import RunningService, ServiceConfig, running_service
from tokensdk.server._cli import StartError, serve_forever
from tokensdk.server._db import SqlitePersistence
from tokensdk.server._state import (
    ServiceState,
    ha1_digest,
    make_user_record,
    one_time_key_answer,
    token_digest,
)
from tokensdk.server._vault import (
    KEY_SIZE,
    SealError,
    ServiceKeyError,
    Vault,
    derive_key,
    record_aad,
    seal,
    unseal,
)

pytestmark = pytest.mark.anyio

CHECK_SECRET = "VqAXEhziiT27lxoqREjtcQ=="  # the contract's check-value MAC secret
MAC_ID = "5b3a9d1e-8c4f-4a2b-9e6d-7f1c2b3a4d5e"
SEALED_FIELDS = {"users": "ha1", "mac_tokens": "secret", "signing_keys": "seed"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def database_bytes(db: Path) -> bytes:
    """The database and its side files, as a backup would copy them (not the key file)."""
    return b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*") if p.suffix != ".key")


def rows(db: Path, table: str) -> dict[str, dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        found = conn.execute(f"SELECT key, value FROM {table}").fetchall()
    return {key: json.loads(value) for key, value in found}


async def create_mac(http: aiohttp.ClientSession, svc: RunningService, access: str) -> Any:
    body = {"factors": ["possession"]}
    status, mac, _ = await call(http, svc, "POST", "/v1/tokens/create", body, token=access)
    assert status == 200, mac
    return mac


async def mac_status(
    http: aiohttp.ClientSession, svc: RunningService, token_id: str, secret: str
) -> int:
    now_ms = int(svc.config.clock.time() * 1000)
    header = build_header(token_id, base64.b64decode(secret), now_ms)
    status, _, _ = await call(
        http, svc, "GET", "/v1/me/token", headers={"X-PowerAuth-Token": header}
    )
    return status


async def one_time_key_login(
    http: aiohttp.ClientSession, svc: RunningService, user: str = "alice"
) -> int:
    _, body, _ = await call(http, svc, "POST", "/v1/login/one-time-key", {"username": user})
    ha1 = ha1_digest(user, "tokensdk", PASSWORDS[user])
    answer = {"username": user, "hash": one_time_key_answer(body["key"], ha1)}
    status, _, _ = await call(http, svc, "POST", "/v1/login/with-one-time-key", answer)
    return status


# -- a copy of the database -----------------------------------------------------------


async def test_database_copy_holds_no_mac_secret_ha1_seed_or_key_answer(
    http: aiohttp.ClientSession, clock: ManualClock, tmp_path: Path
) -> None:
    db = tmp_path / "s.db"
    async with service(clock, db=str(db)) as svc:
        tokens = await login(http, svc)
        mac = await create_mac(http, svc, tokens["accessToken"])
        seed = svc.state.active_signing_key().seed
        _, body, _ = await call(http, svc, "POST", "/v1/login/one-time-key", {"username": "bob"})
        ha1s = [ha1_digest(user, "tokensdk", pw) for user, pw in PASSWORDS.items()]
        pending_answer = one_time_key_answer(body["key"], ha1s[1])
    raw = database_bytes(db)

    secret = base64.b64decode(mac["tokenSecret"])
    found = {
        "MAC secret (Base64)": mac["tokenSecret"].encode() in raw,
        "MAC secret (raw)": secret in raw,
        "MAC secret (hex)": secret.hex().encode() in raw,
        "ha1": any(h.encode() in raw for h in ha1s),
        "signing seed (hex)": seed.hex().encode() in raw,
        "signing seed (raw)": seed in raw,
        "pending one-time key answer": pending_answer.encode() in raw,
    }
    assert found == dict.fromkeys(found, False)
    # The fields are there, sealed: the service opens them with its key file.
    for table, field in SEALED_FIELDS.items():
        values = [record[field] for record in rows(db, table).values()]
        assert values
        assert all(v.startswith("v1:") for v in values)


async def test_restart_with_the_key_file_keeps_every_secret_working(
    http: aiohttp.ClientSession, clock: ManualClock, tmp_path: Path
) -> None:
    db = str(tmp_path / "s.db")
    async with service(clock, db=db) as svc:
        tokens = await login(http, svc)
        mac = await create_mac(http, svc, tokens["accessToken"])
        keys = svc.state.public_keys()
    clock.advance(1)  # a new timestamp: the header is not a replay
    # No users configured: alice's record (and its sealed ha1) comes from the database.
    async with service(clock, db=db, users={}) as svc:
        assert await mac_status(http, svc, mac["tokenId"], mac["tokenSecret"]) == 200
        assert await one_time_key_login(http, svc) == 200
        assert svc.state.public_keys() == keys
        status, _, _ = await call(http, svc, "GET", "/v1/me", token=tokens["accessToken"])
        assert status == 200


@pytest.mark.parametrize("damage", ["missing", "wrong", "short", "directory"])
async def test_restart_without_the_right_key_file_is_a_clear_error(
    http: aiohttp.ClientSession, clock: ManualClock, tmp_path: Path, damage: str
) -> None:
    db = tmp_path / "s.db"
    key_file = tmp_path / "s.db.key"
    async with service(clock, db=str(db)) as svc:
        await login(http, svc)
    key = key_file.read_bytes()
    key_file.unlink()
    if damage == "wrong":
        key_file.write_bytes(os.urandom(KEY_SIZE))
    elif damage == "short":
        key_file.write_bytes(key[:16])
    elif damage == "directory":
        key_file.mkdir()
    expected = {
        "missing": "is missing, but the database holds secrets sealed with it",
        "wrong": "does not open the database's secrets (wrong key)",
        "short": "does not hold a 32-byte key",
        "directory": "is not a regular file",
    }[damage]

    with pytest.raises(ServiceKeyError) as refused:
        async with service(clock, db=str(db)):
            pass  # pragma: no cover - never starts
    message = str(refused.value)
    assert expected in message
    assert str(key_file) in message
    assert "\n" not in message
    assert key.hex() not in message
    # `tokensdk serve` says it in one line, without a traceback.
    config = ServiceConfig(db=str(db), clock=clock)
    with pytest.raises(
        StartError, match=f"^cannot start the service: the service key file {key_file}"
    ):
        await serve_forever(config)
    if damage == "missing":
        assert not key_file.exists()  # a failed start makes no new (wrong) key file


@pytest.mark.usefixtures("open_umask")
async def test_key_file_is_created_private_next_to_the_database(
    http: aiohttp.ClientSession, clock: ManualClock, tmp_path: Path
) -> None:
    db = tmp_path / "s.db"
    async with service(clock, db=str(db)) as svc:
        await login(http, svc)
    key_file = tmp_path / "s.db.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(key_file.read_bytes()) == KEY_SIZE


async def test_an_open_key_file_is_tightened_with_a_warning(
    clock: ManualClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "s.db"
    async with service(clock, db=str(db)):
        pass
    key_file = tmp_path / "s.db.key"
    key_file.chmod(0o644)
    caplog.set_level(logging.WARNING, logger="tokensdk.server")
    async with service(clock, db=str(db)):
        pass
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    warnings = [r.getMessage() for r in caplog.records if "service key file" in r.getMessage()]
    assert warnings == [
        f"service key file {key_file} was open to other users (mode 0644); changed to 0600"
    ]


async def test_key_file_given_by_option_or_environment(
    http: aiohttp.ClientSession,
    clock: ManualClock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tokensdk.server._cli import KEY_FILE_ENV, config_from_args
    from tokensdk.server._cli import add_serve_arguments as add

    db = str(tmp_path / "data" / "s.db")
    (tmp_path / "data").mkdir()
    (tmp_path / "secrets").mkdir()
    key_file = tmp_path / "secrets" / "service.key"
    async with service(clock, db=db, key_file=str(key_file)) as svc:
        tokens = await login(http, svc)
        mac = await create_mac(http, svc, tokens["accessToken"])
    assert key_file.is_file()
    assert not (tmp_path / "data" / "s.db.key").exists()

    import argparse

    parser = argparse.ArgumentParser()
    add(parser)
    monkeypatch.setenv(KEY_FILE_ENV, str(key_file))
    config = config_from_args(parser.parse_args(["--db", db]))
    assert config.key_file == str(key_file)
    assert config_from_args(parser.parse_args(["--db", db, "--key-file", "x"])).key_file == "x"
    clock.advance(1)
    async with running_service(
        ServiceConfig(db=db, key_file=config.key_file, clock=clock, scrypt_n=2**10)
    ) as svc:
        assert await mac_status(http, svc, mac["tokenId"], mac["tokenSecret"]) == 200


async def test_memory_mode_needs_no_key_file(
    http: aiohttp.ClientSession,
    clock: ManualClock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    async with service(clock) as svc:
        tokens = await login(http, svc)
        mac = await create_mac(http, svc, tokens["accessToken"])
        assert await mac_status(http, svc, mac["tokenId"], mac["tokenSecret"]) == 200
        assert svc.state.mac_tokens[mac["tokenId"]].secret.startswith("v1:")
        assert svc.state.vault.path is None
    assert not any(os.scandir(tmp_path))


# -- a database written by an earlier version -------------------------------------------


def write_plaintext_database(db: Path, now: float) -> dict[str, Any]:
    """Write records exactly as the version before sealing did (plain JSON values)."""
    alice = make_user_record("alice", PASSWORDS["alice"], "tokensdk", 2**10, False)
    signing = SigningKey.generate()
    access, refresh, spent = "old-access-token", "old-refresh-token", "older-refresh-token"
    ha1 = ha1_digest("alice", "tokensdk", PASSWORDS["alice"])
    tables: dict[str, dict[str, dict[str, Any]]] = {
        "users": {
            "alice": {
                "salt": alice.salt,
                "hash": alice.hash,
                "n": alice.n,
                "ha1": alice.ha1,
                "frozen": False,
            }
        },
        "signing_keys": {
            signing.public_key.pid: {"seed": signing.seed.hex(), "created": now, "serial": 1}
        },
        "families": {
            "fam": {"username": "alice", "created": now, "expires": now + 86400, "revoked": False}
        },
        "access_tokens": {
            token_digest(access): {"family": "fam", "username": "alice", "expires": now + 300}
        },
        "refresh_tokens": {
            token_digest(refresh): {
                "family": "fam",
                "username": "alice",
                "expires": now + 86400,
                "used": False,
                "used_at": None,
                "idempotency": None,
                "successor_access": None,
                "successor_refresh": None,
            },
            token_digest(spent): {
                "family": "fam",
                "username": "alice",
                "expires": now + 86400,
                "used": True,
                "used_at": now,
                "idempotency": token_digest("k"),
                "successor_access": token_digest(access),
                "successor_refresh": token_digest(refresh),
            },
        },
        "mac_tokens": {
            MAC_ID: {
                "secret": CHECK_SECRET,
                "family": "fam",
                "username": "alice",
                "factors": ["possession"],
            }
        },
        "one_time_keys": {
            "alice": {"answer": one_time_key_answer("pending-key", ha1), "expires": now + 300}
        },
    }
    persistence = SqlitePersistence(str(db))
    try:
        for table, records in tables.items():
            for key, record in records.items():
                persistence.put(table, key, record)
    finally:
        persistence.close()
    return {
        "access": access,
        "seed": signing.seed,
        "kid": signing.public_key.pid,
        "ha1": ha1,
        "otk_answer": tables["one_time_keys"]["alice"]["answer"],
    }


async def test_a_plaintext_database_is_sealed_on_start(
    http: aiohttp.ClientSession, clock: ManualClock, tmp_path: Path
) -> None:
    db = tmp_path / "s.db"
    old = write_plaintext_database(db, clock.time())
    assert not (tmp_path / "s.db.key").exists()

    async with service(clock, db=str(db), users={}) as svc:
        # Every secret was sealed, and still works.
        assert await mac_status(http, svc, MAC_ID, CHECK_SECRET) == 200
        assert svc.state.active_signing_key().seed == old["seed"]
        assert [k["kid"] for k in svc.state.public_keys()] == [old["kid"]]
        status, _, _ = await call(http, svc, "GET", "/v1/me", token=old["access"])
        assert status == 200
        # The pending key kept its answer in the clear: it was dropped; a new one works.
        answer = {"username": "alice", "hash": old["otk_answer"]}
        status, _, _ = await call(http, svc, "POST", "/v1/login/with-one-time-key", answer)
        assert status == 401
        assert await one_time_key_login(http, svc) == 200
    assert (tmp_path / "s.db.key").is_file()
    for table, field in SEALED_FIELDS.items():
        for record in rows(db, table).values():
            assert record[field].startswith("v1:")
    for record in rows(db, "one_time_keys").values():
        assert record["answer"].startswith("sha256:")
    values = json.dumps([rows(db, t) for t in ("users", "mac_tokens", "signing_keys")])
    assert old["ha1"] not in values
    assert old["seed"].hex() not in values
    assert CHECK_SECRET not in values

    clock.advance(1)
    async with service(clock, db=str(db), users={}) as svc:  # and opens with its new key file
        assert await mac_status(http, svc, MAC_ID, CHECK_SECRET) == 200


# -- the vault itself ------------------------------------------------------------------


def test_sealed_values_are_bound_to_their_record_and_key() -> None:
    key = os.urandom(KEY_SIZE)
    sealed = seal(key, b"secret", record_aad("mac_tokens", "a"))
    assert sealed.startswith("v1:")
    assert seal(key, b"secret", record_aad("mac_tokens", "a")) != sealed  # random nonce
    assert unseal(key, sealed, record_aad("mac_tokens", "a")) == b"secret"
    for wrong_key, aad in [
        (key, record_aad("mac_tokens", "b")),
        (key, record_aad("users", "a")),
        (os.urandom(KEY_SIZE), record_aad("mac_tokens", "a")),
    ]:
        with pytest.raises(SealError):
            unseal(wrong_key, sealed, aad)
    flipped = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    for bad in (flipped, "v1:", "v1:!!", "plain", sealed[:20]):
        with pytest.raises(SealError):
            unseal(key, bad, record_aad("mac_tokens", "a"))


def test_derived_keys_are_separated() -> None:
    assert derive_key("l", "ab", "c") != derive_key("l", "a", "bc")
    assert derive_key("l", "a", "b") != derive_key("m", "a", "b")
    assert derive_key("l", "a", "b") == derive_key("l", "a", "b")
    assert len(derive_key("l", "a")) == KEY_SIZE


def test_no_key_in_a_repr(tmp_path: Path) -> None:
    vault = Vault.from_file(str(tmp_path / "k"))
    vault.attach(None)
    key = (tmp_path / "k").read_bytes()
    state = ServiceState(vault=vault)
    state.ensure_signing_key(0.0)
    texts = [repr(vault), repr(state.vault), *(repr(r) for r in state.signing_keys.values())]
    for text in texts:
        assert key.hex() not in text
        assert repr(key)[2:-1] not in text
    assert repr(vault) == f"Vault(path={str(tmp_path / 'k')!r})"


def test_a_persistent_database_needs_the_service_key(tmp_path: Path) -> None:
    db = SqlitePersistence(str(tmp_path / "s.db"))
    try:
        with pytest.raises(ValueError, match="needs the service key"):
            ServiceState(db=db)
    finally:
        db.close()

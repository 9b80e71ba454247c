"""The ``serve`` command's options, configuration and serving loop."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import aiohttp
import anyio
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tokensdk import ManualClock
from tokensdk.server._cli import add_serve_arguments, config_from_args, serve_forever

PUB = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="serve", exit_on_error=False)
    add_serve_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults() -> None:
    args = _parse()
    assert (args.host, args.port) == ("127.0.0.1", 0)
    config = config_from_args(args)
    assert config.users == {}
    assert (config.access_ttl, config.refresh_ttl, config.db) == (300, 86400, None)
    assert config.realm == "tokensdk"


def test_all_options(tmp_path: Path) -> None:
    users_file = tmp_path / "users.json"
    users_file.write_text(json.dumps({"carol": "c", "alice": "overridden"}))
    args = _parse(
        "--host=0.0.0.0",
        "--port=8080",
        "--realm=acme",
        "--user",
        "alice:se:cret",
        "--user",
        "bob:",
        "--users-file",
        str(users_file),
        "--frozen-user=bob",
        "--access-ttl=2",
        "--refresh-ttl=60",
        "--db",
        str(tmp_path / "db"),
        "--asset",
        f"urn:door:1:{PUB}",
        "--rotate-key",
        "--drop-key=k4.pid.abc",
        "--scrypt-n=1024",
    )
    config = config_from_args(args)
    assert (args.host, args.port) == ("0.0.0.0", 8080)
    assert config.users == {"alice": "se:cret", "bob": "", "carol": "c"}
    assert config.frozen_users == frozenset({"bob"})
    assert (config.access_ttl, config.refresh_ttl, config.realm) == (2, 60, "acme")
    assert config.db == str(tmp_path / "db")
    assert config.assets == {"urn:door:1": PUB}
    assert config.rotate_key
    assert config.drop_keys == ("k4.pid.abc",)
    assert config.scrypt_n == 1024
    assert "se:cret" not in repr(config)


@pytest.mark.parametrize(
    "argv",
    [("--user", "nocolon"), ("--user", ":pw"), ("--asset", "nokey"), ("--access-ttl", "0")],
)
def test_bad_options(argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises((SystemExit, argparse.ArgumentError)):
        _parse(*argv)
    assert "pw" not in capsys.readouterr().err


def test_bad_users_file(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    path.write_text("[1]")
    with pytest.raises(ValueError, match="JSON object"):
        config_from_args(_parse("--users-file", str(path)))
    with pytest.raises(ValueError, match="cannot read"):
        config_from_args(_parse("--users-file", str(tmp_path / "missing.json")))


@pytest.mark.anyio
async def test_serve_forever_prints_real_port(
    capsys: pytest.CaptureFixture[str], clock: ManualClock
) -> None:
    config = config_from_args(_parse("--user", "alice:pw", "--scrypt-n=1024"))
    config.clock = clock
    ready = anyio.Event()
    urls: list[str] = []

    def on_ready(url: str) -> None:
        urls.append(url)
        ready.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: serve_forever(config, "127.0.0.1", 0, on_ready=on_ready))
        await ready.wait()
        async with (
            aiohttp.ClientSession() as http,
            http.post(urls[0] + "/v1/login", json={"username": "alice", "password": "pw"}) as r,
        ):
            assert r.status == 200
        tg.cancel_scope.cancel()
    out = capsys.readouterr().out
    assert out == f"listening on {urls[0]}\n"
    assert not urls[0].endswith(":0")

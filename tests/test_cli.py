"""The ``tokensdk`` command line, through its real entry point (``python -m tokensdk``).

Every command runs as a subprocess with a timeout; the service they talk to is the
``serve`` command itself, also a subprocess, on a free loopback port.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import anyio
import pytest

from tokensdk import Authentication, FileStore, Session
from tokensdk._assets import Ed25519Signer

TIMEOUT = 60
PASSWORD = "wonderland"


def tokensdk(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m tokensdk ARGS`` to completion (bounded) and capture its output."""
    env = dict(os.environ, PYTHONWARNINGS="error")
    return subprocess.run(
        [sys.executable, "-m", "tokensdk", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
        check=False,
    )


def _read_line(proc: subprocess.Popen[str], deadline: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if selector.select(timeout=deadline - time.monotonic()):
                return proc.stdout.readline()
    raise TimeoutError("the service did not start")


@pytest.fixture
def signer() -> Ed25519Signer:
    return Ed25519Signer.generate()


@pytest.fixture
def served(tmp_path: Path, signer: Ed25519Signer) -> Iterator[str]:
    """``tokensdk serve`` on a free port; yields its URL, stops it with SIGINT."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tokensdk",
            "serve",
            "--user",
            f"alice:{PASSWORD}",
            "--scrypt-n",
            "1024",
            "--asset",
            f"door-1:{signer.public_key_hex}",
            "--db",
            str(tmp_path / "service.db"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = _read_line(proc, time.monotonic() + TIMEOUT)
        assert line.startswith("listening on http://127.0.0.1:"), line
        yield line.split()[-1]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            assert proc.stdout is not None
            assert proc.stderr is not None
            proc.stdout.close()
            proc.stderr.close()
    assert proc.returncode == 0


def _secrets(document: object) -> list[str]:
    """Every access token, refresh token and MAC secret in a state document."""
    found: list[str] = []
    if isinstance(document, dict):
        for key, value in document.items():
            if key in ("accessToken", "refreshToken", "tokenSecret") and isinstance(value, str):
                found.append(value)
            else:
                found.extend(_secrets(value))
    elif isinstance(document, list):
        for value in document:
            found.extend(_secrets(value))
    return found


# -- help -------------------------------------------------------------------------------


def test_help_everywhere() -> None:
    top = tokensdk("--help")
    assert top.returncode == 0
    for command in ("demo", "serve", "keys", "login", "logout", "tokens", "verify", "header"):
        assert command in top.stdout
    for args in (
        ["demo"],
        ["serve"],
        ["keys"],
        ["keys", "rotate"],
        ["login"],
        ["logout"],
        ["tokens"],
        ["verify"],
        ["header"],
    ):
        result = tokensdk(*args, "--help")
        assert (args, result.returncode) == (args, 0)
        assert "usage: tokensdk" in result.stdout


def test_no_command_is_a_usage_error() -> None:
    result = tokensdk()
    assert result.returncode == 2
    assert "usage:" in result.stderr


def test_import_is_lazy() -> None:
    code = (
        "import sys, tokensdk; "
        "print(sorted(m for m in sys.modules if m == 'rich' or m.startswith('tokensdk.server')"
        " or m == 'tokensdk.cli'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT, check=True
    )
    assert result.stdout.strip() == "[]"


# -- demo -------------------------------------------------------------------------------


def test_demo_runs_refreshes_and_resumes(tmp_path: Path) -> None:
    state = tmp_path / "demo" / "state.json"
    first = tokensdk("demo", "--duration", "3.5", "--access-ttl", "2", "--state", str(state))
    assert (first.returncode, first.stderr) == (0, "")
    lines = first.stdout.splitlines()
    assert any(" logged_in demo" in line for line in lines), first.stdout
    assert any(" refreshed demo" in line for line in lines), first.stdout
    assert any("access_token_added sensor-1" in line for line in lines), first.stdout
    assert any("mac token demo: header accepted" in line for line in lines), first.stdout
    assert state.is_file()

    second = tokensdk("demo", "--duration", "1", "--access-ttl", "2", "--state", str(state))
    assert (second.returncode, second.stderr) == (0, "")
    assert "resumed demo" in second.stdout
    assert "logged_in" not in second.stdout
    # Secrets never reach the output.
    assert "v4.public." not in first.stdout + second.stdout


def test_demo_exits_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokensdk", "demo", "--state", str(tmp_path / "s.json")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while "mac token demo" not in _read_line(proc, deadline):
            pass
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert (proc.returncode, err) == (0, "")


def test_demo_rejects_bad_duration() -> None:
    result = tokensdk("demo", "--duration", "-1")
    assert result.returncode == 2
    assert "must be a positive number" in result.stderr


# -- login, tokens, header, logout ------------------------------------------------------


def test_login_tokens_header_logout(served: str, tmp_path: Path) -> None:
    state = tmp_path / "cli" / "state.json"
    login = tokensdk(
        "login", "--url", served, "--user", "alice", "--password-stdin", "--state", str(state),
        stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert (login.returncode, login.stderr) == (0, "")
    assert "logged in as alice" in login.stdout

    async def add_mac_token() -> None:
        async with Session(served, store=FileStore(state)) as session:
            await session.token_store.request_access_token("door", Authentication.possession())
            await session.flush()

    anyio.run(add_mac_token)

    listing = tokensdk("tokens", "--state", str(state))
    assert listing.returncode == 0
    assert "user: alice" in listing.stdout
    assert "mac token door" in listing.stdout
    assert "<redacted>" in listing.stdout
    secrets = _secrets(json.loads(state.read_text()))
    assert len(secrets) == 3
    for secret in secrets:
        assert secret not in listing.stdout

    header = tokensdk("header", "door", "--state", str(state), "--url", served)
    assert header.returncode == 0, header.stderr
    name, _, value = header.stdout.strip().partition(": ")
    assert name == "X-PowerAuth-Token"

    async def present() -> int:
        async with (
            aiohttp.ClientSession() as http,
            http.get(served + "/v1/me/token", headers={name: value}) as response,
        ):
            return response.status

    assert anyio.run(present) == 200

    missing = tokensdk("header", "nope", "--state", str(state))
    assert missing.returncode == 1
    assert "no MAC token named 'nope'" in missing.stderr

    logout = tokensdk("logout", "--url", served, "--state", str(state))
    assert (logout.returncode, logout.stdout.strip()) == (0, "logged out alice")
    again = tokensdk("logout", "--url", served, "--state", str(state))
    assert again.returncode == 1
    assert "no active session" in again.stderr


def test_login_bad_credentials(served: str, tmp_path: Path) -> None:
    result = tokensdk(
        "login", "--url", served, "--user", "alice", "--password-stdin",
        "--state", str(tmp_path / "s.json"), stdin="wrong\n",
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "refused the credentials" in result.stderr
    assert "wrong" not in result.stderr


def test_login_service_down(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        result = tokensdk(
            "login", "--url", f"http://127.0.0.1:{port}", "--user", "alice",
            "--password-stdin", "--state", str(tmp_path / "s.json"), stdin="x\n",
        )  # fmt: skip
    assert result.returncode == 1
    assert "cannot reach the token service" in result.stderr
    assert result.stderr.count("\n") == 1


def test_login_wrong_url(served: str, tmp_path: Path) -> None:
    result = tokensdk(
        "login", "--url", served + "/not-here", "--user", "alice", "--password-stdin",
        "--state", str(tmp_path / "s.json"), stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert result.returncode == 1
    assert "is the URL right?" in result.stderr
    assert result.stderr.count("\n") == 1


def test_tokens_without_state(tmp_path: Path) -> None:
    result = tokensdk("tokens", "--state", str(tmp_path / "none.json"))
    assert result.returncode == 1
    assert "no state file" in result.stderr


# -- verify -----------------------------------------------------------------------------


def test_verify(served: str, signer: Ed25519Signer) -> None:
    async def obtain() -> tuple[str, str]:
        async with Session(served) as session:
            await session.login("alice", PASSWORD)
            item = await session.access_tokens.request("door-1", signer)
            async with (
                aiohttp.ClientSession() as http,
                http.get(served + "/v1/keys") as response,
            ):
                keys = await response.json()
            return item.token, keys["keys"][0]["paserk"]

    token, paserk = anyio.run(obtain)
    by_url = tokensdk("verify", token, "--url", served)
    assert (by_url.returncode, by_url.stdout) == (0, "door-1\n")
    by_key = tokensdk("verify", token, "--key", paserk)
    assert (by_key.returncode, by_key.stdout) == (0, "door-1\n")

    tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    bad = tokensdk("verify", tampered, "--key", paserk)
    assert bad.returncode == 1
    assert "invalid token" in bad.stderr
    assert token not in bad.stderr

    bad_key = tokensdk("verify", token, "--key", "k4.public.nope")
    assert bad_key.returncode == 1
    assert "bad key" in bad_key.stderr

    needs_source = tokensdk("verify", token)
    assert needs_source.returncode == 2


# -- keys -------------------------------------------------------------------------------


def test_keys_rotate(tmp_path: Path) -> None:
    db = tmp_path / "service.db"
    missing = tokensdk("keys", "rotate", "--db", str(db))
    assert missing.returncode == 1
    assert "no service database" in missing.stderr

    async def create_db() -> None:
        from tokensdk.server import ServiceConfig, running_service

        async with running_service(ServiceConfig(db=str(db))):
            pass

    anyio.run(create_db)
    before = tokensdk("keys", "list", "--db", str(db))
    assert before.returncode == 0
    assert len(before.stdout.splitlines()) == 1
    rotated = tokensdk("keys", "rotate", "--db", str(db))
    assert rotated.returncode == 0, rotated.stderr
    kid = rotated.stdout.split()[-1]
    assert kid.startswith("k4.pid.")
    after = tokensdk("keys", "list", "--db", str(db)).stdout.splitlines()
    assert len(after) == 2
    assert after[-1].startswith(f"{kid}  signs")

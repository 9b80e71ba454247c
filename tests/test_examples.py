"""Every example runs to completion against the embedded service (a bounded subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from _oidc import OIDCProvider

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TIMEOUT = 60


def example(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``python examples/NAME ARGS`` in ``cwd`` (bounded) and capture its output."""
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=cwd,
        env=dict(os.environ, PYTHONWARNINGS="error"),
        check=False,
    )


def test_bot_survives_a_restart_without_password(tmp_path: Path) -> None:
    state = str(tmp_path / "bot" / "state.json")
    first = example(
        "bot.py", "--duration", "2.5", "--interval", "0.2", "--state", state, cwd=tmp_path
    )
    assert (first.returncode, first.stderr) == (0, "")
    assert "logged in as alice with the password" in first.stdout
    assert "refreshed alice" in first.stdout
    assert "/v1/me says alice" in first.stdout

    second = example("bot.py", "--duration", "0.5", "--state", state, cwd=tmp_path)
    assert (second.returncode, second.stderr) == (0, "")
    assert "resumed as alice, no password needed" in second.stdout
    assert "with the password" not in second.stdout
    assert "/v1/me says alice" in second.stdout


def test_web_backend(tmp_path: Path) -> None:
    result = example("web_backend.py", "--duration", "1", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert "200 {'door': 'door-1', 'opened': True, 'loggedBy': 'backend'}" in result.stdout
    assert "forged token: 401" in result.stdout
    assert "key set fetched 1 time(s)" in result.stdout


def test_persist_and_ui(tmp_path: Path) -> None:
    saved = tmp_path / "ui" / "tokens.json"
    result = example("persist_and_ui.py", "--file", str(saved), cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert [line.split()[:2] for line in lines if line[:1] in "+-~"] == [
        ["+", "door-1"],
        ["+", "door-2"],
        ["+", "gate"],
        ["~", "door-1"],
        ["-", "gate"],
        ["+", "door-1"],
        ["+", "door-2"],
    ]
    assert "restored: ['door-1', 'door-2']" in result.stdout
    assert oct(saved.stat().st_mode & 0o777) == oct(0o600)


def test_one_time_key_backend(tmp_path: Path) -> None:
    result = example("one_time_key_backend.py", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert "logged in as alice without the password" in result.stdout
    assert "a wrong answer is refused" in result.stdout


def test_oauth_bot_renews_client_credentials_and_resumes(
    tmp_path: Path, oidc_provider: Callable[..., OIDCProvider]
) -> None:
    provider = oidc_provider({"clientCredentialsTTL": 4})
    state = str(tmp_path / "oauth" / "state.json")
    args = ["--issuer", provider.issuer, "--state", state, "--interval", "0.5"]
    env = dict(os.environ, PYTHONWARNINGS="error", OAUTH_CLIENT_SECRET="app-secret")

    def bot(duration: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(EXAMPLES / "oauth_bot.py"), *args, "--duration", duration],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            cwd=tmp_path,
            env=env,
            check=False,
        )

    first = bot("4.5")
    assert (first.returncode, first.stderr) == (0, "")
    assert "logged in as app with the client credentials grant" in first.stdout
    assert "refreshed app" in first.stdout  # the grant ran again before the token expired
    assert "call 1: 200 client app" in first.stdout
    second = bot("0.5")
    assert (second.returncode, second.stderr) == (0, "")
    assert "resumed as app" in second.stdout
    assert "app-secret" not in first.stdout + second.stdout


def test_fleet_workers_share_one_credential(tmp_path: Path) -> None:
    # Two worker processes on one RedisStore (a real redis-server on a unix socket).
    result = example("fleet_workers.py", "--duration", "5", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert "logged in as backend; the workers share this session" in result.stdout
    requests = next(line for line in result.stdout.splitlines() if " requests through " in line)
    assert requests.endswith("workers: {200: " + requests.split()[0] + "}"), requests
    seen = next(line for line in result.stdout.splitlines() if "the service saw" in line)
    assert seen.endswith(" refreshes, 0 refused tokens, 0 reused refresh tokens"), seen
    refreshes = int(seen.split()[3])
    assert 2 <= refreshes <= 8, seen  # about one per 2 s token for the whole fleet

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
from contextlib import contextmanager
from pathlib import Path

import _proxy
import aiohttp
import anyio
import pytest
from _service import service

from tokensdk import (
    Authentication,
    FileStore,
    MacToken,
    Session,
    SessionSnapshot,
    SessionStatus,
    SystemClock,
)
from tokensdk._assets import Ed25519Signer
from tokensdk._models import snapshot_to_document
from tokensdk.stores import read_state_file

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


@contextmanager
def serving(*options: str) -> Iterator[str]:
    """``tokensdk serve OPTIONS`` on a free port; yields its URL, stops it with SIGINT."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokensdk", "serve", *options],
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


@pytest.fixture
def served(tmp_path: Path, signer: Ed25519Signer) -> Iterator[str]:
    """The service with user alice and asset door-1 (signer's key), state in tmp_path."""
    with serving(
        "--user",
        f"alice:{PASSWORD}",
        "--scrypt-n",
        "1024",
        "--asset",
        f"door-1:{signer.public_key_hex}",
        "--db",
        str(tmp_path / "service.db"),
    ) as url:
        yield url


@pytest.fixture
def dead_url() -> Iterator[str]:
    """A loopback URL where connections are refused (bound, not listening)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def one_error_line(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Assert a failure told in one line on stderr, no traceback, exit status 1."""
    assert result.returncode == 1, result
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("tokensdk "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


def login(url: str, state: Path) -> subprocess.CompletedProcess[str]:
    """``tokensdk login`` as alice."""
    return tokensdk(
        "login", "--url", url, "--user", "alice", "--password-stdin", "--state", str(state),
        stdin=PASSWORD + "\n",
    )  # fmt: skip


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
        ["keys", "list"],
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
    assert result.stderr == (
        "tokensdk: error: the following arguments are required: COMMAND (see 'tokensdk --help')\n"
    )


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


def test_demo_over_oauth_refreshes_and_resumes(tmp_path: Path) -> None:
    # The same embedded service, the session speaking OAuth 2.0 to its token endpoint.
    state = tmp_path / "demo" / "state.json"
    argv = ("demo", "--oauth", "--access-ttl", "2", "--state", str(state))
    first = tokensdk(*argv, "--duration", "3.5")
    assert (first.returncode, first.stderr) == (0, "")
    assert "the session speaks OAuth 2.0 at /oauth2/token" in first.stdout
    assert " logged_in demo" in first.stdout
    assert " refreshed demo" in first.stdout
    assert (tmp_path / "demo" / "oauth-state.json").is_file()
    assert not state.exists()  # native and OAuth credentials are kept apart
    second = tokensdk(*argv, "--duration", "1")
    assert (second.returncode, second.stderr) == (0, "")
    assert "resumed demo" in second.stdout
    assert "logged_in" not in second.stdout


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


# Runs the CLI as `python -m tokensdk demo` would, but sends itself SIGINT at a moment
# the test cannot hit from outside; SIGINT starts ignored, as in a script's background
# job (`tokensdk demo &`), where Python does not turn it into KeyboardInterrupt.
_SIGINT_AT = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
import anyio, tokensdk.server
from tokensdk.cli import main

def interrupting(function):
    def wrapper(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return function(*args, **kwargs)
    return wrapper

if sys.argv[1] == "before the event loop":
    anyio.run = interrupting(anyio.run)
else:
    tokensdk.server.running_service = interrupting(tokensdk.server.running_service)
raise SystemExit(main(["demo", "--state", sys.argv[2]]))
"""


@pytest.mark.parametrize("moment", ["before the event loop", "while the service starts"])
def test_demo_ends_on_an_early_ctrl_c(tmp_path: Path, moment: str) -> None:
    started = time.monotonic()
    try:
        result = subprocess.run(
            [sys.executable, "-c", _SIGINT_AT, moment, str(tmp_path / "s.json")],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,  # a guard only: the demo runs until Ctrl-C
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"Ctrl-C {moment} was ignored: the demo kept running")
    assert (result.returncode, result.stderr) == (0, "")
    assert "logged_in" not in result.stdout
    assert time.monotonic() - started < TIMEOUT


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_demo_ends_on_ctrl_c_after_its_first_line(tmp_path: Path) -> None:
    # Started as a background job (SIGINT ignored), interrupted as soon as it speaks.
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokensdk", "demo", "--state", str(tmp_path / "s.json")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_ignore_sigint,  # as a shell starts a background job
    )
    try:
        assert "service listening on" in _read_line(proc, time.monotonic() + TIMEOUT)
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


# -- serve ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "status", "message"),
    [
        (["--port", "99999"], 2, "argument --port: must be a port from 0 to 65535"),
        (["--scrypt-n", "1000"], 2, "argument --scrypt-n: must be a power of two"),
        (["--max-body", "0"], 2, "argument --max-body: must be positive"),
        (["--db", "{tmp}/missing/x.db"], 1, "service database: unable to open database file"),
        (["--db", "{tmp}"], 1, "service database: unable to open database file"),
        (["--asset", "door:zz"], 1, "cannot start the service: asset 'door'"),
        (["--host", "host.invalid"], 1, "cannot listen on host.invalid:0: "),
    ],
)
def test_serve_start_failures_are_one_line(
    tmp_path: Path, options: list[str], status: int, message: str
) -> None:
    result = tokensdk("serve", *(option.format(tmp=tmp_path) for option in options))
    assert result.returncode == status
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"tokensdk serve: error: {message}"), result.stderr
    assert result.stdout == ""


def test_serve_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = tokensdk("serve", "--port", str(port))
    one_error_line(result)
    assert result.stderr == (
        f"tokensdk serve: error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    )


def test_serve_options_reach_the_service(signer: Ed25519Signer) -> None:
    options = [
        "--user", f"alice:{PASSWORD}", "--user", "bob:builder", "--scrypt-n", "1024",
        "--asset", f"door-1:{signer.public_key_hex}", "--asset-token-lifetime", "40",
        "--max-body", "300", "--login-rate-limit", "1", "--login-rate-window", "600",
    ]  # fmt: skip
    with serving(*options) as url:

        async def check() -> None:
            async with Session(url) as session:
                await session.login("alice", PASSWORD)
                item = await session.access_tokens.request("door-1", signer)
                assert item.expires_at is not None
                assert 30 < item.expires_at - time.time() <= 40
            async with aiohttp.ClientSession() as http:

                async def bob(password: str, pad: int = 0) -> int:
                    body = {"username": "bob", "password": password, "pad": "x" * pad}
                    async with http.post(url + "/v1/login", json=body) as response:
                        return response.status

                assert await bob("builder", pad=400) == 413
                assert await bob("wrong") == 401
                assert await bob("builder") == 429  # one failure allowed per 600 s

        anyio.run(check)


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
    one_error_line(result, "refused the credentials")
    assert "wrong" not in result.stderr


def test_login_service_down(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        result = tokensdk(
            "login", "--url", f"http://127.0.0.1:{port}", "--user", "alice",
            "--password-stdin", "--state", str(tmp_path / "s.json"), stdin="x\n",
        )  # fmt: skip
    one_error_line(result, "cannot reach the token service")


def test_login_wrong_url(served: str, tmp_path: Path) -> None:
    result = tokensdk(
        "login", "--url", served + "/not-here", "--user", "alice", "--password-stdin",
        "--state", str(tmp_path / "s.json"), stdin=PASSWORD + "\n",
    )  # fmt: skip
    one_error_line(result, "is the URL right?")


def test_logout_keeps_the_session_when_the_service_cannot_be_reached(
    served: str, dead_url: str, tmp_path: Path
) -> None:
    state = tmp_path / "s.json"
    assert login(served, state).returncode == 0
    saved = read_state_file(state)

    down = tokensdk("logout", "--url", dead_url, "--state", str(state))
    one_error_line(down, "cannot reach the token service", "nothing was revoked", str(state))
    wrong = tokensdk("logout", "--url", served + "/not-here", "--state", str(state))
    one_error_line(wrong, "is the URL right?", "nothing was revoked")
    assert read_state_file(state) == saved

    # What was kept still revokes the session once the service answers.
    logout = tokensdk("logout", "--url", served, "--state", str(state))
    assert (logout.returncode, logout.stdout, logout.stderr) == (0, "logged out alice\n", "")


async def _tokensdk(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """:func:`tokensdk` for async tests (the service they talk to runs in the test's loop)."""
    env = dict(os.environ, PYTHONWARNINGS="error")
    with anyio.fail_after(TIMEOUT):
        result = await anyio.run_process(
            [sys.executable, "-m", "tokensdk", *args],
            input=None if stdin is None else stdin.encode(),
            check=False,
            env=env,
        )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


@pytest.mark.anyio
async def test_logout_the_service_does_not_revoke(tmp_path: Path) -> None:
    state = tmp_path / "s.json"
    async with service(SystemClock()) as svc, _proxy.FaultProxy(svc.url).running() as proxy:
        login = await _tokensdk(
            "login", "--url", proxy.url, "--user", "alice", "--password-stdin",
            "--state", str(state), stdin=PASSWORD + "\n",
        )  # fmt: skip
        assert login.returncode == 0, login.stderr
        # The service answers its status, then fails the logout itself.
        proxy.only_paths = {"/v1/logout"}
        proxy.sticky = _proxy.unavailable
        result = await _tokensdk("logout", "--url", proxy.url, "--state", str(state))
    one_error_line(result, "logged out alice locally only", "tokens stay valid")
    assert proxy.faulted["/v1/logout"] == 1
    assert result.stdout == ""


@pytest.mark.anyio
async def test_login_fails_when_the_state_cannot_be_saved(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    state = blocker / "state.json"  # its directory is a file: nothing can be written there
    async with service(SystemClock()) as svc:
        result = await _tokensdk(
            "login", "--url", svc.url, "--user", "alice", "--password-stdin",
            "--state", str(state), stdin=PASSWORD + "\n",
        )  # fmt: skip
        revocations = svc.stats.requests_by_path["/v1/logout"]
    one_error_line(result, f"cannot write state file {state}", "the new session was revoked")
    assert result.stdout == ""
    assert revocations == 1


@pytest.mark.parametrize(
    "content",
    [
        b"garbage\n",
        # A sound envelope around a state this version cannot read.
        json.dumps({"format": "tokensdk.state", "version": 1, "state": {"version": 99}}).encode(),
    ],
    ids=["not-json", "bad-state"],
)
@pytest.mark.parametrize("command", [["tokens"], ["header", "door"], ["logout", "--url", "x"]])
def test_corrupt_state_is_reported_and_left_alone(
    tmp_path: Path, content: bytes, command: list[str]
) -> None:
    state = tmp_path / "s.json"
    state.write_bytes(content)
    state.chmod(0o600)
    result = tokensdk(*command, "--state", str(state))
    one_error_line(result, f"state file {state} is corrupt", "left as it is")
    assert state.read_bytes() == content
    assert [path.name for path in tmp_path.iterdir()] == ["s.json"]


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


def test_verify_and_header_network_errors(served: str, dead_url: str, tmp_path: Path) -> None:
    state = tmp_path / "s.json"
    door = MacToken(name="door", token_id="id-1", secret=bytes(16), factors=("possession",))
    snapshot = SessionSnapshot(status=SessionStatus.LOGGED_OUT, mac_tokens={"door": door})
    anyio.run(FileStore(state).save, snapshot_to_document(snapshot))
    for command in (
        ["verify", "v4.public.eyJ9", "--url"],
        ["header", "door", "--state", str(state), "--url"],
    ):
        down = tokensdk(*command, dead_url)
        one_error_line(down, f"cannot reach the token service at {dead_url}: is it running?")
        wrong = tokensdk(*command, served + "/not-here")
        one_error_line(wrong, f"nothing at {served}/not-here/v1: is the URL right?")
        assert down.stdout == wrong.stdout == ""


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


# -- state files and structure ------------------------------------------------------------


def test_state_path_with_tilde_is_in_the_home_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    door = MacToken(name="door", token_id="id-1", secret=bytes(16), factors=("possession",))
    snapshot = SessionSnapshot(status=SessionStatus.LOGGED_OUT, mac_tokens={"door": door})
    anyio.run(FileStore("~/s.json").save, snapshot_to_document(snapshot))
    assert (tmp_path / "s.json").is_file()
    result = tokensdk("tokens", "--state", "~/s.json")  # no shell: the CLI expands it
    assert (result.returncode, result.stderr) == (0, "")
    assert (
        result.stdout
        == "status: logged_out\nmac token door  id id-1  secret <redacted>  possession\n"
    )


def test_the_cli_reads_no_private_name_of_another_module() -> None:
    # It once read the file store's and the codec's private helpers to look at a
    # state file; tokensdk.stores.read_state_file is the public way.
    import ast

    import tokensdk.cli

    root = Path(tokensdk.cli.__file__)
    files = sorted(root.parent.glob("*.py")) if root.name == "__init__.py" else [root]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and not (node.module or "").startswith(
                "tokensdk.cli"
            ):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.Attribute) and not (
                isinstance(node.value, ast.Name) and node.value.id == "self"
            ):
                names = [node.attr]
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            assert not private, (path.name, getattr(node, "lineno", None), private)


def test_keys_need_the_service_key_file(tmp_path: Path) -> None:
    # The signing seeds are sealed under the key file next to the database.
    db = tmp_path / "service.db"

    async def create_db() -> None:
        from tokensdk.server import ServiceConfig, running_service

        async with running_service(ServiceConfig(db=str(db))):
            pass

    anyio.run(create_db)
    moved = tmp_path / "elsewhere.key"
    (tmp_path / "service.db.key").rename(moved)
    missing = tokensdk("keys", "list", "--db", str(db))
    one_error_line(missing, f"service key file {db}.key is missing", "--key-file")
    found = tokensdk("keys", "list", "--db", str(db), "--key-file", str(moved))
    assert found.returncode == 0, found.stderr
    assert len(found.stdout.splitlines()) == 1

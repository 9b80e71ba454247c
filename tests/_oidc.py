"""Test helpers: a real OAuth 2.0 / OpenID Connect provider (panva's oidc-provider).

``tests/oidc/provider.mjs`` runs under Node.js (20 or later); its npm dependencies are
pinned by ``tests/oidc/package-lock.json`` and installed with ``npm ci`` on first use, so a
fresh clone needs nothing beyond Node. Use the ``oidc_provider`` fixture (tests/conftest.py)::

    @pytest.fixture(scope="module")
    def provider(oidc_provider):
        return oidc_provider({"rotateRefreshToken": False})

    async def test_x(provider):
        provider.issuer, provider.token_endpoint, await provider.stats()

The configuration keys are documented in tests/oidc/README.md. Besides the provider this
module holds scripted "browsers" for the interactive flows (:func:`browser_authorize`,
:func:`browser_approve_device`) and a DPoP proof builder (:func:`dpop_proof`).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = [
    "OIDC_DIR",
    "OIDCProvider",
    "ProviderSetupError",
    "browser_approve_device",
    "browser_authorize",
    "dpop_proof",
    "ensure_node_modules",
    "jwk_thumbprint",
    "provider_factory",
    "start_provider",
]

OIDC_DIR = Path(__file__).resolve().parent / "oidc"
SCRIPT = OIDC_DIR / "provider.mjs"
LOCKFILE = OIDC_DIR / "package-lock.json"
#: npm writes this inside node_modules on every install: its mtime is the install's time.
INSTALLED_MARKER = OIDC_DIR / "node_modules" / ".package-lock.json"
MIN_NODE_MAJOR = 20
START_TIMEOUT = 60.0
NPM_TIMEOUT = 600.0


class ProviderSetupError(RuntimeError):
    """The provider could not be installed or started (raised outside pytest)."""


def _failure(message: str) -> BaseException:
    """Under pytest a failure (never a skip: CI must not pass silently without the
    provider); elsewhere (``python -m benchmarks`` loads this file by path and must not
    depend on pytest) a :class:`ProviderSetupError`.
    """
    pytest = sys.modules.get("pytest")
    if pytest is None:
        return ProviderSetupError(message)
    failure: BaseException = pytest.fail.Exception(message, pytrace=False)
    return failure


def _node_setup_failure(message: str) -> BaseException:
    return _failure(
        f"OAuth provider tests: {message}\n"
        f"They run panva's oidc-provider from {OIDC_DIR} and need Node.js "
        f"{MIN_NODE_MAJOR}+ with npm on PATH (https://nodejs.org, or your OS's nodejs "
        "and npm packages)."
    )


@functools.cache
def _node() -> str:
    """The node executable, checked once per session."""
    node = shutil.which("node")
    if node is None:
        raise _node_setup_failure("`node` was not found on PATH.")
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    try:
        major = int(version.lstrip("v").split(".")[0])
    except ValueError:
        raise _node_setup_failure(f"`node --version` printed {version!r}.") from None
    if major < MIN_NODE_MAJOR:
        raise _node_setup_failure(f"found Node.js {version}, too old.")
    return node


def _installed() -> bool:
    try:
        return INSTALLED_MARKER.stat().st_mtime >= LOCKFILE.stat().st_mtime
    except FileNotFoundError:
        return False


def ensure_node_modules() -> None:
    """Run ``npm ci`` in tests/oidc when node_modules is missing or older than the lockfile.

    Serialised with a file lock, so parallel pytest runs in one checkout install once.

    Raises:
        pytest.fail.Exception: Node or npm is missing, or ``npm ci`` failed
            (:class:`ProviderSetupError` outside pytest).
    """
    _node()
    if _installed():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise _node_setup_failure("`npm` was not found on PATH.")
    with open(OIDC_DIR / ".npm-ci.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed():
            return
        try:
            result = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund"],
                cwd=OIDC_DIR,
                capture_output=True,
                text=True,
                timeout=NPM_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise _node_setup_failure(f"`npm ci` took over {NPM_TIMEOUT:.0f} s.") from None
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip()[-3000:]
            raise _node_setup_failure(f"`npm ci` failed ({result.returncode}):\n{output}")


@dataclass
class OIDCProvider:
    """One running provider process.

    Attributes:
        issuer: The issuer URL, ``http://127.0.0.1:PORT`` (also the base of every endpoint).
        config: The configuration it was started with (defaults filled in by the script).
        log_path: Its stderr (warnings, one JSON line per error with the library's detail).
    """

    issuer: str
    config: Mapping[str, Any]
    log_path: Path
    _process: subprocess.Popen[str] = field(repr=False)

    # Endpoint paths are oidc-provider's defaults; discovery says the same.
    @property
    def discovery_url(self) -> str:
        return self.issuer + "/.well-known/openid-configuration"

    @property
    def token_endpoint(self) -> str:
        return self.issuer + "/token"

    @property
    def revocation_endpoint(self) -> str:
        return self.issuer + "/token/revocation"

    @property
    def introspection_endpoint(self) -> str:
        return self.issuer + "/token/introspection"

    @property
    def device_authorization_endpoint(self) -> str:
        return self.issuer + "/device/auth"

    @property
    def authorization_endpoint(self) -> str:
        return self.issuer + "/auth"

    @property
    def resource_url(self) -> str:
        """A protected resource accepting this provider's Bearer and DPoP access tokens."""
        return self.issuer + "/_harness/resource"

    async def _harness(self, method: str, path: str) -> Any:
        async with (
            aiohttp.ClientSession() as http,
            http.request(method, self.issuer + path) as response,
        ):
            response.raise_for_status()
            return await response.json() if response.status != 204 else None

    async def stats(self) -> dict[str, Any]:
        """Request counts since start or the last reset.

        ``{"requests": {route: {status: n}}, "grants": {grant_type: {status: n}},
        "grants_revoked": n, "errors": [{event, route, grant_type, error, error_detail}]}``
        (the last 100 errors, with the library's internal detail such as
        ``"refresh token already used"``, which the HTTP body never shows).
        """
        return dict(await self._harness("GET", "/_harness/stats"))

    async def reset_stats(self) -> None:
        await self._harness("POST", "/_harness/stats/reset")

    async def advance_clock(self, seconds: float) -> int:
        """Move the provider's clock forward (it expires tokens by it); return its new time."""
        return int((await self._harness("POST", f"/_harness/clock?advance={seconds}"))["now"])

    async def rotate_resource_nonce(self) -> None:
        """Make the protected resource's current DPoP nonce stale."""
        await self._harness("POST", "/_harness/resource/rotate-nonce")

    def log(self) -> str:
        """The provider's stderr so far."""
        return self.log_path.read_text(errors="replace")

    @property
    def running(self) -> bool:
        return self._process.poll() is None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; deletes the log. Idempotent."""
        process = self._process
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()
        self.log_path.unlink(missing_ok=True)


def start_provider(config: Mapping[str, Any] | None = None) -> OIDCProvider:
    """Start tests/oidc/provider.mjs on a free loopback port and wait for its READY line.

    The script binds port 0 itself, so there is no window where another process can take
    the port. It exits when its stdin closes, so a killed pytest leaves no provider behind.

    Args:
        config: Options for the script (see tests/oidc/README.md); None for the defaults.

    Returns:
        The running provider; call :meth:`OIDCProvider.stop` when done.

    Raises:
        pytest.fail.Exception: Node is missing, ``npm ci`` failed, or the script did not
            start (its stderr is included); :class:`ProviderSetupError` outside pytest.
    """
    ensure_node_modules()
    config = dict(config or {})
    fd, log_name = tempfile.mkstemp(prefix="tokensdk-oidc-", suffix=".log")
    log_path = Path(log_name)
    with os.fdopen(fd, "w") as log:
        process = subprocess.Popen(
            [_node(), str(SCRIPT), "--port", "0", "--watch-stdin", "--config", json.dumps(config)],
            cwd=OIDC_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    assert process.stdout is not None
    # readline() blocks until the READY line or EOF (the script died); the timer only
    # guards against a script that hangs without printing.
    watchdog = threading.Timer(START_TIMEOUT, process.kill)
    watchdog.start()
    try:
        line = process.stdout.readline()
    finally:
        watchdog.cancel()
    if not line.startswith("READY http://127.0.0.1:"):
        process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()
        stderr = log_path.read_text(errors="replace")[-4000:]
        log_path.unlink(missing_ok=True)
        raise _failure(
            f"tests/oidc/provider.mjs did not start (exit code {process.returncode}, "
            f"first line {line!r}); its stderr:\n{stderr}"
        )
    return OIDCProvider(issuer=line.split()[1], config=config, log_path=log_path, _process=process)


@contextlib.contextmanager
def provider_factory() -> Iterator[Callable[..., OIDCProvider]]:
    """A factory ``start(config=None, *, shared=True)``; its providers stop on exit.

    ``shared=True`` returns the one process already running with an equal configuration
    (tests that move the provider's clock or read its stats should pass ``shared=False``).
    """
    by_config: dict[str, OIDCProvider] = {}
    started: list[OIDCProvider] = []

    def factory(config: Mapping[str, Any] | None = None, *, shared: bool = True) -> OIDCProvider:
        key = json.dumps(config or {}, sort_keys=True)
        if shared and key in by_config and by_config[key].running:
            return by_config[key]
        provider = start_provider(config)
        started.append(provider)
        if shared:
            by_config[key] = provider
        return provider

    try:
        yield factory
    finally:
        for provider in started:
            provider.stop()


# --- scripted browsers for the interactive flows ---------------------------------------


class _Forms(HTMLParser):
    """Collects each <form>'s action, method and named <input> values."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "form":
            self.forms.append(
                {
                    "action": values.get("action", ""),
                    "method": values.get("method", "get").lower(),
                    "fields": {},
                }
            )
        elif tag == "input" and self.forms and "name" in values:
            self.forms[-1]["fields"][values["name"]] = values.get("value", "")


async def _browse(
    url: str, *, stop_at: str | None, fill: Mapping[str, str], max_steps: int = 20
) -> tuple[str, int, str]:
    """Follow redirects and submit every form (filling ``fill``'s fields) like a browser.

    Stops at a redirect whose target starts with ``stop_at`` (not fetched), or at a page
    with no form. Returns ``(url, status, body)`` of where it stopped.
    """
    # unsafe=True: the default jar refuses cookies from IP-address hosts like 127.0.0.1.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        method, data = "GET", None
        for _ in range(max_steps):
            async with browser.request(method, url, data=data, allow_redirects=False) as response:
                body = await response.text()
                status = response.status
                location = response.headers.get("Location")
            if location is not None and 300 <= status < 400:
                target = urljoin(url, location)
                if stop_at is not None and target.startswith(stop_at):
                    return target, status, body
                url, method, data = target, "GET", None
                continue
            parser = _Forms()
            parser.feed(body)
            forms = [form for form in parser.forms if form["method"] == "post"]
            if status != 200 or not forms:
                return url, status, body
            form = forms[0]
            fields = dict(form["fields"])
            fields.update({name: value for name, value in fill.items() if name in fields})
            url, method, data = urljoin(url, form["action"]), "POST", fields
        raise AssertionError(f"browser did not finish within {max_steps} steps; at {url}")


async def browser_authorize(
    authorization_url: str, redirect_uri: str, *, login: str = "alice"
) -> str:
    """Play the user for an authorization request through devInteractions.

    Logs in as ``login`` (devInteractions accept any name and password), grants consent,
    and stops at the redirect to the client's ``redirect_uri`` without fetching it.

    Args:
        authorization_url: The full authorization request URL (``.../auth?client_id=...``).
        redirect_uri: The client's redirect URI (compared as a prefix).
        login: The account id to log in as.

    Returns:
        The redirect URL with ``code``, ``state`` and ``iss`` (or ``error``) in its query.
    """
    target, status, body = await _browse(
        authorization_url,
        stop_at=redirect_uri,
        fill={"login": login, "password": "any"},
    )
    if not target.startswith(redirect_uri):
        raise AssertionError(f"no redirect to the client; stopped at {target} ({status}): {body}")
    return target


async def browser_approve_device(
    verification_uri: str, user_code: str | None = None, *, login: str = "alice"
) -> str:
    """Play the user for a device authorization: enter/confirm the code, log in, consent.

    Args:
        verification_uri: ``verification_uri_complete``, or ``verification_uri`` with
            ``user_code``.
        user_code: The code to type in, when ``verification_uri`` has none.
        login: The account id to log in as.

    Returns:
        The final page's HTML (the library's "Sign-in Success" page).
    """
    fill = {"login": login, "password": "any"}
    if user_code is not None:
        fill["user_code"] = user_code
    _, status, body = await _browse(verification_uri, stop_at=None, fill=fill)
    if status != 200 or "Sign-in Success" not in body:
        raise AssertionError(f"device approval did not succeed ({status}): {body[-2000:]}")
    return body


# --- DPoP ------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def dpop_proof(
    key: Ed25519PrivateKey,
    method: str,
    url: str,
    *,
    nonce: str | None = None,
    access_token: str | None = None,
    iat: int | None = None,
) -> str:
    """An RFC 9449 DPoP proof JWT signed with an Ed25519 key (alg EdDSA, embedded JWK).

    Args:
        key: The client's key.
        method: ``htm``, e.g. ``POST``.
        url: ``htu``, the request URL without query and fragment.
        nonce: The server's last ``DPoP-Nonce``, if any.
        access_token: For resource requests: adds ``ath`` (its SHA-256).
        iat: Issued-at (seconds); now by default.
    """
    x = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    header = {
        "typ": "dpop+jwt",
        "alg": "EdDSA",
        "jwk": {"kty": "OKP", "crv": "Ed25519", "x": _b64(x)},
    }
    claims: dict[str, Any] = {
        "htm": method,
        "htu": url,
        "iat": int(time.time()) if iat is None else iat,
        "jti": str(uuid.uuid4()),
    }
    if nonce is not None:
        claims["nonce"] = nonce
    if access_token is not None:
        claims["ath"] = _b64(hashlib.sha256(access_token.encode()).digest())
    signing_input = (
        _b64(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + _b64(json.dumps(claims, separators=(",", ":")).encode())
    )
    return signing_input + "." + _b64(key.sign(signing_input.encode()))


def jwk_thumbprint(key: Ed25519PrivateKey) -> str:
    """RFC 7638 thumbprint of the key's public JWK (the ``jkt`` a bound token carries)."""
    x = _b64(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"))
    return _b64(hashlib.sha256(canonical.encode()).digest())

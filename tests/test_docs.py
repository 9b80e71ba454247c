"""The documentation: the API reference covers the public API, the protocol page
covers the contract, and the site builds with warnings as errors."""

from __future__ import annotations

import base64
import importlib
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import tokensdk
from tokensdk.mac import compute_digest
from tokensdk.server import ServiceConfig, create_app

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
REFERENCE = DOCS / "reference"

# Every call of contract v1, as docs/PROTOCOL.md must name it.
CONTRACT_CALLS = [
    "GET /v1/status",
    "POST /v1/login",
    "POST /v1/login/one-time-key",
    "POST /v1/login/with-one-time-key",
    "POST /v1/login/with-token",
    "POST /v1/refresh",
    "POST /v1/logout",
    "GET /v1/me",
    "POST /v1/assets/register",
    "POST /v1/assets/challenge",
    "POST /v1/assets/token",
    "POST /v1/assets/validate",
    "POST /v1/assets/revoke",
    "GET /v1/keys",
    "POST /v1/tokens/create",
    "POST /v1/tokens/remove",
    "GET /v1/me/token",
]

_DIRECTIVE = re.compile(r"^::: (\S+)\n((?:    .*\n)*)", re.MULTILINE)


def _resolve(identifier: str) -> object:
    """Import what a ``::: identifier`` directive renders (a module or a module's name)."""
    try:
        return importlib.import_module(identifier)
    except ModuleNotFoundError:
        module, _, name = identifier.rpartition(".")
        return getattr(importlib.import_module(module), name)


def _directives() -> list[tuple[str, str]]:
    """Every mkdocstrings directive of the reference pages: (identifier, options)."""
    found = []
    for page in sorted(REFERENCE.glob("*.md")):
        found += _DIRECTIVE.findall(page.read_text(encoding="utf-8"))
    return found


def _documented() -> set[int]:
    """The ids of the objects the reference pages render."""
    ids = set()
    for identifier, options in _directives():
        obj = _resolve(identifier)
        ids.add(id(obj))
        if isinstance(obj, ModuleType) and "members: false" not in options:
            # A module renders its public members: its __all__.
            ids.update(id(getattr(obj, name)) for name in getattr(obj, "__all__", ()))
    return ids


def test_every_reference_directive_names_an_existing_object() -> None:
    directives = _directives()
    assert len(directives) > 20
    for identifier, _ in directives:
        assert _resolve(identifier) is not None, identifier


def test_every_public_name_is_in_the_api_reference() -> None:
    documented = _documented()
    missing = [name for name in tokensdk.__all__ if id(getattr(tokensdk, name)) not in documented]
    assert missing == []


def test_the_protocol_page_names_every_call_of_the_contract() -> None:
    text = (DOCS / "PROTOCOL.md").read_text(encoding="utf-8")
    assert [call for call in CONTRACT_CALLS if f"`{call}`" not in text] == []


def test_every_route_of_the_reference_service_is_documented() -> None:
    # A route added to the service must be written down: in the contract page, or
    # (an addition) in the extensions page.
    pages = "".join(
        (DOCS / name).read_text(encoding="utf-8")
        for name in ("PROTOCOL.md", "PROTOCOL-EXTENSIONS.md")
    )
    app = create_app(ServiceConfig())
    routes = {
        f"{route.method} {route.resource.canonical}"
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    assert routes >= set(CONTRACT_CALLS)
    assert sorted(route for route in routes if route not in pages) == []


def test_the_protocol_page_check_values_are_what_tokensdk_mac_computes() -> None:
    text = (DOCS / "PROTOCOL.md").read_text(encoding="utf-8")
    secret = base64.b64decode("VqAXEhziiT27lxoqREjtcQ==")
    nonce = bytes(range(16))
    assert "`VqAXEhziiT27lxoqREjtcQ==`" in text
    assert f"`{base64.b64encode(nonce).decode()}`" in text
    assert "`1700000000000`" in text
    rows = re.findall(
        r"^\| (3\.\d)(?: and (3\.\d))? \| `([A-Za-z0-9+/=]+)` \|$", text, re.MULTILINE
    )
    checked = set()
    for first, second, digest in rows:
        for version in filter(None, (first, second)):
            expected = base64.b64encode(compute_digest(secret, nonce, 1700000000000, version))
            assert (version, digest) == (version, expected.decode())
            checked.add(version)
    assert checked == {"3.0", "3.1", "3.2", "3.3"}


@pytest.mark.parametrize("name", ["README.md", "docs/PROTOCOL.md", "docs/PROTOCOL-EXTENSIONS.md"])
def test_the_docs_need_no_file_outside_the_project(name: str) -> None:
    assert "shared/" not in (ROOT / name).read_text(encoding="utf-8")


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    # What CI runs too: a docstring griffe cannot read or a broken link fails here.
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert (result.returncode, warnings) == (0, []), result.stderr[-2000:]
    assert (tmp_path / "reference" / "session" / "index.html").is_file()

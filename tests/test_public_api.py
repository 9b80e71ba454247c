"""The curated public API: complete, sorted, importable, and light to import."""

from __future__ import annotations

import subprocess
import sys

import tokensdk


def test_all_is_sorted_and_complete() -> None:
    public = {name for name in dir(tokensdk) if not name.startswith("_") and name[0].isupper()}
    assert sorted(tokensdk.__all__, key=lambda n: (n[0].islower(), n)) == tokensdk.__all__
    assert public - set(tokensdk.__all__) <= {"annotations"}
    for name in tokensdk.__all__:
        assert getattr(tokensdk, name) is not None


def test_every_public_name_has_a_docstring() -> None:
    for name in tokensdk.__all__:
        obj = getattr(tokensdk, name)
        if callable(obj):
            assert obj.__doc__, name


def test_import_does_not_load_the_service_or_the_cli() -> None:
    code = (
        "import sys, tokensdk; heavy = ('rich', 'tokensdk.server', 'tokensdk.cli');"
        " print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_error_tree_has_one_root() -> None:
    errors = [
        getattr(tokensdk, n) for n in tokensdk.__all__ if isinstance(getattr(tokensdk, n), type)
    ]
    for cls in errors:
        if issubclass(cls, Exception):
            assert issubclass(cls, tokensdk.TokenSDKError), cls

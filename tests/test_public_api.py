"""The curated public API: complete, sorted, importable, and light to import."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

import tokensdk
import tokensdk.stores


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


# Named by the packages, imported on first access (tokensdk._lazy): module -> names.
# tokensdk.stores first: tokensdk's stores are read through it.
_LAZY = {
    "tokensdk.stores": ["KeyringStore", "RedisStore"],
    "tokensdk": [
        "DeviceCode",
        "IntrospectionCache",
        "KeyringStore",
        "OAuth2",
        "RedisStore",
        "TokenInfo",
        "introspect",
    ],
}


def _run(code: str) -> str:
    """Run ``code`` in a fresh interpreter (nothing imported yet); its output."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_import_loads_only_what_a_native_session_needs() -> None:
    """Row 10: the optional parts (and their dependencies) wait until they are named."""
    optional = (
        "tokensdk._oauth2",
        "tokensdk._introspect",
        "tokensdk.stores._redis",
        "tokensdk.stores._keyring",
        "redis",
        "keyring",
        "aiohttp.web",
    )
    code = (
        f"import sys, tokensdk; tokensdk.Session('http://127.0.0.1:9');"
        f" print(sorted(m for m in {optional!r} if m in sys.modules))"
    )
    assert _run(code) == "[]"


def test_lazy_names_resolve_once_to_the_defining_modules_objects() -> None:
    code = (
        "import importlib, sys\n"
        f"for package, names in {_LAZY!r}.items():\n"
        "    module = importlib.import_module(package)\n"
        "    for name in names:\n"
        "        assert name in dir(module) and name in module.__all__, name\n"
        "        assert name not in vars(module), name  # not imported yet\n"
        "        first = getattr(module, name)\n"
        "        assert getattr(module, name) is first, name\n"
        "        assert vars(module)[name] is first, name  # kept: later reads skip __getattr__\n"
        "        home = sys.modules[first.__module__]\n"
        "        assert getattr(home, name) is first, name\n"
        "from tokensdk import OAuth2\n"
        "from tokensdk.stores import RedisStore\n"
        "import tokensdk\n"
        "assert OAuth2 is tokensdk.OAuth2 and RedisStore is tokensdk.RedisStore\n"
        "print('ok')"
    )
    assert _run(code) == "ok"


def test_a_lazy_package_still_refuses_an_unknown_name() -> None:
    for module in (tokensdk, tokensdk.stores):
        with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
            module.Nope  # noqa: B018


def test_a_missing_redis_extra_is_a_clear_typed_error_at_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # as if not installed: import fails
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    with pytest.raises(tokensdk.InvalidInput, match=r"needs the redis extra"):
        tokensdk.RedisStore("redis://127.0.0.1:9", name="state")


def test_error_tree_has_one_root() -> None:
    errors = [
        getattr(tokensdk, n) for n in tokensdk.__all__ if isinstance(getattr(tokensdk, n), type)
    ]
    for cls in errors:
        if issubclass(cls, Exception):
            assert issubclass(cls, tokensdk.TokenSDKError), cls


# -- no module reads another module's private names --------------------------------------

_PACKAGE = Path(tokensdk.__file__).parent

# Known exceptions, each with the change that removes it (none today: the CLI reads
# state files through tokensdk.stores.read_state_file).
_KNOWN: set[tuple[str, str]] = set()


def _module_names(tree: ast.Module) -> set[str]:
    """The names a module defines itself: functions, classes, globals, class members.

    Attributes it assigns on ``self`` count too (a Timer may update its Scheduler's
    counter in the same module). A heuristic: a module that copied a foreign private
    name into one of its own (``self._hub = session._hub``) would pass.
    """
    own: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            own.add(node.name)
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name)
            and node.value.id == "self"
        ):
            own.add(node.attr)
    bodies = [tree.body] + [n.body for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
    for body in bodies:
        for statement in body:
            targets = (
                statement.targets
                if isinstance(statement, ast.Assign)
                else [statement.target]
                if isinstance(statement, ast.AnnAssign)
                else []
            )
            own.update(t.id for t in targets if isinstance(t, ast.Name))
            if any(isinstance(t, ast.Name) and t.id == "__slots__" for t in targets):
                own.update(
                    c.value
                    for c in ast.walk(statement)
                    if isinstance(c, ast.Constant) and isinstance(c.value, str)
                )
    return own


def _foreign_private_access(path: Path) -> list[tuple[str, int, str]]:
    """``obj._name`` (obj not self/cls) or ``from x import _name`` of another module's name."""
    tree = ast.parse(path.read_text(), str(path))
    own = _module_names(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            name, owner = node.attr, node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if _private(alias.name) and not _is_module(node.module, alias.name):
                    found.append((path.name, node.lineno, alias.name))
            continue
        else:
            continue
        if _private(name) and name not in own:
            found.append((path.name, node.lineno, ast.unparse(node)))
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _is_module(package: str | None, name: str) -> bool:
    try:
        return package is not None and importlib.util.find_spec(f"{package}.{name}") is not None
    except ModuleNotFoundError:  # the package is a module: the name is not a submodule
        return False


def test_no_module_reads_another_modules_private_attributes() -> None:
    """The Session's components get a SessionContext; nobody reaches into the Session."""
    files = [p for p in _PACKAGE.rglob("*.py") if "server" not in p.relative_to(_PACKAGE).parts]
    assert len(files) > 20
    found = [hit for path in files for hit in _foreign_private_access(path)]
    unexpected = [hit for hit in found if (hit[0], hit[2]) not in _KNOWN]
    assert unexpected == []


def test_the_private_access_check_finds_what_it_should(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from tokensdk.stores._file import _read_regular_file\n"
        "class A:\n"
        "    def __init__(self, session):\n"
        "        self._mine = 1\n"
        "        other._mine, session._transport.call(), session._generation\n"
    )
    found = sorted(hit[2] for hit in _foreign_private_access(sample))
    assert found == ["_read_regular_file", "session._generation", "session._transport"]

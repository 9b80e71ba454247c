"""The curated public API: complete, sorted, importable, and light to import."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

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

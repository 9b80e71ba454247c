"""Lazy exports (PEP 562): a package names optional parts it imports on first access.

``import tokensdk`` should cost what a native session needs (benchmark row 10), not
the OAuth 2.0 backend, introspection or the Redis and keyring stores. A package
lists those names with the module that defines each; :func:`attach` gives it a
module ``__getattr__`` that imports the module when the name is first read and
keeps the value in the package, and a ``__dir__`` that lists the names. Type
checkers and mkdocstrings read the package's ``if TYPE_CHECKING:`` imports instead.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping

__all__ = ["attach"]


def attach(
    package: str, lazy: Mapping[str, str]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """A package's ``__getattr__`` and ``__dir__`` for names imported on first access.

    Args:
        package: The package's ``__name__``.
        lazy: Each lazy name and the module that defines it.

    Returns:
        ``(__getattr__, __dir__)`` to assign in the package.
    """
    names = dict(lazy)

    def __getattr__(name: str) -> object:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        # Kept in the package: later reads find it there and skip this function.
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | names.keys())

    return __getattr__, __dir__

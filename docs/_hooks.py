"""MkDocs hooks: the README (as the guide, ``index.md``) and the changelog as pages.

Both files live at the top of the repository, where GitHub and PyPI show them, so
their relative links are written from there: ``docs/PROTOCOL.md`` becomes
``PROTOCOL.md`` on the site, and a link to a file outside ``docs/`` (the benchmark
results, an example) becomes the file's path in code, since the site does not
carry it. Every other link is left to MkDocs' own checks (``--strict``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

_ROOT = Path(__file__).resolve().parent.parent
_PAGES = {"README.md": "index.md", "CHANGELOG.md": "changelog.md"}
_LINK = re.compile(r"(?<!!)\[([^\]\n]+)\]\(([^)\s]+)\)")


def _rewrite(match: re.Match[str]) -> str:
    text, target = match.group(1), match.group(2)
    if "://" in target or target.startswith(("#", "/", "mailto:")):
        return match.group(0)
    if target.startswith("docs/"):
        return f"[{text}]({target.removeprefix('docs/')})"
    shown = target if text.strip("`") == target else f"{text.strip('`')}: {target}"
    return f"`{shown}`"


def page_text(name: str) -> str:
    """The text of a top-level markdown file, with its links fitted to the site."""
    return _LINK.sub(_rewrite, (_ROOT / name).read_text(encoding="utf-8"))


def on_files(files: Files, config: Any) -> Files:
    for source, page in _PAGES.items():
        files.append(File.generated(config, page, content=page_text(source)))
    return files


def on_serve(server: Any, config: Any, builder: Any) -> Any:
    for source in _PAGES:
        server.watch(str(_ROOT / source))
    return server

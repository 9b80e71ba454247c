"""A griffe extension: the reStructuredText bits of tokensdk's docstrings as Markdown.

The docstrings are Napoleon (Google) style, read by both ``help()`` and the API
reference, and they use two pieces of reStructuredText that Markdown would show
literally:

- roles such as ``:class:`Session``` or ``:meth:`~tokensdk.Session.login```: shown as
  code (the last dotted part when the target starts with ``~``);
- a paragraph ending in ``::`` before an indented literal block: the marker becomes
  a single ``:`` (the indented block is a code block in Markdown too).

Only the rendered copy changes; the source keeps its docstrings.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|meth|func|mod|data|attr|exc|obj|const):`(~?)([^`]+)`")
_LITERAL_MARKER = re.compile(r"(?<=\S)::$", re.MULTILINE)
_BARE_MARKER = re.compile(r"^[ \t]*::$\n", re.MULTILINE)


def _role(match: re.Match[str]) -> str:
    short, target = match.group(1), match.group(2)
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


def markdown_docstring(text: str) -> str:
    """Return ``text`` with its reStructuredText roles and literal markers in Markdown."""
    text = _ROLE.sub(_role, text)
    text = _BARE_MARKER.sub("", text)
    return _LITERAL_MARKER.sub(":", text)


class RstToMarkdown(griffe.Extension):
    """Rewrite every docstring of the loaded objects (see the module docstring)."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown_docstring(obj.docstring.value)

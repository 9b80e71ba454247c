"""The top-level parser and :func:`main`: each command module adds its sub-parsers."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from tokensdk.cli import _demo, _login, _service, _state, _verify
from tokensdk.cli._running import CommandError

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, like every other failure.

    argparse prints the whole usage before the error; for ``serve`` that is a dozen
    lines burying the one that matters. ``--help`` still shows everything.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of every command.

    Returns:
        The top-level parser; each sub-parser's ``func`` runs its command.
    """
    parser = _Parser(
        prog="tokensdk",
        description="Keep an asyncio application authenticated: tokens, refresh, MAC headers.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add = commands.add_parser
    # In the order --help lists them.
    _demo.add_demo(add)
    _service.add_serve(add)
    _service.add_keys(add)
    _login.add_login(add)
    _login.add_logout(add)
    _state.add_tokens(add)
    _verify.add_verify(add)
    _state.add_header(add)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tokensdk`` command line.

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
    except CommandError as exc:
        print(f"tokensdk {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return result

"""``tokensdk demo``: the SDK at work against an embedded service (see :mod:`tokensdk._demo`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from tokensdk._argtypes import positive_float, positive_int

__all__ = ["add_demo"]

_DEFAULT_STATE = Path(".tokensdk-demo/state.json")


def add_demo(add_parser: Callable[..., argparse.ArgumentParser]) -> None:
    """Add the ``demo`` command.

    Args:
        add_parser: The ``add_parser`` of the top-level parser's sub-parsers.
    """
    demo = add_parser(
        "demo",
        help="watch a session keep its tokens fresh (embedded service)",
        description="Start the reference service in-process, log in with short lifespans, "
        "obtain an asset token and a MAC token, and show them counting down while they are "
        "refreshed. A second run resumes from --state without a password.",
    )
    demo.add_argument(
        "--duration", type=positive_float, help="stop after SECONDS (default: Ctrl-C)"
    )
    demo.add_argument(
        "--state", type=Path, default=_DEFAULT_STATE, help=f"state file (default: {_DEFAULT_STATE})"
    )
    demo.add_argument(
        "--access-ttl", type=positive_int, default=4, help="access token lifespan in seconds (4)"
    )
    demo.add_argument("--plain", action="store_true", help="print plain lines even on a terminal")
    demo.add_argument(
        "--oauth",
        action="store_true",
        help="speak OAuth 2.0 (discovery, password and refresh_token grants, revocation) to"
        " the service's token endpoint instead of its native contract",
    )
    demo.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    import signal

    # Ctrl-C must end the demo at any moment. Started with SIGINT ignored (a script's
    # background job), Python leaves it ignored until the demo's signal receiver takes
    # it over, and a Ctrl-C before that would be lost: take it now, as the receiver
    # will anyway. (A KeyboardInterrupt from here on ends in main(), exit status 0.)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)

    import anyio

    from tokensdk._demo import DemoOptions, run_demo

    live = sys.stdout.isatty() and not args.plain
    if live:
        try:
            import rich  # noqa: F401
        except ImportError:
            print(
                "tokensdk demo: rich is not installed (pip install 'tokensdk[cli]');"
                " printing plain lines",
                file=sys.stderr,
            )
            live = False
    options = DemoOptions(
        duration=args.duration,
        state=args.state,
        access_ttl=args.access_ttl,
        live=live,
        oauth=args.oauth,
    )
    return anyio.run(run_demo, options)

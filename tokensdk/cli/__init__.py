"""The ``tokensdk`` command line (also ``python -m tokensdk``).

Commands::

    demo     the SDK at work against an embedded service (a live table)
    serve    run the reference token service
    keys     manage the signing keys of a service database (``keys rotate --db``)
    login    log in and save the session to a state file
    logout   revoke the saved session and forget it
    tokens   list what a state file holds (secrets redacted)
    verify   validate an asset access token locally
    header   print a MAC header for a named MAC token of a state file

Everything heavy (aiohttp, rich, the service) is imported by the command that needs
it, so ``--help`` is fast. Failures print one line on stderr and exit non-zero:
1 for an operation that failed, 2 for bad usage.

One module per concept: :mod:`._main` (the parser and ``main``), :mod:`._running`
(running a command body, one-line errors), and one module per command group:
:mod:`._demo`, :mod:`._service` (``serve``, ``keys``), :mod:`._login` (``login``,
``logout``), :mod:`._state` (``tokens``, ``header``: reading a state file) and
:mod:`._verify`.
"""

from __future__ import annotations

from tokensdk.cli._main import build_parser, main

__all__ = ["build_parser", "main"]

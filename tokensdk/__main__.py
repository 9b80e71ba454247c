"""``python -m tokensdk``: the command line (see :mod:`tokensdk.cli`)."""

from tokensdk.cli import main

raise SystemExit(main())

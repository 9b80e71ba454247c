"""``tokensdk verify``: validate an asset access token locally."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from tokensdk.cli._running import CommandError, run

__all__ = ["add_verify"]


def add_verify(add_parser: Callable[..., argparse.ArgumentParser]) -> None:
    """Add the ``verify`` command.

    Args:
        add_parser: The ``add_parser`` of the top-level parser's sub-parsers.
    """
    verify = add_parser(
        "verify",
        help="validate an asset access token",
        description="Validate a PASETO v4.public asset access token locally and print the "
        "asset ids it grants.",
    )
    verify.add_argument("token", help="the token (v4.public....)")
    source = verify.add_mutually_exclusive_group(required=True)
    source.add_argument("--key", action="append", metavar="k4.public...", help="a trusted key")
    source.add_argument("--url", help="fetch the trusted keys from this service's /v1/keys")
    verify.set_defaults(func=_cmd_verify)


def _cmd_verify(args: argparse.Namespace) -> int:
    import datetime

    from tokensdk import InvalidInput, TokenInvalid, TokenValidator

    async def body() -> Any:
        try:
            validator = TokenValidator(args.url, keys=args.key)
        except InvalidInput as exc:
            raise CommandError(f"bad key: {exc}") from None
        async with validator:
            if args.url is not None:
                await validator.refresh_keys()
            return await validator.validate(args.token)

    try:
        info = run(body, url=args.url)
    except TokenInvalid as exc:
        raise CommandError(f"invalid token: {exc.reason}") from None
    expires = datetime.datetime.fromtimestamp(info.expires_at, datetime.UTC)
    for asset_id in info.asset_ids:
        print(asset_id)
    print(f"valid until {expires.isoformat(timespec='seconds')} (key {info.kid})", file=sys.stderr)
    return 0

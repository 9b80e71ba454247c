"""argparse value types shared by the CLI and the service's command line (no heavy imports)."""

from __future__ import annotations

import argparse
import math

__all__ = ["port_number", "positive_float", "positive_int", "power_of_two"]


def positive_float(text: str) -> float:
    """Parse a finite positive number, or fail with argparse's usage error."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text!r}")
    return value


def positive_int(text: str) -> int:
    """Parse a positive integer, or fail with argparse's usage error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def port_number(text: str) -> int:
    """Parse a TCP port (0 to 65535; 0 lets the system pick), or fail with a usage error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port from 0 to 65535: {text!r}")
    return value


def power_of_two(text: str) -> int:
    """Parse a power of two greater than 1 (an scrypt cost), or fail with a usage error."""
    value = positive_int(text)
    # scrypt refuses anything else, and only once the service starts hashing.
    if value < 2 or value & (value - 1):
        raise argparse.ArgumentTypeError(f"must be a power of two, at least 2: {text!r}")
    return value

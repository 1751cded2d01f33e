"""Value parsers for the subcommands' arguments (argparse ``type=`` callables)."""

from __future__ import annotations

import argparse
from datetime import date


def iso_date(text: str) -> date:
    """``YYYY-MM-DD`` -> date; anything else is an argparse usage error naming the value."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def positive_int(text: str) -> int:
    """A whole number >= 1; anything else is an argparse usage error naming the value."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a whole number >= 1: {text!r}")
    return value

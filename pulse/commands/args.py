"""Checks of the subcommands' input: argparse ``type=`` parsers, and a source read early."""

from __future__ import annotations

import argparse
import itertools
import re
from collections.abc import Iterator
from datetime import date
from typing import Any

INTERVAL = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*")
INTERVAL_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


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


def positive_float(text: str) -> float:
    """A number above zero; anything else is an argparse usage error naming the value."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"not a number above zero: {text!r}")
    return value


def interval_seconds(text: str) -> float:
    """'90s', '15m', '2h', '1d' or plain seconds -> seconds (> 0: zero would spin)."""
    m = INTERVAL.fullmatch(text)
    seconds = float(m.group(1)) * INTERVAL_SECONDS[m.group(2)] if m else 0.0
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"not an interval above zero (e.g. 30m, 2h, 1d): {text!r}")
    return seconds


def batches_read_early(source: Any) -> Iterator[Any]:
    """``source.iter_batches()`` with its first batch already read.

    The adapter checks the file's header (columns, emptiness) when reading starts. Reading
    the first batch here, before Kafka is contacted or a Spark session starts, makes a
    wrong file one clear error at once, not after a broker time-out or a JVM start.
    """
    batches = source.iter_batches()
    first = next(batches, None)
    return batches if first is None else itertools.chain([first], batches)

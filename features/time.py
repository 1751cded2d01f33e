"""Time semantics shared by every layer: cutoffs and the ``as_of`` they imply.

A batch window ends *before* a UTC date, its ``cutoff``: only events with
``event_time < cutoff`` belong to it, so a later period stays untouched for
evaluation. Features of that window are computed as of :func:`as_of_for`, the
last instant before the cutoff (``features.customer`` counts events with
``event_time <= as_of``).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta


def cutoff_ts(cutoff: date) -> datetime:
    """``cutoff`` as a UTC timestamp at 00:00."""
    return datetime.combine(cutoff, time(), tzinfo=UTC)


def as_of_for(cutoff: date) -> datetime:
    """The features' ``as_of`` for a window ending before ``cutoff``: its last microsecond."""
    return cutoff_ts(cutoff) - timedelta(microseconds=1)

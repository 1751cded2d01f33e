"""The stream clock and its units: UTC day numbers and microseconds since the epoch.

The stream clock is the latest accepted event time, robust to outliers
(``robust_clock``), never the wall clock. Days are UTC calendar days, counted from
1970-01-01; times are microseconds since the epoch.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import numpy as np

EPOCH = date(1970, 1, 1)
US_PER_DAY = 86_400_000_000
# An event more than this beyond both the batch's median event time and the current
# clock cannot move the clock (``robust_clock``).
CLOCK_OUTLIER = timedelta(days=30)


def day_number(d: date) -> int:
    """Days since 1970-01-01."""
    return (d - EPOCH).days


def to_datetime(us: int) -> datetime:
    """Microseconds since the epoch -> an aware UTC datetime."""
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


def robust_clock(times_us: np.ndarray, previous_us: int | None = None) -> int | None:
    """The latest event time of a batch that is not a lone outlier, or None.

    Sorted, the batch's times (with the previous clock among them) fall into runs
    separated by gaps longer than ``CLOCK_OUTLIER``. From the latest run down, a run
    holding fewer than two events and not the previous clock is an outlier, and is
    skipped; the clock is the end of the first run that is not. A batch that catches
    up months of history, or sparse data with gaps of weeks, keeps its latest event;
    one event dated years ahead (a bad clock, a typo) cannot age every customer.
    """
    if len(times_us) == 0:
        return previous_us
    t = np.sort(np.asarray(times_us, dtype=np.int64))
    anchor = previous_us if previous_us is not None else None
    if anchor is not None:
        t = np.sort(np.append(t, anchor))
    outlier = CLOCK_OUTLIER // timedelta(microseconds=1)
    starts = np.concatenate(([0], np.flatnonzero(np.diff(t) > outlier) + 1))
    ends = np.append(starts[1:], len(t))
    for start, end in zip(starts[::-1], ends[::-1], strict=True):
        run = t[start:end]
        has_anchor = anchor is not None and run[0] <= anchor <= run[-1]
        if end - start >= 2 or has_anchor or start == 0:
            return int(run[-1])
    return None

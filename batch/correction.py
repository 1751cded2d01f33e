"""The batch layer's per-customer state as of a retrain's cutoff: the lambda correction.

Each retrain computes, from the lake (which holds every late and re-sent event exactly
once), the same absolute state the stream keeps (``storage.state_rows.store_tables``)
as of its cutoff, writes it under ``outputs/state/<version>/`` and moves
``models/state/CURRENT`` to it. The running stream picks it up at its next micro-batch
(``streaming.seed.correct_from_batch``): the batch state supersedes the stream's up to
the cutoff, and the days streamed since are added on top. No quality gate: it is data,
computed by the same code as the stream's seed.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from features.time import as_of_for, cutoff_ts
from runtime.settings import Settings
from storage import registry
from storage.objects import write_parquet
from storage.state_rows import store_tables

NAME = "state"
FILES = ("customers.parquet", "days.parquet")


def write_state(
    settings: Settings,
    events: DataFrame,
    cutoff: date,
    version: str,
    daily: DataFrame | None = None,
) -> dict[str, Any]:
    """State of every customer from ``events`` before ``cutoff``; registered and promoted.

    ``daily``: the customer-day table of exactly those events, if the caller has it."""
    upto = events.where(F.col("event_time") < F.lit(cutoff_ts(cutoff)))
    customers, days = store_tables(upto, as_of_for(cutoff), daily)
    out = registry.output_path(settings, NAME, version)
    for name, table in zip(FILES, (customers, days), strict=True):
        write_parquet(table, out / name)
    meta = {"cutoff_exclusive": cutoff.isoformat(), "customers": customers.num_rows}
    registry.write_meta(settings, NAME, version, meta)
    registry.promote(settings, NAME, version)
    return meta

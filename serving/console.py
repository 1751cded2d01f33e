"""`pulse stream --console`: each micro-batch's updated customers as a table on stdout.

Like Spark's console sink shows a query's output, this shows the speed layer's: after
each micro-batch, the customers it changed (at most ``PULSE_CONSOLE_ROWS``, by id) with
their live features and scores as of the stream clock, computed as a look-up computes
them (``serving.read.evaluate``, with the CURRENT models) from the state the batch left.
It runs beside the live view (``Fanout``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import pyarrow as pa

from runtime.settings import Settings
from serving.read import evaluate
from serving.view import ModelCache
from storage.columnar_store import BatchResult, CustomerStateStore
from storage.state_rows import state_table

# (header, view-row key, width): what a marketer reads first
COLUMNS = (
    ("customer_id", "customer_id", 20),
    ("recency", "recency_days", 7),
    ("freq", "frequency", 5),
    ("monetary", "monetary", 10),
    ("ev 30d", "n_events_30d", 6),
    ("spend 30d", "spend_30d", 10),
    ("churn_p", "churn_probability", 8),
    ("at risk", "value_at_risk", 9),
    ("segment", "segment_name", 18),
)


class ConsoleSink:
    """A ``streaming.output.Sink`` that prints each batch's updated customers."""

    def __init__(
        self, settings: Settings, rows: int | None = None, out: Callable[[str], None] = print
    ) -> None:
        self.settings = settings
        self.rows = settings.console_rows if rows is None else rows
        self.out = out
        self.models = ModelCache()

    def batch(self, store: CustomerStateStore, result: BatchResult) -> None:
        """Print the customers ``result`` touched, as of the clock the batch left."""
        clock = store.clock()
        if clock is None or not result.applied or not result.touched_ids:
            return
        ids = sorted(result.touched_ids)
        state = state_table(*store.read(ids[: self.rows]))
        rows = evaluate(state, clock, self.models.current(self.settings))
        rows.sort(key=lambda row: row["customer_id"])  # the store reads in its own order
        self.out(format_batch(result.batch_id, len(ids), clock, rows))

    def snapshot(self, state: pa.Table, features: pa.Table, as_of: datetime) -> None:
        """Nothing: a snapshot changes no customer."""

    def progress(self, progress: dict[str, Any]) -> None:
        """Nothing: the stream logs its own progress."""

    def catch_up(self, store: CustomerStateStore) -> None:
        """Nothing: the console shows batches as they come."""


def _cell(value: Any, width: int) -> str:
    if value is None:
        text = "-"
    elif isinstance(value, float):
        text = f"{value:.4f}" if abs(value) < 1 else f"{value:,.2f}"
    else:
        text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def format_batch(batch_id: int, updated: int, clock: datetime, rows: list[dict[str, Any]]) -> str:
    """The batch's header line and a fixed-width table of ``rows``."""
    shown = f"showing {len(rows)}" if len(rows) < updated else "all shown"
    lines = [
        f"-- batch {batch_id}: {updated:,} customers updated, as of {clock:%Y-%m-%d %H:%M:%S}Z "
        f"({shown}) --",
        " ".join(f"{h:<{w}}" if k in ("customer_id", "segment_name") else f"{h:>{w}}"
                 for h, k, w in COLUMNS),
    ]  # fmt: skip
    for row in rows:
        lines.append(" ".join(
            f"{_cell(row[k], w):<{w}}" if k in ("customer_id", "segment_name")
            else f"{_cell(row[k], w):>{w}}"
            for _, k, w in COLUMNS
        ))  # fmt: skip
    return "\n".join(line.rstrip() for line in lines)


class Fanout:
    """Several sinks as one: each gets every call, in order."""

    def __init__(self, *sinks: Any) -> None:
        self.sinks = sinks

    def batch(self, store: CustomerStateStore, result: BatchResult) -> None:
        """Forward the batch."""
        for sink in self.sinks:
            sink.batch(store, result)

    def snapshot(self, state: pa.Table, features: pa.Table, as_of: datetime) -> None:
        """Forward the snapshot."""
        for sink in self.sinks:
            sink.snapshot(state, features, as_of)

    def progress(self, progress: dict[str, Any]) -> None:
        """Forward the progress report."""
        for sink in self.sinks:
            sink.progress(progress)

    def catch_up(self, store: CustomerStateStore) -> None:
        """Forward the catch-up."""
        for sink in self.sinks:
            sink.catch_up(store)

"""What the stream hands on beyond its own store: the ``Sink``, and the feature snapshot.

Per micro-batch the job folds its valid events into ``storage.columnar_store``'s
keyed store: the work is proportional to the batch's events and the customers they
touch, never to the whole customer base. On a schedule (``snapshot_interval_seconds``)
``publish_snapshot`` evaluates every customer's features as of the stream clock with
the one feature definition (``features.customer.features_table``), so a silent
customer still ages, and publishes them as one atomic Parquet snapshot. A ``Sink``
(the serving layer's live view, wired by ``pulse stream``) gets each batch's touched
customers and each snapshot.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

import pyarrow as pa
from upath import UPath

from features.customer import features_table
from runtime.settings import Settings
from storage import snapshots
from storage.columnar_store import BatchResult, CustomerStateStore
from storage.objects import write_parquet
from storage.state_rows import state_table


class Sink(Protocol):
    """Where the stream's output goes beyond its own state (``serving.live.LiveView``).

    ``batch``: after each micro-batch, with the store (read the touched customers from
    it) and what the batch did. ``snapshot``: after each full snapshot, with every
    customer's state and features as of the stream clock. ``progress``: Spark's report
    of each micro-batch (rates, durations, end offsets), from the monitoring thread.
    ``catch_up``: once at start.
    """

    def batch(self, store: CustomerStateStore, result: BatchResult) -> None:
        """A micro-batch was folded (or replayed: ``result.applied`` is False)."""

    def snapshot(self, state: pa.Table, features: pa.Table, as_of: datetime) -> None:
        """A full snapshot was published."""

    def progress(self, progress: dict[str, Any]) -> None:
        """Spark reported a micro-batch's progress (``StreamingQuery.recentProgress``)."""

    def catch_up(self, store: CustomerStateStore) -> None:
        """At start, before any batch: bring the output up to the store's last batch (a
        killed run may have folded batches whose output was not written yet)."""


def publish_snapshot(
    settings: Settings, store: CustomerStateStore, sink: Sink | None = None
) -> UPath | None:
    """Every customer's features as of the stream clock -> one atomic Parquet snapshot.

    Reads the whole store (this is the scheduled step whose cost grows with the
    customer base, not the per-batch one), evaluates ``features_table`` in NumPy and
    writes it with pyarrow: no Spark job. Returns the published directory, or None
    when the store is empty.
    """
    as_of = store.clock()
    if as_of is None:
        return None
    state = state_table(*store.read())
    features = features_table(state, as_of).sort_by("customer_id")
    version = f"{max(store.last_batch or 0, 0):012d}-{snapshots.new_version()}"

    def write(tmp: UPath) -> None:
        write_parquet(features, tmp / "part-00000.parquet", row_group_size=256_000)

    path = snapshots.publish(settings.features_dir, write, version=version)
    if sink is not None:
        sink.snapshot(state, features, as_of)
    return path

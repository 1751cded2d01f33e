"""The speed layer's state: the keyed store per micro-batch, full snapshots on a schedule.

Per micro-batch the job folds its valid events into ``storage.customer_state``'s
keyed store: the work is proportional to the batch's events and the customers they
touch, never to the whole customer base. On a schedule (``snapshot_interval_seconds``)
``publish_snapshot`` evaluates every customer's features as of the stream clock with
the one feature definition (``features.customer.features_table``), so a silent
customer still ages, and publishes them as one atomic Parquet snapshot. A ``Sink``
(the serving layer's live view, wired by ``pulse stream``) gets each batch's touched
customers and each snapshot.

``seed_from_lake`` builds the store from a backfilled lake with the batch code
(``customer_state(daily_activity(lake))``), so the stream reads only what came after.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Protocol

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from features.customer import customer_state, daily_activity, features_table
from runtime.errors import PulseError
from runtime.settings import Settings
from storage import snapshots
from storage.customer_state import EPOCH, TOTAL_COLUMNS, BatchResult, CustomerStateStore
from storage.state_table import state_table

SEED_BATCH = -1  # the seeded state counts as batch -1, so Spark's batch 0 folds into it


def open_store(settings: Settings) -> CustomerStateStore:
    """The stream's keyed per-customer state (``settings.state_dir``)."""
    return CustomerStateStore(settings.state_dir / "customers", settings.allowed_lateness_days)


class Sink(Protocol):
    """Where the stream's output goes beyond its own state (``serving.live.LiveView``).

    ``batch``: after each micro-batch, with the store (read the touched customers from
    it) and what the batch did. ``snapshot``: after each full snapshot, with every
    customer's state and features as of the stream clock.
    """

    def batch(self, store: CustomerStateStore, result: BatchResult) -> None:
        """A micro-batch was folded (or replayed: ``result.applied`` is False)."""

    def snapshot(self, state: pa.Table, features: pa.Table, as_of: datetime) -> None:
        """A full snapshot was published."""


def publish_snapshot(
    settings: Settings, store: CustomerStateStore, sink: Sink | None = None
) -> Path | None:
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

    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        pq.write_table(features, tmp / "part-00000.parquet", row_group_size=256_000)

    path = snapshots.publish(settings.features_dir, write, version=version)
    if sink is not None:
        sink.snapshot(state, features, as_of)
    return path


def seed_from_lake(
    spark: SparkSession,
    settings: Settings,
    store: CustomerStateStore,
    sink: Sink | None = None,
) -> int | None:
    """On the stream's first start, build the per-customer state from the lake.

    For a lake backfilled with ``pulse ingest``: the stream then reads from Kafka only
    what came after. The lake's events are counted exactly like streamed ones
    (``customer_state`` over ``daily_activity``), so the parity property holds for
    lake + stream. The topic must start on a later UTC day than the lake ends, or an
    event in both would count twice: ``streaming.job`` checks that before seeding.
    Returns the number of seeded customers, or None if the store has state already
    or the lake is empty. Publishes the seeded features.
    """
    from storage.lake import lake_exists, read_lake

    if store.last_batch is not None or not lake_exists(settings):
        return None
    events = read_lake(spark, settings).persist()
    try:
        row = events.agg(F.max("event_time")).first()
        as_of = None if row is None else row[0]
        if as_of is None:
            return None
        latest = events.groupBy("customer_id").agg(F.max("event_time").alias("max_event_time"))
        state = customer_state(daily_activity(events), as_of).join(latest, "customer_id")
        epoch = F.lit(EPOCH.isoformat()).cast("date")
        customers = state.select(
            "customer_id",
            *[
                F.datediff(c, epoch).cast("long").alias(c)
                for c in ("first_purchase_date", "last_purchase_date")
            ],
            *[
                c
                for c in TOTAL_COLUMNS
                if c not in ("first_purchase_date", "last_purchase_date", "max_event_time")
            ],
            F.unix_micros("max_event_time").alias("max_event_time"),
        ).toArrow()
        days = (
            state.select("customer_id", F.explode("history").alias("d"))
            .select("customer_id", "d.*")
            .withColumn("day", F.datediff("day", epoch).cast("long"))
            .toArrow()
        )
    finally:
        events.unpersist()
    clock_us = int(pa.scalar(as_of, pa.timestamp("us")).value)
    seeded = store.load(customers, days, clock_us, SEED_BATCH)
    publish_snapshot(settings, store, sink)
    return seeded


def check_store_matches_checkpoint(settings: Settings, store: CustomerStateStore) -> None:
    """Refuse to run when the state store and the Kafka checkpoint belong to different runs.

    Both record how far the stream got; one without the other would fold batches
    twice or not at all.
    """
    committed = sorted(
        int(p.name) for p in (settings.checkpoint_dir / "stream" / "commits").glob("[0-9]*")
    )
    last = store.last_batch
    if committed and (last is None or last < committed[-1]):
        raise PulseError(
            f"the state store {store.dir} is behind the checkpoint "
            f"{settings.checkpoint_dir / 'stream'} (batch {last} < {committed[-1]}): "
            "delete both to rebuild the speed layer from the topic"
        )
    if not committed and last is not None and last > SEED_BATCH + 1:
        raise PulseError(
            f"the state store {store.dir} has batches up to {last} but the checkpoint "
            f"{settings.checkpoint_dir / 'stream'} has none: delete both to start over"
        )

"""Per-customer state of the speed layer, and the live-feature publish step.

The RocksDB state store holds one aggregate row per (customer_id, UTC day): the
``features.customer.daily_activity`` columns plus the latest event time of that
day. The aggregation runs in *update* mode, so each micro-batch emits the new
absolute values of the customer-days it touched. ``publish_batch`` folds those
rows into a full customer-day table (Parquet under the checkpoint dir, one
directory per batch id, so a replayed batch overwrites its own output and never
double-counts), then builds the state with ``features.customer.customer_state``
and the live features with ``features.customer.features_as_of`` as of the
latest event time seen, for every customer, and publishes them atomically.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from features.customer import customer_state, daily_aggregations, features_as_of
from pulse import snapshots
from pulse.settings import Settings

DAILY_KEYS = ("customer_id", "day")


def daily_aggregates(events: DataFrame) -> DataFrame:
    """Contract events -> one row per (customer_id, day), as ``daily_activity`` plus max time.

    The aggregate columns are ``features.customer.daily_aggregations`` — the same
    expressions the batch path's ``daily_activity`` uses;
    ``max_event_time`` gives the snapshot's ``as_of``.
    """
    return events.groupBy("customer_id", F.to_date("event_time").alias("day")).agg(
        *daily_aggregations(), F.max("event_time").alias("max_event_time")
    )


def daily_table_dir(settings: Settings) -> Path:
    """Where the full customer-day table is materialised, one ``batch=<id>`` dir per batch."""
    return settings.checkpoint_dir / "features-daily"


def _batch_dirs(base: Path) -> list[tuple[int, Path]]:
    found = []
    for p in base.glob("batch=*"):
        if (p / "_SUCCESS").exists():
            found.append((int(p.name.split("=", 1)[1]), p))
    return sorted(found)


def merge_daily(
    spark: SparkSession, settings: Settings, updates: DataFrame, batch_id: int
) -> DataFrame | None:
    """Fold this batch's updated customer-day rows into the full table; return it.

    Reads the newest complete table of an *earlier* batch, replaces the rows whose
    keys were updated (update mode gives absolute values), writes
    ``batch=<batch_id>`` (overwriting a partial write from a crashed attempt) and
    keeps only the two newest tables. Returns None when the batch changed nothing.
    """
    if updates.isEmpty():
        return None
    base = daily_table_dir(settings)
    earlier = [p for b, p in _batch_dirs(base) if b < batch_id]
    merged = updates
    if earlier:
        prev = spark.read.parquet(str(earlier[-1]))
        merged = prev.join(updates.select(*DAILY_KEYS), list(DAILY_KEYS), "left_anti").unionByName(
            updates
        )
    out = base / f"batch={batch_id}"
    merged.write.mode("overwrite").parquet(str(out))
    for b, p in _batch_dirs(base)[:-2]:
        if b < batch_id:
            shutil.rmtree(p, ignore_errors=True)
    return spark.read.parquet(str(out))


def publish_batch(
    spark: SparkSession,
    settings: Settings,
    updates: DataFrame,
    batch_id: int,
    on_publish: Callable[[DataFrame], None] | None = None,
) -> Path | None:
    """One micro-batch of customer-day updates -> a published live-feature snapshot.

    as_of = the latest event time in the (deduplicated, not too late) events seen so
    far. Versions start with the zero-padded batch id so they sort in batch order; a
    replayed batch publishes the same content again under a new version.
    Returns the published directory, or None if the batch changed nothing.
    """
    daily = merge_daily(spark, settings, updates, batch_id)
    if daily is None:
        return None
    as_of = daily.agg(F.max("max_event_time")).first()[0]
    features = features_as_of(customer_state(daily, as_of), as_of).orderBy("customer_id")
    path = snapshots.publish(
        settings.features_dir,
        lambda tmp: features.write.parquet(str(tmp)),
        version=f"{batch_id:012d}-{snapshots.new_version()}",
    )
    if on_publish is not None:
        on_publish(spark.read.parquet(str(path)))
    return path

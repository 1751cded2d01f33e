"""Per-customer state of the speed layer, and the live-feature publish step.

Two levels, so that a micro-batch costs what it touches, not the whole history:

1. The RocksDB state store aggregates events per (customer_id, UTC day) in *update*
   mode: each micro-batch emits the new absolute values of the customer-days it
   touched (``features.customer.daily_aggregations``, the batch layer's expressions).
   The day is a 1-day event-time window, so once the watermark passes a day its
   key is evicted: the store holds only the days that can still change.
2. ``merge_state`` folds those rows into the per-customer state table
   (``features.customer.STATE_SCHEMA``: absolute totals, first/last purchase day
   and the bounded daily history, plus ``max_event_time``). A touched day is
   always within the history (the watermark lags by at most
   ``allowed_lateness_days`` < ``HISTORY_DAYS``), so its previous values are known:
   totals move by (new - old) and the day replaces its old entry.

``publish_batch`` writes the merged table under the checkpoint dir (one
``batch=<id>`` directory per batch id, so a replayed batch overwrites its own
output and never double-counts), then publishes ``features_as_of`` for every
customer as of the latest event time seen, atomically.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from features.customer import (
    DAY_COLUMNS,
    DAY_STRUCT,
    HISTORY_DAYS,
    STATE_SCHEMA,
    daily_aggregations,
    day_row,
    features_as_of,
)
from runtime.settings import Settings
from storage import snapshots

DAILY_COLUMNS = [c for c in DAY_COLUMNS if c != "day"] + ["max_event_time"]


def daily_aggregates(events: DataFrame) -> DataFrame:
    """Contract events -> one row per (customer_id, UTC day): daily activity plus max time.

    Grouped by a 1-day window on event_time (not ``to_date``) so that, with a
    watermark, the state store evicts days the watermark has passed.
    """
    aggregates = [*daily_aggregations(), F.max("event_time").alias("max_event_time")]
    return (
        events.groupBy("customer_id", F.window("event_time", "1 day").alias("w"))
        .agg(*aggregates)
        .select("customer_id", F.to_date("w.start").alias("day"), *DAILY_COLUMNS)
    )


def _total(days: Column, field: str) -> Column:
    zero = F.lit(0).cast(DAY_STRUCT[field].dataType)
    return F.aggregate(F.transform(days, lambda d: d[field]), zero, lambda acc, x: acc + x)


def _purchase_days(days: Column) -> Column:
    return F.filter(days, lambda d: d["n_purchases"] > 0)


def merge_state(previous: DataFrame | None, updates: DataFrame) -> DataFrame:
    """Previous per-customer state + this batch's absolute customer-day rows -> new state.

    ``updates`` holds the ``daily_aggregates`` columns. Each history is trimmed to the
    ``HISTORY_DAYS`` days ending on the customer's own latest event: never later than
    the snapshot's as_of, so it keeps every day ``features_as_of`` reads and every day
    the watermark still lets change, with no global max computed per batch.
    """
    spark = updates.sparkSession
    if previous is None:
        previous = spark.createDataFrame([], STATE_SCHEMA).withColumn(
            "max_event_time", F.lit(None).cast("timestamp")
        )
    new = updates.groupBy("customer_id").agg(
        F.collect_list(day_row(F.col)).alias("new_days"),
        F.max("max_event_time").alias("new_max_time"),
    )
    old_days = F.coalesce(F.col("history"), F.array())
    new_days = F.coalesce(F.col("new_days"), F.array())

    def touched(d: Column) -> Column:
        return F.exists(new_days, lambda n: n["day"] == d["day"])

    replaced = F.filter(old_days, touched)  # the old values of the days seen again
    kept = F.filter(old_days, lambda d: ~touched(d))

    def moved(name: str, field: str) -> Column:
        return F.coalesce(F.col(name), F.lit(0)) + _total(new_days, field) - _total(replaced, field)

    new_purchase_days = F.transform(_purchase_days(new_days), lambda d: d["day"])
    history = F.array_sort(F.concat(kept, new_days))
    max_time = F.greatest("max_event_time", "new_max_time")
    since = F.date_sub(F.to_date(max_time), HISTORY_DAYS)
    merged = previous.join(new, "customer_id", "full_outer").select(
        "customer_id",
        F.least("first_purchase_date", F.array_min(new_purchase_days)).alias("first_purchase_date"),
        F.greatest("last_purchase_date", F.array_max(new_purchase_days)).alias(
            "last_purchase_date"
        ),
        (
            F.coalesce(F.col("purchase_days"), F.lit(0))
            + F.size(_purchase_days(new_days))
            - F.size(_purchase_days(replaced))
        ).alias("purchase_days"),
        moved("n_events", "n_events").alias("n_events"),
        moved("monetary", "spend").alias("monetary"),
        moved("n_online", "n_online").alias("n_online"),
        moved("n_with_channel", "n_with_channel").alias("n_with_channel"),
        F.filter(history, lambda d: d["day"] > since).alias("history"),
        max_time.alias("max_event_time"),
    )
    # history is already a DAY_STRUCT array (only its nullability flags differ).
    return merged.select(
        *[
            F.col(f.name) if f.name == "history" else F.col(f.name).cast(f.dataType).alias(f.name)
            for f in STATE_SCHEMA
        ],
        "max_event_time",
    )


def state_table_dir(settings: Settings) -> Path:
    """Where the per-customer state table is materialised, one ``batch=<id>`` dir per batch."""
    return settings.state_dir


def _batch_dirs(base: Path) -> list[tuple[int, Path]]:
    found = []
    for p in base.glob("batch=*"):
        if (p / "_SUCCESS").exists():
            found.append((int(p.name.split("=", 1)[1]), p))
    return sorted(found)


def advance_state(
    spark: SparkSession, settings: Settings, updates: DataFrame, batch_id: int
) -> DataFrame | None:
    """Fold this batch's customer-day rows into the state table; return the new table.

    Reads the newest complete table of an *earlier* batch, writes ``batch=<batch_id>``
    (overwriting a partial write from a crashed attempt) and keeps only the two
    newest tables. Returns None when the batch changed nothing.
    """
    if updates.isEmpty():
        return None
    base = state_table_dir(settings)
    earlier = [p for b, p in _batch_dirs(base) if b < batch_id]
    previous = spark.read.parquet(str(earlier[-1])) if earlier else None
    out = base / f"batch={batch_id}"
    merge_state(previous, updates).write.mode("overwrite").parquet(str(out))
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
    state = advance_state(spark, settings, updates, batch_id)
    if state is None:
        return None
    return publish_state(settings, state, f"{batch_id:012d}-{snapshots.new_version()}", on_publish)


def publish_state(
    settings: Settings,
    state: DataFrame,
    version: str,
    on_publish: Callable[[DataFrame], None] | None = None,
) -> Path:
    """Features of every customer in ``state`` as of its latest event time, published."""
    as_of = state.agg(F.max("max_event_time")).first()[0]
    features = features_as_of(state, as_of).orderBy("customer_id")
    path = snapshots.publish(
        settings.features_dir,
        lambda tmp: features.write.parquet(str(tmp)),
        version=version,
    )
    if on_publish is not None:
        on_publish(state.sparkSession.read.parquet(str(path)))
    return path


SEED_BATCH = -1  # the seeded table sorts before batch 0, so batch 0 folds into it


def seed_from_lake(
    spark: SparkSession,
    settings: Settings,
    on_publish: Callable[[DataFrame], None] | None = None,
) -> int | None:
    """On the stream's first start, build the per-customer state from the lake.

    For a lake backfilled with ``pulse ingest``: the stream then reads from Kafka only
    what came after, instead of replaying the history through Kafka. The lake's
    events are counted exactly like streamed ones (``customer_state`` over
    ``daily_activity``), so the parity property holds for lake + stream, provided
    the topic starts on a later UTC day than the lake ends (as ``pulse demo``'s
    backfill/replay split does): a streamed customer-day replaces the seeded one.
    Returns the number of seeded customers, or None if the stream has state already
    or the lake is empty. Publishes the seeded features.
    """
    from features.customer import customer_state, daily_activity
    from storage.lake import lake_exists, read_lake

    base = state_table_dir(settings)
    started = (settings.checkpoint_dir / "features" / "offsets").is_dir()
    if started or _batch_dirs(base) or not lake_exists(settings):
        return None
    events = read_lake(spark, settings).persist()
    try:
        as_of = events.agg(F.max("event_time")).first()[0]
        latest = events.groupBy("customer_id").agg(F.max("event_time").alias("max_event_time"))
        state = customer_state(daily_activity(events), as_of).join(latest, "customer_id")
        out = base / f"batch={SEED_BATCH}"
        state.write.mode("overwrite").parquet(str(out))
    finally:
        events.unpersist()
    seeded = spark.read.parquet(str(out))
    publish_state(settings, seeded, f"{0:012d}-0-seed-{snapshots.new_version()}", on_publish)
    return seeded.count()

"""The speed layer's state: the keyed store per micro-batch, full snapshots on a schedule.

Per micro-batch the job folds its valid events into ``storage.customer_state``'s
keyed store: the work is proportional to the batch's events and the customers they
touch, never to the whole customer base. On a schedule (``snapshot_interval_seconds``)
``publish_snapshot`` evaluates every customer's features as of the stream clock with
the batch layer's own ``features.customer.features_as_of``, so a silent customer still
ages, and publishes them as one atomic Parquet snapshot.

``seed_from_lake`` builds the store from a backfilled lake with the batch code
(``customer_state(daily_activity(lake))``), so the stream reads only what came after.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from features.customer import (
    DAY_COLUMNS,
    STATE_SCHEMA,
    customer_state,
    daily_activity,
    day_row,
    features_as_of,
)
from runtime.errors import PulseError
from runtime.settings import Settings
from storage import snapshots
from storage.customer_state import (
    EPOCH,
    TOTAL_COLUMNS,
    CustomerStateStore,
)

SEED_BATCH = -1  # the seeded state counts as batch -1, so Spark's batch 0 folds into it


def open_store(settings: Settings) -> CustomerStateStore:
    """The stream's keyed per-customer state (``settings.state_dir``)."""
    return CustomerStateStore(settings.state_dir / "customers", settings.allowed_lateness_days)


def state_frame(spark: SparkSession, customers: pa.Table, days: pa.Table) -> DataFrame:
    """The store's Arrow tables -> ``STATE_SCHEMA`` rows plus ``max_event_time``."""
    epoch = F.lit(EPOCH.isoformat()).cast("date")
    if not len(customers):
        empty = spark.createDataFrame([], STATE_SCHEMA)
        return empty.withColumn("max_event_time", F.lit(None).cast("timestamp"))
    cust = spark.createDataFrame(customers)  # Arrow straight into Spark, no pandas step
    day_frame = spark.createDataFrame(
        days.cast(
            pa.schema(
                [("customer_id", pa.string())]
                + [(c, pa.float64() if c == "spend" else pa.int64()) for c in DAY_COLUMNS]
            )
        )
    ).withColumn("day", F.date_add(epoch, F.col("day").cast("int")))
    history = day_frame.groupBy("customer_id").agg(
        F.array_sort(F.collect_list(day_row(F.col))).alias("history")
    )
    dated = cust.select(
        "customer_id",
        *[
            F.date_add(epoch, F.col(c).cast("int")).alias(c)
            for c in ("first_purchase_date", "last_purchase_date")
        ],
        *[c for c in TOTAL_COLUMNS if c not in ("first_purchase_date", "last_purchase_date")],
    ).withColumn("max_event_time", F.timestamp_micros("max_event_time"))
    joined = dated.join(history, "customer_id", "left").withColumn(
        "history", F.coalesce(F.col("history"), F.array().cast(STATE_SCHEMA["history"].dataType))
    )
    return joined.select(
        *[F.col(f.name).cast(f.dataType).alias(f.name) for f in STATE_SCHEMA], "max_event_time"
    )


def publish_snapshot(
    spark: SparkSession,
    settings: Settings,
    store: CustomerStateStore,
    on_publish: Callable[[DataFrame], None] | None = None,
) -> Path | None:
    """Every customer's features as of the stream clock -> one atomic snapshot.

    Reads the whole store (this is the scheduled step whose cost grows with the
    customer base, not the per-batch one). Returns the published directory, or None
    when the store is empty.
    """
    as_of = store.clock()
    if as_of is None:
        return None
    customers, days = store.read()
    state = state_frame(spark, customers, days)
    features = features_as_of(state, as_of).orderBy("customer_id")
    version = f"{max(store.last_batch or 0, 0):012d}-{snapshots.new_version()}"
    path = snapshots.publish(
        settings.features_dir, lambda tmp: features.write.parquet(str(tmp)), version=version
    )
    if on_publish is not None:
        on_publish(spark.read.parquet(str(path)))
    return path


def seed_from_lake(
    spark: SparkSession,
    settings: Settings,
    store: CustomerStateStore,
    on_publish: Callable[[DataFrame], None] | None = None,
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
    publish_snapshot(spark, settings, store, on_publish)
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

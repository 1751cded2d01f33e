"""The streaming job: Kafka -> quarantine, lake and live features.

Three named queries share one parse step (``streaming.parse.classify``) and each
keeps its own checkpoint under ``settings.checkpoint_dir``:

- ``pulse-quarantine``: invalid records (raw bytes, topic, partition, offset,
  reason) -> Parquet file sink. The file sink + checkpoint is exactly-once.
- ``pulse-lake``: valid events, deduplicated by event_id among records that
  reached Kafka within ``LAKE_DEDUP_WINDOW`` of each other (watermark on the
  Kafka timestamp, *not* the event time, so late events are never dropped
  here), -> Parquet file sink partitioned by ``event_date``. Exactly-once.
- ``pulse-features``: valid events with a watermark of
  ``allowed_lateness_days`` on event_time, deduplicated by event_id within it
  (events later than that are dropped here and counted, but are in the lake),
  aggregated per customer-day in the RocksDB state store (update mode) ->
  ``streaming.state.publish_batch`` (idempotent per batch id).

Time semantics: a snapshot's as_of is the latest event time seen, never the
wall clock.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from runtime.errors import PulseError
from runtime.settings import Settings
from schemas.transaction import FIELD_NAMES
from streaming.parse import classify, quarantine_rows, valid_events
from streaming.state import daily_aggregates, publish_batch, seed_from_lake

LAKE_DEDUP_WINDOW = "1 hour"  # Kafka-time window within which a re-sent event_id is dropped
QUERIES = ("pulse-quarantine", "pulse-lake", "pulse-features")


@dataclass
class RunStats:
    """What one run of the job did, summed over micro-batches of each query."""

    input_rows: dict[str, int] = field(default_factory=dict)
    batches: dict[str, int] = field(default_factory=dict)
    late_dropped: int = 0  # valid events beyond the allowed lateness (features only)
    publishes: int = 0


def kafka_source(spark: SparkSession, settings: Settings) -> DataFrame:
    """The transactions topic as a streaming DataFrame (Spark's own Kafka source)."""
    reader = spark.readStream.format("kafka")
    for key, value in settings.spark_kafka_options().items():
        reader = reader.option(key, value)
    return (
        reader.option("subscribe", settings.topic_transactions)
        .option("startingOffsets", "earliest")  # first start only; then the checkpoint rules
        .option("maxOffsetsPerTrigger", str(settings.max_offsets_per_trigger))
        .option("failOnDataLoss", "false")
        .load()
    )


def lake_events(valid: DataFrame) -> DataFrame:
    """Valid events -> lake rows (contract columns + event_date), re-sent duplicates dropped."""
    return (
        valid.withWatermark("kafka_ts", LAKE_DEDUP_WINDOW)
        .dropDuplicatesWithinWatermark(["event_id"])
        .select(*FIELD_NAMES, F.to_date("event_time").alias("event_date"))
    )


def feature_updates(valid: DataFrame, settings: Settings) -> DataFrame:
    """Valid events -> updated customer-day aggregates (late events beyond lateness dropped)."""
    return daily_aggregates(
        valid.withWatermark("event_time", f"{settings.allowed_lateness_days} days")
        .dropDuplicatesWithinWatermark(["event_id"])
        .select(*FIELD_NAMES)
    )


def _trigger(settings: Settings, until_idle: bool) -> dict[str, Any]:
    return {"availableNow": True} if until_idle else {"processingTime": settings.trigger_interval}


def start(
    spark: SparkSession,
    settings: Settings,
    raw: DataFrame,
    *,
    until_idle: bool,
    console: bool = False,
    on_publish: Callable[[DataFrame], None] | None = None,
) -> list[StreamingQuery]:
    """Start the three queries on ``raw`` (Kafka-shaped rows); returns them running."""
    classified = classify(raw)
    trigger = _trigger(settings, until_idle)
    ckpt = settings.checkpoint_dir

    def features_batch(updates: DataFrame, batch_id: int) -> None:
        # The batch is used more than once (emptiness, then the merge); unpersisted,
        # each use re-runs the stateful aggregation, and two tasks of one batch then
        # contend for the same RocksDB partition lock (UNRELEASED_THREAD_ERROR).
        updates = updates.persist()
        try:
            if console:
                updates.orderBy("customer_id", "day").show(10, truncate=False)
            publish_batch(spark, settings, updates, batch_id, on_publish)
        finally:
            updates.unpersist()

    quarantine = (
        quarantine_rows(classified)
        .writeStream.queryName("pulse-quarantine")
        .format("parquet")
        .option("path", str(settings.quarantine_dir))
        .option("checkpointLocation", str(ckpt / "quarantine"))
        .trigger(**trigger)
        .start()
    )
    lake = (
        lake_events(valid_events(classified))
        .writeStream.queryName("pulse-lake")
        .format("parquet")
        .partitionBy("event_date")
        .option("path", str(settings.lake_dir))
        .option("checkpointLocation", str(ckpt / "lake"))
        .trigger(**trigger)
        .start()
    )
    features = (
        feature_updates(valid_events(classified), settings)
        .writeStream.queryName("pulse-features")
        .outputMode("update")
        .foreachBatch(features_batch)
        .option("checkpointLocation", str(ckpt / "features"))
        .trigger(**trigger)
        .start()
    )
    return [quarantine, lake, features]


def kafka_lag(progress: dict[str, Any]) -> int | None:
    """Records between the batch's end offsets and the latest offsets in Kafka."""
    try:
        source = progress["sources"][0]
        end, latest = json.loads(source["endOffset"]), json.loads(source["latestOffset"])
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    if not isinstance(latest, dict) or not isinstance(end, dict):
        return None  # e.g. a restarted query's first batch has no latestOffset yet
    return sum(
        int(off) - int(end.get(topic, {}).get(part, 0))
        for topic, parts in latest.items()
        for part, off in parts.items()
    )


def progress_line(progress: dict[str, Any]) -> str:
    """One human line per micro-batch from a StreamingQueryProgress dict."""
    ops = progress.get("stateOperators") or []
    state_rows = sum(op.get("numRowsTotal", 0) for op in ops)
    late = sum(op.get("numRowsDroppedByWatermark", 0) for op in ops)
    event_time = progress.get("eventTime") or {}
    rate = progress.get("processedRowsPerSecond") or 0.0
    return (
        f"{progress.get('name')} batch {progress.get('batchId')}: "
        f"{progress.get('numInputRows', 0)} rows, {rate:,.0f} rows/s, "
        f"{progress.get('durationMs', {}).get('triggerExecution', 0)} ms, "
        f"state rows {state_rows}, late dropped {late}, "
        f"watermark {event_time.get('watermark', '-')}, max event time "
        f"{event_time.get('max', '-')}, Kafka lag {kafka_lag(progress)}"
    )


def monitor(
    queries: list[StreamingQuery],
    log: Callable[[str], None] = print,
    poll_seconds: float = 0.5,
    stop_when: Callable[[], bool] | None = None,
) -> RunStats:
    """Print one progress line per micro-batch until every query stops (or ``stop_when``).

    A failed query stops the others and raises PulseError with its one-line cause.
    """
    stats = RunStats()
    seen: dict[str, int] = {}
    try:
        while True:
            for q in queries:
                for p in q.recentProgress:
                    if p["batchId"] <= seen.get(q.name, -1):
                        continue
                    seen[q.name] = p["batchId"]
                    stats.input_rows[q.name] = stats.input_rows.get(q.name, 0) + p["numInputRows"]
                    stats.batches[q.name] = stats.batches.get(q.name, 0) + 1
                    if q.name == "pulse-features":
                        stats.late_dropped += sum(
                            op.get("numRowsDroppedByWatermark", 0)
                            for op in p.get("stateOperators") or []
                        )
                    log(progress_line(p))
            failed = [q for q in queries if q.exception() is not None]
            if failed:
                msg = str(failed[0].exception()).strip().splitlines()[0]
                raise PulseError(f"stream query {failed[0].name} failed: {msg[:300]}")
            if not any(q.isActive for q in queries) or (stop_when and stop_when()):
                return stats
            time.sleep(poll_seconds)
    finally:
        for q in queries:
            if q.isActive:
                q.stop()


def run(
    spark: SparkSession,
    settings: Settings,
    *,
    until_idle: bool,
    console: bool = False,
    log: Callable[[str], None] = print,
    on_publish: Callable[[DataFrame], None] | None = None,
    seed: bool = False,
) -> RunStats:
    """Read the topic and run the three queries; with ``until_idle`` stop once caught up.

    ``seed``: on the first start, build the live state from the lake first
    (``streaming.state.seed_from_lake``).
    """
    if seed:
        seeded = seed_from_lake(spark, settings, on_publish)
        if seeded is not None:
            log(f"stream state seeded from the lake: {seeded:,} customers")
    queries = start(
        spark,
        settings,
        kafka_source(spark, settings),
        until_idle=until_idle,
        console=console,
        on_publish=on_publish,
    )
    stats = monitor(queries, log=log)
    log(
        f"stream stopped: {stats.input_rows} input rows, "
        f"{stats.late_dropped} events beyond the allowed lateness (kept in the lake only)"
    )
    return stats

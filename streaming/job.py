"""The streaming job: Kafka -> quarantine, lake and the per-customer state, one query.

One named query (``pulse-stream``) reads the topic with Spark's own Kafka source; one
Spark job per micro-batch collects its Kafka records to the driver as Arrow, into the
inbox (``streaming.inbox``), and the job's worker thread hands them to
``process_batch`` while Spark reads the next batch. There ``streaming.parse`` parses
each record once with pyarrow (Spark's JSON parsing cost four times the read itself);
every write that follows is idempotent per batch id, so a batch that Spark replays
after a crash, or that a restart finds in the inbox, changes nothing twice:

- invalid records -> ``quarantine/batch=<id>/`` (raw bytes, topic, partition,
  offset, reason), overwritten by a replay;
- valid events -> ``storage.columnar_store``: ids seen before and events older
  than the watermark (clock - ``allowed_lateness_days``) are not counted; the rest
  move their customers' absolute state, in one transaction with the batch id;
- valid events, less those seen before -> the lake, one file per event date named
  after the batch id (a replay deletes and rewrites the same names). Late events go
  to the lake too: the batch layer counts them.

Why one query with a keyed store, not Spark's stateful aggregation: a stateful
operator's output replaces the events, so the lake and quarantine would need a
second query, and Kafka would be read and parsed twice; parsing is the dominant
cost of a micro-batch. The store's transaction gives the exactly-once fold that
Spark's state store would.

Every ``snapshot_interval_seconds`` (0: after every batch that changed the state),
and when a run ends, every customer's features are published as of the stream clock
(``streaming.output.publish_snapshot``): the one step whose cost grows with the
customer base, so it runs on a schedule, not per batch.

Time semantics: the stream clock is the latest accepted event time (robust to one
outlier: ``storage.stream_clock.robust_clock``), never the wall clock.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from py4j.protocol import Py4JError
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.streaming import StreamingQuery

from runtime.errors import PulseError
from runtime.kafka_admin import lag
from runtime.settings import Settings
from storage.columnar_store import EVENT_COLUMNS, BatchResult, CustomerStateStore
from storage.lake import lake_rows, write_lake_batch
from storage.objects import spark_path, write_parquet
from streaming.inbox import Inbox
from streaming.kafka_rows import KAFKA_COLUMNS, QUARANTINE_COLUMNS
from streaming.output import Sink, publish_snapshot
from streaming.parse import classify_arrow
from streaming.seed import (
    check_store_matches_checkpoint,
    correct_from_batch,
    open_store,
    seed_from_lake,
)

QUERY_NAME = "pulse-stream"


@dataclass
class RunStats:
    """What one run of the job did, summed over its micro-batches."""

    batches: int = 0
    input_rows: int = 0
    quarantined: int = 0
    counted: int = 0
    duplicates: int = 0
    late_dropped: int = 0  # valid events beyond the allowed lateness (lake only)
    publishes: int = 0


def kafka_source(spark: SparkSession, settings: Settings) -> DataFrame:
    """The transactions topic as a streaming DataFrame (Spark's own Kafka source).

    ``failOnDataLoss`` follows ``settings.fail_on_data_loss`` (true by default): after
    an outage longer than the topic's retention the stream stops with Spark's error
    instead of silently skipping the deleted records.
    """
    reader = spark.readStream.format("kafka")
    for key, value in settings.spark_kafka_options().items():
        reader = reader.option(key, value)
    return (
        reader.option("subscribe", settings.topic_transactions)
        .option("startingOffsets", "earliest")  # first start only; then the checkpoint rules
        .option("maxOffsetsPerTrigger", str(settings.max_offsets_per_trigger))
        .option("failOnDataLoss", str(settings.fail_on_data_loss).lower())
        .load()
    )


def write_quarantine_batch(settings: Settings, rows: pa.Table, batch_id: int) -> None:
    """Write one batch's invalid records as ``quarantine/batch=<id>/part-00000.parquet``."""
    write_parquet(rows, settings.quarantine_dir / f"batch={batch_id}" / "part-00000.parquet")


def process_batch(
    settings: Settings,
    store: CustomerStateStore,
    spark: SparkSession,
    kafka: pa.Table,
    batch_id: int,
) -> tuple[int, BatchResult]:
    """One micro-batch of Kafka records (``KAFKA_COLUMNS``, Arrow) -> quarantine, lake, state.

    ``streaming.parse.classify_arrow`` types and checks the records on the driver with
    pyarrow, on all its cores (records not in the producer's canonical form, rare, get
    a small Spark job on just those rows). The writes that follow are plain files.
    Returns (quarantined records, what the store did). Idempotent per ``batch_id``.
    """
    clock = _Stages()
    table = classify_arrow(spark, kafka).rename_columns({"timestamp": "kafka_ts"})
    invalid = pc.is_valid(table.column("reason"))
    quarantined = table.filter(invalid).select(list(QUARANTINE_COLUMNS))
    if len(quarantined):
        write_quarantine_batch(settings, quarantined, batch_id)
    valid = table.filter(pc.invert(invalid))
    clock.lap("parse")
    # The state first: it knows which ids were seen before, and records them, so a
    # replayed batch writes the lake just as its first attempt did.
    result = store.apply_batch(batch_id, valid.select(list(EVENT_COLUMNS)))
    clock.lap("state")
    if len(valid):
        write_lake_batch(settings, lake_rows(valid, result.duplicate_ids), batch_id)
    clock.lap("lake")
    result.stage_seconds.update(clock.seconds)
    return len(quarantined), result


class _Stages:
    """Wall time per stage of one micro-batch, for its log line."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = now - self._t
        self._t = now


def _trigger(settings: Settings, until_idle: bool) -> dict[str, Any]:
    return {"availableNow": True} if until_idle else {"processingTime": settings.trigger_interval}


class StreamJob:
    """The running speed layer: one query, its store, its inbox, its snapshot schedule.

    Two threads: Spark's calls ``_receive`` per micro-batch, which collects the batch's
    Kafka records to the driver as Arrow (one Spark job), puts them in the inbox
    (``streaming.inbox``) and returns, so Spark commits the batch and reads the next
    one; the job's worker thread processes the batches in order (``process_batch``,
    then the sink, the stats, the log line and the snapshot schedule) and empties the
    inbox. Spark is at most two batches ahead. A failure in the worker stops the query
    at its next batch (and ``run`` at once); the batches it had not processed stay in
    the inbox for the restart.
    """

    def __init__(
        self,
        spark: SparkSession,
        settings: Settings,
        store: CustomerStateStore,
        *,
        log: Callable[[str], None] = print,
        on_batch: Callable[[BatchResult], None] | None = None,
        sink: Sink | None = None,
    ) -> None:
        self.spark = spark
        self.settings = settings
        self.store = store
        self.log = log
        self.on_batch = on_batch
        self.sink = sink
        self.stats = RunStats()
        self.inbox = Inbox(settings.state_dir / "inbox")
        self._published_at = time.monotonic()
        self._unpublished = False
        self._queue: queue.Queue[tuple[int, pa.Table, float] | None] = queue.Queue(maxsize=1)
        self._failure: BaseException | None = None
        self._worker: threading.Thread | None = None

    # --- Spark's thread ------------------------------------------------------------------

    def _receive(self, batch: DataFrame, batch_id: int) -> None:
        """foreachBatch: the batch's records into the inbox, then hand it to the worker."""
        self._raise_failure()
        t0 = time.perf_counter()
        records = batch.select(*KAFKA_COLUMNS).toArrow()
        self.inbox.put(batch_id, records)  # kept for a restart; the worker gets them here
        self._queue.put((batch_id, records, time.perf_counter() - t0))  # waits while one is queued

    # --- the worker ----------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self._failure is None:  # after a failure, later batches stay in the inbox
                    self._process(*item)
            except BaseException as exc:  # surfaced on Spark's thread and by ``run``
                self._failure = exc
            finally:
                self._queue.task_done()

    def failed(self) -> bool:
        """True once the worker failed (``drain`` raises its error)."""
        return self._failure is not None

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise PulseError(f"the stream's processing failed: {self._failure}") from (
                self._failure
            )

    def drain(self) -> None:
        """Wait until every handed-over batch is processed; raise the worker's failure."""
        self._queue.join()
        self._raise_failure()

    def close(self) -> None:
        """Stop the worker (after the batches handed to it)."""
        if self._worker is not None and self._worker.is_alive():
            self._queue.put(None)
            self._worker.join()
        self._worker = None

    def _process(self, batch_id: int, records: pa.Table, read_seconds: float) -> None:
        """One batch of the inbox: process it, account for it, then drop it from the inbox."""
        if correct_from_batch(self.settings, self.store, self.log):
            self._unpublished = True  # every customer may have moved: republish them all
            self.publish()
        t0 = time.perf_counter()
        quarantined, result = process_batch(
            self.settings, self.store, self.spark, records, batch_id
        )
        self.inbox.done(batch_id)
        result.stage_seconds["read"] = read_seconds
        s = self.stats
        s.batches += 1
        s.input_rows += result.events + quarantined
        s.quarantined += quarantined
        s.counted += result.counted
        s.duplicates += result.duplicates
        s.late_dropped += result.late
        if self.on_batch is not None:
            self.on_batch(result)
        if self.sink is not None:
            self.sink.batch(self.store, result)
        self._unpublished |= result.applied and result.counted > 0
        self.log(
            f"batch {batch_id}: {result.events + quarantined} records, "
            f"{result.counted} counted, {result.duplicates} duplicate, {result.late} late, "
            f"{quarantined} quarantined, {result.touched} customers updated, "
            f"{(time.perf_counter() - t0) * 1000:.0f} ms ("
            + ", ".join(f"{k} {v * 1000:.0f}" for k, v in result.stage_seconds.items())
            + " ms; read overlaps the previous batch)"
            + ("" if result.applied else " (replayed: already in the state)")
        )
        if self._snapshot_due():
            self.publish()

    def _snapshot_due(self) -> bool:
        elapsed = time.monotonic() - self._published_at
        return self._unpublished and elapsed >= self.settings.snapshot_interval_seconds

    def publish(self) -> None:
        """Publish the full feature snapshot now (a no-op when nothing changed)."""
        if not self._unpublished:
            return
        t0 = time.perf_counter()
        path = publish_snapshot(self.settings, self.store, self.sink)
        self._unpublished = False
        self._published_at = time.monotonic()
        if path is not None:
            self.stats.publishes += 1
            self.log(
                f"snapshot {path.name}: {self.store.customer_count():,} customers as of "
                f"{self.store.clock()}, {time.perf_counter() - t0:.1f} s"
            )

    def recover(self) -> int:
        """Process the batches a previous run left in the inbox; returns how many."""
        pending = self.inbox.pending()
        for batch_id in pending:
            self._process(batch_id, self.inbox.get(batch_id), 0.0)
        if pending:
            self.log(f"recovered {len(pending)} batch(es) the last run received, not processed")
        return len(pending)

    def start(self, raw: DataFrame, *, until_idle: bool) -> StreamingQuery:
        """Start the query on ``raw`` (Kafka-shaped rows: a Kafka, file or memory stream).

        First the batches left in the inbox by a stopped run; then the store must have
        every batch the checkpoint has committed. ``close`` stops the worker.
        """
        if self.sink is not None:
            self.sink.catch_up(self.store)
        self.recover()
        check_store_matches_checkpoint(self.settings, self.store)
        self._worker = threading.Thread(target=self._work, name="pulse-stream-batches", daemon=True)
        self._worker.start()
        return (
            raw.writeStream.queryName(QUERY_NAME)
            .foreachBatch(self._receive)
            .option("checkpointLocation", spark_path(self.settings.checkpoint_dir / "stream"))
            .trigger(**_trigger(self.settings, until_idle))
            .start()
        )


def kafka_lag(progress: dict[str, Any]) -> int | None:
    """Records between the batch's end offsets and the latest offsets in Kafka."""
    try:
        source = progress["sources"][0]
        end, latest = json.loads(source["endOffset"]), json.loads(source["latestOffset"])
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    if not isinstance(latest, dict) or not isinstance(end, dict):
        return None  # e.g. a restarted query's first batch has no latestOffset yet
    return lag(latest, end)


def monitor(
    queries: list[StreamingQuery],
    log: Callable[[str], None] = print,
    poll_seconds: float = 0.2,
    stop_when: Callable[[], bool] | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Wait until every query stops (or ``stop_when``); log Kafka lag per micro-batch,
    and hand each new progress report to ``on_progress``.

    A failed query stops the others and raises PulseError with its one-line cause.
    """
    seen: dict[str, int] = {}
    try:
        while True:
            for q in queries:
                for p in q.recentProgress:
                    if p["batchId"] <= seen.get(q.name, -1):
                        continue
                    seen[q.name] = p["batchId"]
                    if on_progress is not None:
                        on_progress(p)
                    lag = kafka_lag(p)
                    if lag:
                        log(f"{q.name} batch {p['batchId']}: Kafka lag {lag:,} records")
            failed = [q for q in queries if q.exception() is not None]
            if failed:
                text = str(failed[0].exception())
                msg = text.strip().splitlines()[0][:300]
                if "KAFKA_DATA_LOSS" in text or "data may have been lost" in text.lower():
                    msg = (
                        "Kafka no longer holds records the stream has not read (retention "
                        "deleted them, or the topic was recreated); set "
                        "PULSE_FAIL_ON_DATA_LOSS=false to skip them and go on. Spark said: " + msg
                    )
                raise PulseError(f"stream query {failed[0].name} failed: {msg}")
            if not any(q.isActive for q in queries) or (stop_when and stop_when()):
                return
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
    log: Callable[[str], None] = print,
    sink: Sink | None = None,
    on_batch: Callable[[BatchResult], None] | None = None,
    seed: bool = False,
    raw: DataFrame | None = None,
) -> RunStats:
    """Run the job on the topic (or ``raw``); with ``until_idle`` stop once caught up.

    ``seed``: on the first start, build the state from the lake first, after checking
    that the topic starts after the lake ends; on a restart (the state exists) nothing:
    the lake then holds what the stream wrote, and the same command line resumes.
    ``sink`` gets each batch and snapshot (``streaming.output.Sink``). A clean stop (the
    end of ``until_idle``, or SIGINT, which pyspark turns into KeyboardInterrupt)
    processes the batches already handed over, publishes a final snapshot if the state
    moved since the last one, and then re-raises the interrupt; a failed run publishes
    nothing.
    """
    store = open_store(settings)
    try:
        if seed and store.last_batch is None:  # a restart resumes its own state
            if raw is None:
                check_topic_after_lake(settings)
            seeded = seed_from_lake(spark, settings, store, sink)
            if seeded is not None:
                log(f"stream state seeded from the lake: {seeded:,} customers")
        job = StreamJob(spark, settings, store, log=log, on_batch=on_batch, sink=sink)
        query = job.start(
            raw if raw is not None else kafka_source(spark, settings), until_idle=until_idle
        )
        interrupted = False
        try:
            try:
                monitor(
                    [query], log=log, stop_when=job.failed,
                    on_progress=None if sink is None else sink.progress,
                )  # fmt: skip
            except KeyboardInterrupt:
                # Ctrl-C is how a user stops a stream that runs forever: the query is
                # stopped (monitor's finally), and what it handed over is still worth
                # publishing, or the live features would lag the lake until a restart.
                interrupted = True
            except Py4JError as exc:
                # Ctrl-C during a call into the JVM: pyspark's handler raises
                # KeyboardInterrupt inside py4j, whose attempt to cancel the call can
                # fail with this instead (seen once in CI: exit 1 and a traceback)
                if not isinstance(exc.__context__, KeyboardInterrupt):
                    raise
                interrupted = True
            except PulseError:
                # The worker's failure also fails the query when Spark hands over the next
                # batch before monitor sees it (``_receive`` raises it there): report the
                # worker's error, which is the cause, not the query's first line.
                if job.failed():
                    job.drain()
                raise
            job.drain()
        finally:
            job.close()
        job.publish()
        s = job.stats
        log(
            f"stream stopped: {s.input_rows} records in {s.batches} batches, {s.counted} counted, "
            f"{s.duplicates} duplicates, {s.quarantined} quarantined, {s.late_dropped} beyond "
            "the allowed lateness (kept in the lake only)"
        )
        if interrupted:
            raise KeyboardInterrupt
        return s
    finally:
        store.close()


def check_topic_after_lake(settings: Settings) -> None:
    """Refuse to seed when the topic holds events of a day the lake already has.

    Each partition is in event-time order (the replay producer keys by customer and
    sends in time order), so its first record is its earliest event.
    """
    from runtime.kafka_admin import first_event_times
    from storage.lake import lake_exists, last_event_date

    if not lake_exists(settings):
        return
    lake_end = last_event_date(settings)
    firsts = first_event_times(settings)
    overlap = {p: t for p, t in firsts.items() if t.date() <= lake_end}
    if overlap:
        part, first = min(overlap.items(), key=lambda kv: kv[1])
        raise PulseError(
            f"--seed-from-lake: topic {settings.topic_transactions!r} partition {part} starts "
            f"at {first.date()}, on or before the lake's last day {lake_end}; those events "
            "would count twice. Produce only the days after the lake, or stream without seeding"
        )

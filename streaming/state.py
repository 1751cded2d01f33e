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

import json
from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from features.customer import HISTORY_DAYS, features_table
from runtime.errors import PulseError
from runtime.settings import Settings
from storage import snapshots
from storage.customer_state import BatchResult, CustomerStateStore, day_number
from storage.state_table import merge_state, state_table, store_tables

SEED_BATCH = -1  # the seeded state counts as batch -1, so Spark's batch 0 folds into it


def open_store(settings: Settings) -> CustomerStateStore:
    """The stream's keyed per-customer state (``settings.state_dir``)."""
    return CustomerStateStore(settings.state_dir / "customers", settings.allowed_lateness_days)


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
        customers, days = store_tables(events, as_of)
    finally:
        events.unpersist()
    clock_us = int(pa.scalar(as_of, pa.timestamp("us")).value)
    seeded = store.load(customers, days, clock_us, SEED_BATCH)
    publish_snapshot(settings, store, sink)
    return seeded


CORRECTION_MARKER = "batch_state.json"  # in settings.state_dir: the batch state applied


def correct_from_batch(
    settings: Settings, store: CustomerStateStore, log: Callable[[str], None] = print
) -> bool:
    """Take the batch layer's state when a retrain promoted a new one (the lambda correction).

    The retrain's state (``batch.state``) counts every event before its cutoff that the
    lake holds, late and re-sent ones included; it supersedes the store's up to the
    cutoff, and the store's days on or after it are added on top
    (``storage.state_table.merge_state``). The store keeps every day since
    ``clock - HISTORY_DAYS``, so a cutoff older than that cannot be merged, and one
    past the stream's clock would count the same days twice: both are skipped, with a
    line. Returns True when the state changed (the caller republishes every customer).
    """
    from storage import registry

    try:
        version = registry.current_version(settings, "state")
    except Exception as exc:  # a half-written registry must not stop the stream
        log(f"batch state: cannot resolve CURRENT: {exc}")
        return False
    marker = settings.state_dir / CORRECTION_MARKER
    applied = json.loads(marker.read_text()).get("version") if marker.is_file() else None
    clock = store.clock()
    if version is None or version == applied or clock is None:
        return False
    meta = registry.read_meta(settings, "state", version)
    cutoff = date.fromisoformat(meta["cutoff_exclusive"])
    clock_day = clock.date()
    if cutoff <= clock_day - timedelta(days=HISTORY_DAYS) or cutoff > clock_day + timedelta(days=1):
        log(f"batch state {version} (before {cutoff}) not taken: the stream clock is {clock_day}")
        changed = False
    else:
        folder = registry.output_path(settings, "state", version)
        batch = tuple(pq.read_table(folder / f) for f in ("customers.parquet", "days.parquet"))
        merged = merge_state(batch, store.read(), day_number(cutoff))  # type: ignore[arg-type]
        clock_us = int(pa.scalar(clock, pa.timestamp("us", tz="UTC")).value)
        last = store.last_batch if store.last_batch is not None else SEED_BATCH
        store.load(*merged, clock_us=clock_us, batch_id=last, keep_seen=True)
        log(
            f"batch state {version} taken: the lake's state before {cutoff} replaces the "
            f"stream's, {store.customer_count():,} customers"
        )
        changed = True
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"version": version}))
    return changed


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

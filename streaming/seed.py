"""The stream's keyed store at start and on a retrain: opened, seeded, corrected, checked.

``open_store`` opens the per-customer store (``storage.columnar_store``) under
``settings.state_dir``. ``seed_from_lake`` builds it from a backfilled lake with the
batch code (``customer_state(daily_activity(lake))``), so the stream reads only what
came after. ``correct_from_batch`` takes the state each retrain writes
(``batch.correction``: the lambda correction). ``check_store_matches_checkpoint``
refuses a store and a Kafka checkpoint from different runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date, timedelta

import pyarrow as pa
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from features.customer import HISTORY_DAYS
from runtime.errors import PulseError
from runtime.settings import Settings
from storage.columnar_store import CustomerStateStore
from storage.objects import read_parquet_file, write_atomically
from storage.state_rows import merge_state, store_tables
from storage.stream_clock import day_number
from streaming.output import Sink, publish_snapshot

SEED_BATCH = -1  # the seeded state counts as batch -1, so Spark's batch 0 folds into it


def open_store(settings: Settings) -> CustomerStateStore:
    """The stream's keyed per-customer state (``settings.state_dir``)."""
    return CustomerStateStore(settings.state_dir / "customers", settings.allowed_lateness_days)


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

    The retrain's state (``batch.correction``) counts every event before its cutoff that the
    lake holds, late and re-sent ones included; it supersedes the store's up to the
    cutoff, and the store's days on or after it are added on top
    (``storage.state_rows.merge_state``). The store keeps every day since
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
        batch = tuple(read_parquet_file(folder / f) for f in ("customers.parquet", "days.parquet"))
        merged = merge_state(batch, store.read(), day_number(cutoff))  # type: ignore[arg-type]
        clock_us = int(pa.scalar(clock, pa.timestamp("us", tz="UTC")).value)
        last = store.last_batch if store.last_batch is not None else SEED_BATCH
        store.load(*merged, clock_us=clock_us, batch_id=last, keep_seen=True)
        log(
            f"batch state {version} taken: the lake's state before {cutoff} replaces the "
            f"stream's, {store.customer_count():,} customers"
        )
        changed = True
    write_atomically(marker, json.dumps({"version": version}).encode())
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

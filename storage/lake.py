"""The lake: the master dataset of valid events, one Delta table, one write protocol.

``lake/transactions`` is a Delta Lake table partitioned by ``event_date`` (the UTC day
of ``event_time``). Its ``_delta_log/`` is the only truth about which Parquet files
are live: a reader never lists directories and never deduplicates. Both writers, the
stream (one call per micro-batch, ``write_lake_batch``) and ``pulse ingest`` (one call
per chunk of a file), go through ``write_events``:

1. read the table's latest version (one Delta log version, a snapshot);
2. drop the rows whose ``event_id`` that version already holds, looking only at the
   event dates the rows touch (an event's date follows from its id's row, so the same
   id always lands in the same partition), and repeated ids within the rows;
3. write what is left as one Parquet file per event date, named after the writer, the
   batch id and a digest of its ids, and
4. commit those files to the Delta log as exactly the next version (delta-rs, no
   retries inside delta-rs). The log's next entry is created with the store's own
   put-if-absent (a hard link on a local disk, ``If-None-Match`` on S3), so of two
   writers that read the same version one commits and the other's commit fails; the
   loser starts again at step 1 on the new version, where it finds the winner's ids.
   No lock, nothing shared but the log: the writers may run on different machines.
   A crash before the commit leaves no visible change (an unreferenced file, which a
   retry overwrites by name or ``vacuum`` removes); a replay after it finds every id
   present and writes nothing.

So each event is in the lake exactly once, whatever the interleaving of the stream,
re-sends older than the stream's dedup window, overlapping ingests and crashes.

Compaction (``compact``; ``pulse compact``, and automatically at the end of an
ingest) rewrites each event date's small files into one, and commits the new file and the
removal of the old ones together, by the same rule (a compaction that loses a race
to a writer reads the new version and rewrites again). A reader holds a
snapshot (one log version): the files it lists stay on disk until ``vacuum`` deletes
files removed longer than its retention ago, so a read running during a compaction
sees the old set or the new one, never a mix.

Reads (``read_lake``) ask the log for the live files of the wanted event dates
(pruned before Spark sees a path) and hand exactly those files to Spark. ``version``
reads an earlier state of the table (time travel).

Why delta-rs for the writes and not Spark's Delta: the stream's batch is already an
Arrow table on the driver, so delta-rs commits it without another Spark job (about
0.1 s a micro-batch of ~500 events, over 1,000 batches on a busy 2-core machine), and
ingest needs no Spark at all. The format is the standard Delta protocol: Spark with
delta-spark (``io.delta:delta-spark_4.2_2.13`` 4.4.0, on Maven Central) reads the same
table, time travel included. Until the Spark session loads that jar, ``read_lake``
asks delta-rs for the file list instead.

A lake written before this protocol (``event_date=*`` folders of plain Parquet, no
``_delta_log``) is read as it is, and adopted into a Delta table by the first write;
``compact`` then keeps one row per event id in each date it rewrites.

Time semantics: ``cutoff`` is a UTC date; only events with ``event_time < cutoff`` are
read (nothing at or after it). Features of that window are computed as of
``features.time.as_of_for(cutoff)``, the last instant before the cutoff.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from upath import UPath

from features.time import cutoff_ts
from runtime.errors import PulseError
from runtime.settings import Settings
from schemas.tables import LAKE_PARTITION
from schemas.transaction import FIELD_NAMES, FIELDS
from storage.objects import arrow_fs, delta_location, is_remote, spark_path

_KEYS = ("event_id", "event_time")
#: The Arrow type of each kind of contract field (``schemas.transaction.FieldSpec.kind``).
ARROW_TYPES = {
    "string": pa.string(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "int": pa.int32(),
    "double": pa.float64(),
}
#: The contract columns as stored in the lake's Parquet files (derived from ``FIELDS``).
#: Only the two columns the protocol relies on are declared non-null: ``produced_at``
#: is null for ingested events (no producer), as in the adapters' schema.
EVENT_ARROW_SCHEMA = pa.schema(
    [pa.field(f.name, ARROW_TYPES[f.kind], nullable=f.name not in _KEYS) for f in FIELDS]
)
#: The Delta table's schema: the contract columns + the ``event_date`` partition.
LAKE_ARROW_SCHEMA = EVENT_ARROW_SCHEMA.append(pa.field(LAKE_PARTITION, pa.date32()))
STREAM_WRITER = "stream"
#: Compacted files are at most this many rows (H&M: ~45k events a day, one file a day).
COMPACT_MAX_ROWS = 5_000_000
#: Files removed by a compaction stay on disk this long for readers of older snapshots.
VACUUM_RETENTION_HOURS = 24


# -- the table ------------------------------------------------------------------------


def _is_delta(settings: Settings) -> bool:
    return (settings.lake_dir / "_delta_log").is_dir()


def _legacy_parts(settings: Settings) -> list[Path]:
    if is_remote(settings.lake_dir):  # pre-protocol lakes were local only
        return []
    lake = Path(str(settings.lake_dir))
    return sorted(p for p in lake.glob(f"{LAKE_PARTITION}=*") if p.is_dir())


def _table(settings: Settings, version: int | None = None) -> Any:
    from deltalake import DeltaTable

    uri, options = delta_location(settings.lake_dir)
    return DeltaTable(uri, version=version, storage_options=options)


def _local(uri: str) -> str:
    return uri.removeprefix("file://")


def live_files(
    settings: Settings, cutoff: date | None = None, version: int | None = None
) -> list[str]:
    """The table's live Parquet files (before ``cutoff`` when given): local paths, or
    ``s3://`` URIs when the lake is in an object store (``read_parquet`` reads both).

    The partition filter is applied to the log, so files of later dates are never listed.
    """
    if not _is_delta(settings):
        files = [str(f) for p in _legacy_parts(settings) for f in sorted(p.glob("*.parquet"))]
        if cutoff is not None:
            files = [f for f in files if _file_date(f) < cutoff]
        return files
    filters = [(LAKE_PARTITION, "<", cutoff.isoformat())] if cutoff is not None else None
    return [_local(u) for u in _table(settings, version).file_uris(file_pruning_predicate=filters)]


def _file_date(path: str) -> date:
    return date.fromisoformat(path.rsplit("/", 2)[-2].split("=", 1)[1])


def lake_exists(settings: Settings) -> bool:
    """True when the lake holds at least one file."""
    return bool(live_files(settings))


def read_lake(
    spark: SparkSession,
    settings: Settings,
    cutoff: date | None = None,
    version: int | None = None,
) -> DataFrame:
    """The lake's events (contract columns + event_date): each event once, as stored.

    Reads exactly the live files of one table version (the latest, or ``version``),
    pruned to ``event_date < cutoff`` from the log. No ``dropDuplicates``: the write
    protocol keeps one row per ``event_id`` (module docstring).
    """
    from schemas.tables import lake_schema

    files = live_files(settings, cutoff, version)
    if not files:
        if not live_files(settings, None, version):
            raise PulseError(f"the lake at {settings.lake_dir} is empty: run `pulse ingest SOURCE`")
        return spark.createDataFrame([], lake_schema())
    df = _read_files(spark, settings, files)
    if cutoff is not None:
        df = df.where(F.col("event_time") < F.lit(cutoff_ts(cutoff)))
    return df.select(*FIELD_NAMES, LAKE_PARTITION)


# Spark lists more than this many paths with a Spark job of one task per path (734
# tasks for two years): 6-15 s on 2 cores, against under 1 s listed on the driver.
_LISTING_THRESHOLD = "spark.sql.sources.parallelPartitionDiscovery.threshold"


def _read_files(spark: SparkSession, settings: Settings, files: list[str]) -> DataFrame:
    """Spark DataFrame over exactly ``files`` (``event_date`` from their folder names).

    The paths are known already, so Spark is made to stat them on the driver rather
    than start a listing job; the setting is restored once the file index is built.
    """
    from schemas.tables import lake_schema

    previous = spark.conf.get(_LISTING_THRESHOLD)
    spark.conf.set(_LISTING_THRESHOLD, str(max(int(previous or 32), len(files) + 1)))
    try:
        base = spark_path(settings.lake_dir)
        reader = spark.read.schema(lake_schema()).option("basePath", base)
        return reader.parquet(*(spark_path(f) for f in files))
    finally:
        spark.conf.set(_LISTING_THRESHOLD, str(previous))


def event_dates(settings: Settings) -> list[date]:
    """The event dates the lake holds, sorted; from the log (no data scan)."""
    return sorted({_file_date(f) for f in live_files(settings)})


def last_event_date(settings: Settings) -> date:
    """The latest ``event_date`` of the lake (the default cutoff is the day after)."""
    days = event_dates(settings)
    if not days:
        raise PulseError(f"the lake at {settings.lake_dir} is empty: run `pulse ingest SOURCE`")
    return days[-1]


# -- the write protocol ---------------------------------------------------------------


T = TypeVar("T")
COMMIT_ATTEMPTS = 100  # a writer that loses this many races in a row gives up (an error)


def optimistically(settings: Settings, attempt: Callable[[Any], T]) -> T:
    """``attempt(table)`` on the latest version until its commit lands (module docstring).

    ``attempt`` reads what it needs from ``table``, writes its files and commits exactly
    the next version; when another writer committed that version first, delta-rs raises
    ``CommitFailedError`` and ``attempt`` runs again on a fresh read, after a short
    random back-off (so two writers do not keep colliding in step).
    """
    from deltalake.exceptions import CommitFailedError

    for n in range(COMMIT_ATTEMPTS):
        try:
            return attempt(_open_for_write(settings))
        except CommitFailedError:
            time.sleep(random.uniform(0, 0.01 * 2 ** min(n, 6)))
    raise PulseError(
        f"the lake at {settings.lake_dir}: {COMMIT_ATTEMPTS} commits in a row lost to other "
        "writers; is a writer stuck in a loop?"
    )


def _open_for_write(settings: Settings) -> Any:
    """The table, created empty (or adopting a pre-protocol lake's files) if needed."""
    from deltalake import DeltaTable, Schema, convert_to_deltalake

    lake, options = delta_location(settings.lake_dir)
    if not _is_delta(settings):
        if _legacy_parts(settings):
            partition = Schema.from_arrow(pa.schema([pa.field(LAKE_PARTITION, pa.date32())]))
            convert_to_deltalake(lake, partition_by=partition, partition_strategy="hive")
        else:
            DeltaTable.create(
                lake,
                schema=LAKE_ARROW_SCHEMA,
                partition_by=[LAKE_PARTITION],
                mode="ignore",
                storage_options=options,
            )
    return DeltaTable(lake, storage_options=options)


def _ids_in(settings: Settings, table: Any, days: list[str]) -> pa.Array:
    """The event ids the table holds on ``days`` (only those partitions are read)."""
    files = [
        _local(u) for u in table.file_uris(file_pruning_predicate=[(LAKE_PARTITION, "in", days)])
    ]
    if not files:
        return pa.array([], pa.string())
    return read_parquet(settings, files, ["event_id"]).column("event_id").combine_chunks()


def _uri(settings: Settings, relative: str) -> str:
    """A file of the lake by its path relative to the table, as ``live_files`` names it."""
    return str(settings.lake_dir / relative)


def read_parquet(settings: Settings, files: list[str], columns: list[str] | None) -> pa.Table:
    """``columns`` (None: all) of the lake's Parquet ``files`` (local paths or ``s3://``
    URIs)."""
    fs, _ = arrow_fs(settings.lake_dir)  # the store's endpoint and credentials
    paths = [f.split("://", 1)[1] if "://" in f else f for f in files]
    return pq.ParquetDataset(paths, filesystem=fs).read(columns=columns)


def new_events(rows: pa.Table, known_ids: pa.Array) -> pa.Table:
    """``rows`` less the ids in ``known_ids`` and less repeats within ``rows`` (first kept)."""
    ids = rows.column("event_id").combine_chunks()
    # index_in gives the position of an id's first copy; a row is kept where it is that.
    positions = pa.array(np.arange(len(rows), dtype=np.int32))
    first = pc.equal(pc.index_in(ids, value_set=ids), positions)
    unseen = pc.invert(pc.is_in(ids, value_set=known_ids))
    return rows.filter(pc.and_(first, unseen))


@dataclass(frozen=True)
class _Written:
    """A Parquet file written into the lake (not yet committed)."""

    path: str  # relative to the table: event_date=<day>/<name>
    size: int
    mtime_ms: int


def _write_file(settings: Settings, day: str, name: str, rows: pa.Table) -> _Written:
    """Write ``rows`` whole as ``event_date=<day>/<name>`` in the lake: on a disk aside
    first, then renamed; in an object store as one upload, visible only once complete."""
    relative = f"{LAKE_PARTITION}={day}/{name}"
    fs, root = arrow_fs(settings.lake_dir)
    final = f"{root}/{relative}"
    if is_remote(settings.lake_dir):
        pq.write_table(rows, final, filesystem=fs)
    else:
        Path(final).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(final).with_name(f".{name}.{uuid.uuid4().hex[:8]}.tmp")
        pq.write_table(rows, tmp)
        tmp.rename(final)
    info = fs.get_file_info(final)
    return _Written(relative, int(info.size), int(info.mtime_ns // 1_000_000))


def _size(settings: Settings, relative: str) -> int:
    fs, root = arrow_fs(settings.lake_dir)
    return int(fs.get_file_info(f"{root}/{relative}").size)


def _add_action(file: _Written, day: str, rows: int, data_change: bool) -> Any:
    from deltalake.transaction import AddAction

    return AddAction(
        path=file.path,
        size=file.size,
        partition_values={LAKE_PARTITION: day},
        modification_time=file.mtime_ms,
        data_change=data_change,
        stats=json.dumps({"numRecords": rows}),
    )


def _commit(table: Any, actions: list[Any], metadata: dict[str, str]) -> None:
    from deltalake.transaction import CommitProperties

    table.create_write_transaction(
        actions,
        mode="append",
        schema=LAKE_ARROW_SCHEMA,
        partition_by=[LAKE_PARTITION],
        # Exactly the next version or an error: a commit must never land on a version
        # its writer did not read (delta-rs would otherwise rebase a blind append).
        commit_properties=CommitProperties(custom_metadata=metadata, max_commit_retries=0),
    )


def write_events(settings: Settings, rows: pa.Table, writer: str, batch_id: int) -> int:
    """Add the events of ``rows`` not yet in the lake, in one commit; returns how many.

    ``rows``: contract columns (cast to ``EVENT_ARROW_SCHEMA``). ``writer`` and
    ``batch_id`` name the files and tag the commit; calling again with the same rows
    (a replay) adds nothing. Reads only the partitions of the rows' event dates.
    """
    rows = rows.select(list(FIELD_NAMES)).cast(EVENT_ARROW_SCHEMA)
    if not len(rows):
        return 0
    dates = pc.cast(rows.column("event_time"), pa.date32())
    days = sorted(d.isoformat() for d in pc.unique(dates).to_pylist())

    def attempt(table: Any) -> int:
        fresh = new_events(rows, _ids_in(settings, table, days))
        if not len(fresh):
            return 0
        fresh_dates = pc.cast(fresh.column("event_time"), pa.date32())
        actions = []
        for day in days:
            rows_of_day = fresh.filter(pc.equal(fresh_dates, pa.scalar(date.fromisoformat(day))))
            if not len(rows_of_day):
                continue
            digest = _digest(rows_of_day.column("event_id"))
            name = f"part-{writer}-b{batch_id:012d}-{digest}.parquet"
            written = _write_file(settings, day, name, rows_of_day)
            actions.append(_add_action(written, day, len(rows_of_day), data_change=True))
        _commit(table, actions, {"pulse.writer": writer, "pulse.batch_id": str(batch_id)})
        return len(fresh)

    return optimistically(settings, attempt)


def _digest(ids: pa.ChunkedArray | pa.Array) -> str:
    """sha1 of the ids joined by NUL (joined by Arrow: no Python string per id)."""
    flat = pc.cast(ids, pa.string())
    flat = flat.combine_chunks() if isinstance(flat, pa.ChunkedArray) else flat
    one_list = pa.ListArray.from_arrays(pa.array([0, len(flat)], pa.int32()), flat)
    joined = pc.binary_join(one_list, "\0")[0].as_buffer()
    return hashlib.sha1(b"" if joined is None else joined).hexdigest()[:12]


# -- the stream's writer --------------------------------------------------------------


def lake_rows(valid: pa.Table, seen_before: tuple[str, ...] = ()) -> pa.Table:
    """The stream's valid events -> lake rows (contract columns), one copy per event id.

    ``seen_before``: ids the stream's state already counted (re-sends within its
    window), left out early; ``write_events`` drops the rest of the repeats.
    """
    return new_events(valid.select(list(FIELD_NAMES)), pa.array(seen_before, pa.string()))


def write_lake_batch(settings: Settings, rows: pa.Table, batch_id: int) -> int:
    """One micro-batch's lake rows through the write protocol; returns events added.

    Idempotent per batch id: a batch Spark replays after a crash adds nothing twice.
    """
    return write_events(settings, rows, STREAM_WRITER, batch_id)


# -- compaction and vacuum ------------------------------------------------------------


@dataclass
class CompactResult:
    """What one compaction did."""

    dates: int  # event dates rewritten
    files_before: int  # live files in those dates before
    files_after: int  # live files in those dates after
    rows: int  # rows in the rewritten dates (after)
    dropped: int  # repeated event ids removed (only a pre-protocol lake has any)


def _files_by_day(table: Any) -> dict[str, list[tuple[str, int]]]:
    """Live files per event date: (path relative to the table, numRecords or -1)."""
    adds = pa.table(table.get_add_actions(flatten=True)).to_pydict()
    out: dict[str, list[tuple[str, int]]] = {}
    counts = adds.get("num_records") or [-1] * len(adds["path"])
    for path, day, n in zip(adds["path"], adds[f"partition.{LAKE_PARTITION}"], counts, strict=True):
        key = day.isoformat() if isinstance(day, date) else str(day)
        out.setdefault(key, []).append((path, -1 if n is None else int(n)))
    return out


def compact(
    settings: Settings,
    days: Iterable[str] | None = None,
    min_files: int = 2,
    dates_per_commit: int = 30,
    log: Any = None,
) -> CompactResult:
    """Rewrite each event date that has ``min_files`` or more live files into one file.

    ``days``: ISO dates to consider (default: all). Dates are committed in groups of
    ``dates_per_commit``, each its own commit (so a group that loses a race to the stream
    rewrites only that group). Rows are sorted by event time; a repeated event id (only
    a pre-protocol lake has any) is kept once. Old files stay until ``vacuum``.
    """
    from deltalake.transaction import RemoveAction

    result = CompactResult(0, 0, 0, 0, 0)
    if not _is_delta(settings) and not _legacy_parts(settings):
        return result
    by_day = _files_by_day(_open_for_write(settings))
    wanted = set(days) if days is not None else set(by_day)
    todo = sorted(d for d, files in by_day.items() if d in wanted and len(files) >= min_files)

    def rewrite(group: list[str], table: Any) -> CompactResult:
        """One group's rewrite on ``table``'s version (again, if a writer committed first)."""
        done = CompactResult(0, 0, 0, 0, 0)
        current = _files_by_day(table)  # this version's files: a writer may have added
        actions: list[Any] = []
        now_ms = int(time.time() * 1000)
        for day in group:
            files = current.get(day, [])
            if len(files) < min_files:
                continue
            rows = read_parquet(settings, [_uri(settings, p) for p, _ in files], list(FIELD_NAMES))
            rows = rows.cast(EVENT_ARROW_SCHEMA)
            unique = new_events(rows, pa.array([], pa.string()))
            unique = unique.sort_by([("event_time", "ascending"), ("event_id", "ascending")])
            changed = len(unique) != len(rows)
            version = table.version() + 1
            for i, offset in enumerate(range(0, len(unique), COMPACT_MAX_ROWS)):
                chunk = unique.slice(offset, COMPACT_MAX_ROWS)
                name = f"part-compact-v{version:08d}-{i:03d}.parquet"
                written = _write_file(settings, day, name, chunk)
                actions.append(_add_action(written, day, len(chunk), changed))
                done.files_after += 1
            for rel, _ in files:
                actions.append(
                    RemoveAction(
                        path=rel,
                        deletion_timestamp=now_ms,
                        data_change=changed,
                        partition_values={LAKE_PARTITION: day},
                        size=_size(settings, rel),
                    )
                )
            done.dates += 1
            done.files_before += len(files)
            done.rows += len(unique)
            done.dropped += len(rows) - len(unique)
        if actions:
            _commit(table, actions, {"pulse.writer": "compact"})
        return done

    for start in range(0, len(todo), dates_per_commit):
        group = todo[start : start + dates_per_commit]
        done = optimistically(settings, functools.partial(rewrite, group))
        result.dates += done.dates
        result.files_before += done.files_before
        result.files_after += done.files_after
        result.rows += done.rows
        result.dropped += done.dropped
        if log is not None:
            log(f"compacted {min(start + dates_per_commit, len(todo))}/{len(todo)} dates")
    return result


def vacuum(settings: Settings, retention_hours: int = VACUUM_RETENTION_HOURS) -> int:
    """Delete files no live snapshot newer than ``retention_hours`` needs; returns count.

    Removes files that compactions removed from the log more than ``retention_hours``
    ago, and files no commit ever referenced (a writer that crashed before its commit)
    once they are older than the retention. A writer's file is unreferenced until its
    commit, and a reader's snapshot may still list removed files: keep the retention
    longer than the longest write and the longest read.
    """
    if not _is_delta(settings):
        return 0
    deleted = _table(settings).vacuum(
        retention_hours=retention_hours,
        dry_run=False,
        enforce_retention_duration=False,
        full=True,
    )
    return len(deleted)


def file_count(settings: Settings) -> int:
    """Live files in the lake (what a full read opens)."""
    return len(live_files(settings))


# -- the customer dimension -----------------------------------------------------------


def customers_dir(settings: Settings) -> UPath:
    """The customer dimension table (Kaggle customers.csv columns) written by ingest."""
    return settings.data_root / "lake" / "customers"


#: The article dimension written by ingest (``batch.ingest``), one row per article_id:
#: its name, its category path (outermost first, joined with " > "), brand and list price,
#: each null where the source does not say.
ARTICLE_COLUMNS = {
    "article_id": "string",
    "name": "string",
    "category": "string",
    "brand": "string",
    "price": "double",
}


def articles_dir(settings: Settings) -> UPath:
    """The article dimension table (``ARTICLE_COLUMNS``, Parquet) written by ingest."""
    return settings.data_root / "lake" / "articles"


def read_customers(spark: SparkSession, settings: Settings) -> DataFrame | None:
    """Customer attributes, one row per customer_id, or None when none were ingested."""
    path = customers_dir(settings)
    if not path.is_dir():
        return None
    return spark.read.parquet(spark_path(path)).dropDuplicates(["customer_id"])

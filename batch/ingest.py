"""`pulse ingest SOURCE`: backfill the lake from files, without Kafka.

Reads a source through the shared adapters (same contract, same deterministic event
ids as the producer) and hands its events to the lake's one write protocol
(``storage.lake.write_events``) in chunks of ``CHUNK_ROWS`` (bounded memory): each
chunk is one commit that adds only the events whose event_id the lake does not hold
yet, checked on the event dates the chunk touches. Ingesting the same source twice,
or a file overlapping what the stream already wrote, therefore adds each event once.
The adapters yield in event-time order, so a chunk covers a few consecutive days;
the days two chunks share are compacted at the end (``storage.lake.compact``).
Customer attributes (Kaggle ``customers.csv``) go to ``lake/customers`` when the
source has them.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from runtime.settings import Settings
from schemas.tables import CUSTOMER_COLUMNS as KAGGLE_CUSTOMERS
from schemas.transaction import FIELD_NAMES
from storage.lake import EVENT_ARROW_SCHEMA, compact, customers_dir, write_events
from storage.objects import local_path

# The Kaggle customer columns the models use; postal_code is left out (high-cardinality
# identifier, not a model input).
CUSTOMER_COLUMNS = {c: t for c, t in KAGGLE_CUSTOMERS.items() if c != "postal_code"}
#: Events per lake commit: ~150 MB of Arrow at most, ~3 weeks at H&M density.
CHUNK_ROWS = 1_000_000


@dataclass
class IngestResult:
    """What one ingest did: rows read, new rows appended, customers written."""

    staged: int
    appended: int
    customers: int


def chunks(batches: Iterable[pa.Table], rows: int = CHUNK_ROWS) -> Iterator[pa.Table]:
    """Regroup contract-column Arrow batches into tables of about ``rows`` rows."""
    pending: list[pa.Table] = []
    size = 0
    for table in batches:
        pending.append(table.select(list(FIELD_NAMES)).cast(EVENT_ARROW_SCHEMA))
        size += table.num_rows
        if size >= rows:
            yield pa.concat_tables(pending)
            pending, size = [], 0
    if pending:
        yield pa.concat_tables(pending)


def append_new(
    settings: Settings, batches: Iterable[pa.Table], progress: bool = True
) -> tuple[int, int]:
    """Write the events of ``batches`` not yet in the lake; returns (read, appended).

    One lake commit per chunk (writer ``ingest-<run id>``), then the event dates that
    got more than one file in this run are compacted.
    """
    from tqdm import tqdm

    writer = f"ingest-{uuid.uuid4().hex[:8]}"
    read = appended = 0
    touched: set[str] = set()
    bar = tqdm(desc="ingest", unit=" rows", unit_scale=True, disable=not progress)
    for batch_id, chunk in enumerate(chunks(batches)):
        read += chunk.num_rows
        appended += write_events(settings, chunk, writer, batch_id)
        days = pc.unique(pc.cast(chunk.column("event_time"), pa.date32())).to_pylist()
        touched.update(d.isoformat() for d in days)
        bar.update(chunk.num_rows)
    bar.close()
    if touched:
        compact(settings, touched)
    return read, appended


def ingest_customers(spark: SparkSession, settings: Settings, csv_path: Path) -> int:
    """Merge the customers CSV (Kaggle columns) into ``lake/customers``; returns row count."""
    raw = spark.read.option("header", True).csv(str(csv_path))
    cols = [
        (F.col(c).cast(t) if c in raw.columns else F.lit(None).cast(t)).alias(c)
        for c, t in CUSTOMER_COLUMNS.items()
    ]
    new = raw.select(*cols).where(F.col("customer_id").isNotNull())
    target = local_path(customers_dir(settings), "the customer dimension (customers.csv)")
    if target.is_dir():
        new = new.unionByName(spark.read.parquet(str(target)))
    merged = new.dropDuplicates(["customer_id"]).localCheckpoint()  # target is overwritten
    tmp = target.with_name(f"_tmp-customers-{uuid.uuid4().hex[:6]}")
    merged.coalesce(1).write.parquet(str(tmp))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return merged.count()


def ingest_source(
    spark: SparkSession, settings: Settings, source: object, progress: bool = True
) -> IngestResult:
    """Backfill the lake from an adapter ``Source`` (``iter_batches``, ``customers_path``)."""
    staged, appended = append_new(settings, source.iter_batches(), progress=progress)  # type: ignore[attr-defined]
    customers = 0
    customers_path = getattr(source, "customers_path", None)
    if customers_path is not None:
        customers = ingest_customers(spark, settings, Path(customers_path))
    return IngestResult(staged=staged, appended=appended, customers=customers)

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
source has them, and the source's articles (``Source.articles()``: H&M's articles.csv,
Amazon's metadata, Online Retail's stock codes) to ``lake/articles``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import SparkSession

from runtime.settings import Settings
from schemas.tables import CUSTOMER_COLUMNS as KAGGLE_CUSTOMERS
from schemas.transaction import FIELD_NAMES
from storage.lake import (
    ARTICLE_COLUMNS,
    EVENT_ARROW_SCHEMA,
    articles_dir,
    compact,
    customers_dir,
    write_events,
)
from storage.objects import read_parquet_file, write_parquet

# The Kaggle customer columns the models use; postal_code is left out (high-cardinality
# identifier, not a model input).
CUSTOMER_COLUMNS = {c: t for c, t in KAGGLE_CUSTOMERS.items() if c != "postal_code"}
#: Events per lake commit: ~150 MB of Arrow at most, ~3 weeks at H&M density.
CHUNK_ROWS = 1_000_000


@dataclass
class IngestResult:
    """What one ingest did: rows read, new rows appended, customers and articles written
    (the rows each dimension holds after the merge; 0 when the source has none)."""

    staged: int
    appended: int
    customers: int
    articles: int = 0


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


def ingest_customers(settings: Settings, csv_path: Path) -> int:
    """Merge the customers CSV (Kaggle columns) into ``lake/customers``; returns row count.

    With pyarrow, no Spark: the CSV is typed as ``CUSTOMER_COLUMNS`` (a
    value that is not a number becomes null, as Spark's cast makes it), merged with the
    rows already there (a customer's row from this file wins), and written as one new
    Parquet file, after which the older files are removed. A reader in between sees a
    customer twice, once per file, and keeps one (``storage.lake.read_customers``).
    """
    from pyarrow import csv

    types = {"string": pa.string(), "double": pa.float64()}
    raw = csv.read_csv(
        csv_path,
        convert_options=csv.ConvertOptions(
            column_types={c: pa.string() for c in CUSTOMER_COLUMNS},
            include_columns=list(CUSTOMER_COLUMNS),
            include_missing_columns=True,
            strings_can_be_null=True,
        ),
    )
    new = pa.table({
        c: _lenient_cast(raw.column(c), types[t]) for c, t in CUSTOMER_COLUMNS.items()
    })  # fmt: skip
    new = new.filter(pc.is_valid(new.column("customer_id")))
    target = customers_dir(settings)
    old_files = sorted(target.glob("*.parquet")) if target.is_dir() else []
    if old_files:
        old = [read_parquet_file(f).select(list(CUSTOMER_COLUMNS)) for f in old_files]
        new = pa.concat_tables([new, *(t.cast(new.schema) for t in old)])
    ids = new.column("customer_id").combine_chunks()
    first = pc.equal(pc.index_in(ids, value_set=ids), pa.array(range(len(ids)), pa.int32()))
    merged = new.filter(first).sort_by("customer_id")
    write_parquet(merged, target / f"customers-{uuid.uuid4().hex[:12]}.parquet")
    for f in old_files:
        f.unlink()
    return merged.num_rows


def ingest_articles(settings: Settings, articles: pa.Table) -> int:
    """Merge a source's article rows into ``lake/articles``; returns the row count.

    ``articles`` has ``storage.lake.ARTICLE_COLUMNS`` (``Source.articles()`` gives them).
    As for customers: merged with the rows already there, one row per article_id (a row
    of ``articles`` wins, then the newer file's), written as one new Parquet file, after
    which the older files are removed. A reader in between may see an article twice,
    once per file.
    """
    types = {"string": pa.string(), "double": pa.float64()}
    schema = pa.schema([(c, types[t]) for c, t in ARTICLE_COLUMNS.items()])
    new = pa.table([articles.column(c).cast(schema.field(c).type) for c in ARTICLE_COLUMNS],
                   schema=schema)  # fmt: skip
    new = new.filter(pc.is_valid(new.column("article_id")))
    target = articles_dir(settings)
    old_files = sorted(target.glob("*.parquet"), reverse=True) if target.is_dir() else []
    if old_files:  # newest first: names start with a time, so a later file wins a tie
        old = [read_parquet_file(f).select(list(ARTICLE_COLUMNS)).cast(schema) for f in old_files]
        new = pa.concat_tables([new, *old])
    ids = new.column("article_id").combine_chunks()
    first = pc.equal(pc.index_in(ids, value_set=ids), pa.array(range(len(ids)), pa.int32()))
    merged = new.filter(first).sort_by("article_id")
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    write_parquet(merged, target / f"articles-{stamp}-{uuid.uuid4().hex[:8]}.parquet")
    for f in old_files:
        f.unlink()
    return merged.num_rows


def _lenient_cast(values: pa.ChunkedArray, to: pa.DataType) -> pa.ChunkedArray:
    """``values`` (text) as ``to``; a text that is not a ``to`` becomes null."""
    if to == pa.string():
        return values
    text = pc.utf8_trim_whitespace(values)
    numeric = pc.match_substring_regex(text, r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
    return pc.cast(pc.if_else(numeric, text, pa.scalar(None, pa.string())), to)


def ingest_source(
    spark: SparkSession, settings: Settings, source: object, progress: bool = True
) -> IngestResult:
    """Backfill the lake from an adapter ``Source`` (``iter_batches``, ``customers_path``,
    ``articles()``; a source without the last two has no dimension rows)."""
    staged, appended = append_new(settings, source.iter_batches(), progress=progress)  # type: ignore[attr-defined]
    customers = articles = 0
    customers_path = getattr(source, "customers_path", None)
    if customers_path is not None:
        customers = ingest_customers(settings, Path(customers_path))
    article_rows = getattr(source, "articles", lambda: None)()
    if article_rows is not None:
        articles = ingest_articles(settings, article_rows)
    return IngestResult(staged=staged, appended=appended, customers=customers, articles=articles)

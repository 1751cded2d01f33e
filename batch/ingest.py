"""`pulse ingest SOURCE`: backfill the lake from files, without Kafka.

Reads a source through the shared adapters (same contract, same deterministic
event ids as the producer), stages its batches as Parquet with pyarrow (bounded
memory), then one Spark job appends to the lake only the events whose event_id
is not already there (anti-join), partitioned by ``event_date``. Ingesting the
same source twice therefore adds nothing. Customer attributes (Kaggle
``customers.csv``) go to ``lake/customers`` when the source has them.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from runtime.settings import Settings
from schemas.tables import CUSTOMER_COLUMNS as KAGGLE_CUSTOMERS
from schemas.transaction import FIELD_NAMES, spark_schema
from storage.lake import customers_dir, lake_exists, read_lake

# The Kaggle customer columns the models use; postal_code is left out (high-cardinality
# identifier, not a model input).
CUSTOMER_COLUMNS = {c: t for c, t in KAGGLE_CUSTOMERS.items() if c != "postal_code"}


@dataclass
class IngestResult:
    """What one ingest did: rows staged, new rows appended, customers written."""

    staged: int
    appended: int
    customers: int


def stage_batches(batches: Iterable[pa.Table], staging: Path, progress: bool = True) -> int:
    """Write contract-column Arrow batches to ``staging/part-*.parquet``; returns row count."""
    from tqdm import tqdm

    staging.mkdir(parents=True, exist_ok=True)
    rows = 0
    bar = tqdm(desc="staging", unit=" rows", unit_scale=True, disable=not progress)
    for i, table in enumerate(batches):
        table = table.select(list(FIELD_NAMES))
        pq.write_table(table, staging / f"part-{i:05d}.parquet")
        rows += table.num_rows
        bar.update(table.num_rows)
    bar.close()
    return rows


def append_new(spark: SparkSession, settings: Settings, staging: Path) -> int:
    """Append staged events not yet in the lake (by event_id); returns how many were new."""
    # Cast on read, so an adapter's int64 vs the contract's int32 does not matter.
    raw = spark.read.parquet(str(staging))
    typed = raw.select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in spark_schema()])
    staged = typed.dropDuplicates(["event_id"])
    if lake_exists(settings):
        known = read_lake(spark, settings).select("event_id")
        staged = staged.join(known, "event_id", "left_anti")
    new = staged.select(*FIELD_NAMES).withColumn("event_date", F.to_date("event_time"))
    new = new.cache()
    count = new.count()
    if count:
        new.repartition("event_date").write.mode("append").partitionBy("event_date").parquet(
            str(settings.lake_dir)
        )
    new.unpersist()
    return count


def ingest_customers(spark: SparkSession, settings: Settings, csv_path: Path) -> int:
    """Merge the customers CSV (Kaggle columns) into ``lake/customers``; returns row count."""
    raw = spark.read.option("header", True).csv(str(csv_path))
    cols = [
        (F.col(c).cast(t) if c in raw.columns else F.lit(None).cast(t)).alias(c)
        for c, t in CUSTOMER_COLUMNS.items()
    ]
    new = raw.select(*cols).where(F.col("customer_id").isNotNull())
    target = customers_dir(settings)
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
    staging = settings.data_root / "staging" / f"ingest-{uuid.uuid4().hex[:8]}"
    try:
        staged = stage_batches(source.iter_batches(), staging, progress=progress)  # type: ignore[attr-defined]
        appended = append_new(spark, settings, staging) if staged else 0
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    customers = 0
    customers_path = getattr(source, "customers_path", None)
    if customers_path is not None:
        customers = ingest_customers(spark, settings, Path(customers_path))
    return IngestResult(staged=staged, appended=appended, customers=customers)

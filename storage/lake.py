"""Reading the lake (both layers: batch retrains, the stream seeds): deduplicated, before a cutoff.

Time semantics: ``cutoff`` is a UTC date; only events with ``event_time < cutoff``
are read (nothing at or after it), so a later period stays untouched for testing.
Features of that window are computed as of ``features.time.as_of_for(cutoff)``, the last instant
before the cutoff.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from features.time import cutoff_ts
from runtime.errors import PulseError
from runtime.settings import Settings
from schemas.tables import lake_schema
from schemas.transaction import FIELD_NAMES


def lake_exists(settings: Settings) -> bool:
    """True when the lake has at least one event_date partition."""
    return any(Path(settings.lake_dir).glob("event_date=*"))


def read_lake(spark: SparkSession, settings: Settings, cutoff: date | None = None) -> DataFrame:
    """The lake's events (contract columns + event_date), one row per event_id.

    What it does: lists the ``event_date=*`` directories, reads every Parquet file in
    them, and keeps one row per ``event_id``. Why:

    - the directories, not the lake root: two writers append to the lake, ``pulse
      ingest`` and the stream. Given the root, Spark reads only the files listed in a
      ``_spark_metadata`` log when one is there (a Structured Streaming file sink keeps
      one), so it would miss every file ingest wrote. Given the partition directories,
      it reads all the files.
    - deduplicated: the lake may hold an event more than once (a day both ingested and
      streamed, an event re-sent to Kafka, a micro-batch's files written again when it
      is retried), and the files are read without any log saying which copy counts.
      ``event_id`` is deterministic per source row, so one row per id is each event once.
    """
    if not lake_exists(settings):
        raise PulseError(f"the lake at {settings.lake_dir} is empty: run `pulse ingest SOURCE`")
    schema = lake_schema()
    parts = sorted(str(p) for p in Path(settings.lake_dir).glob("event_date=*") if p.is_dir())
    df = spark.read.schema(schema).option("basePath", str(settings.lake_dir)).parquet(*parts)
    if cutoff is not None:
        df = df.where(F.col("event_date") < F.lit(cutoff)).where(
            F.col("event_time") < F.lit(cutoff_ts(cutoff))
        )
    return df.select(*FIELD_NAMES, "event_date").dropDuplicates(["event_id"])


def last_event_date(settings: Settings) -> date:
    """The latest ``event_date`` partition of the lake (the default cutoff is the day after).

    Read from the partition directory names: no data scan.
    """
    days = [p.name.split("=", 1)[1] for p in Path(settings.lake_dir).glob("event_date=*")]
    if not days:
        raise PulseError(f"the lake at {settings.lake_dir} is empty: run `pulse ingest SOURCE`")
    return date.fromisoformat(max(days))


def customers_dir(settings: Settings) -> Path:
    """The customer dimension table (Kaggle customers.csv columns) written by ingest."""
    return settings.data_root / "lake" / "customers"


def read_customers(spark: SparkSession, settings: Settings) -> DataFrame | None:
    """Customer attributes, one row per customer_id, or None when none were ingested."""
    path = customers_dir(settings)
    if not path.is_dir():
        return None
    return spark.read.parquet(str(path)).dropDuplicates(["customer_id"])

"""Spark reads the lake through its log: one version's live files, pruned by event_date."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pyarrow as pa
import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual, assertSchemaEqual

from schemas.tables import lake_schema
from storage import lake


def ev(n: int, day: int) -> dict:  # type: ignore[type-arg]
    when = datetime(2020, 1, day, 9, tzinfo=UTC)
    return {
        "event_id": f"e{n}",
        "event_time": when,
        "customer_id": f"c{n % 2}",
        "article_id": f"a{n}",
        "quantity": 1,
        "unit_price": float(n),
        "sales_channel_id": None,
        "source": "synthetic",
        "produced_at": when,
    }


def write(settings, batch_id: int, *events: dict) -> int:  # type: ignore[no-untyped-def, type-arg]
    rows = pa.Table.from_pylist(list(events), schema=lake.EVENT_ARROW_SCHEMA)
    return lake.write_lake_batch(settings, rows, batch_id)


def expected(spark, *events: dict):  # type: ignore[no-untyped-def, type-arg]
    rows = [(*e.values(), e["event_time"].date()) for e in events]
    return spark.createDataFrame(rows, lake_schema())


def test_read_lake_returns_each_event_once_with_its_date(spark, settings) -> None:  # type: ignore[no-untyped-def]
    write(settings, 0, ev(1, 1), ev(2, 2))
    write(settings, 1, ev(2, 2), ev(3, 4))  # e2 again: not written twice
    write(settings, 2, ev(1, 1), ev(4, 4))  # e1 re-sent much later
    got = lake.read_lake(spark, settings)
    assertSchemaEqual(got.schema, lake_schema())
    assertDataFrameEqual(got, expected(spark, ev(1, 1), ev(2, 2), ev(3, 4), ev(4, 4)))
    assert lake.last_event_date(settings) == date(2020, 1, 4)


def test_a_cutoff_prunes_files_and_rows(spark, settings) -> None:  # type: ignore[no-untyped-def]
    write(settings, 0, ev(1, 1), ev(2, 2), ev(3, 4))
    assert len(lake.live_files(settings, cutoff=date(2020, 1, 3))) == 2  # days 1 and 2 only
    got = lake.read_lake(spark, settings, cutoff=date(2020, 1, 3))
    assertDataFrameEqual(got, expected(spark, ev(1, 1), ev(2, 2)))
    assert lake.read_lake(spark, settings, cutoff=date(2019, 1, 1)).count() == 0


def test_time_travel_and_compaction_change_no_row(spark, settings) -> None:  # type: ignore[no-untyped-def]
    write(settings, 0, ev(1, 1))
    first = lake._table(settings).version()
    write(settings, 1, ev(2, 1))
    write(settings, 2, ev(3, 1))
    lake.compact(settings)
    assert lake.file_count(settings) == 1
    assertDataFrameEqual(
        lake.read_lake(spark, settings), expected(spark, ev(1, 1), ev(2, 1), ev(3, 1))
    )
    assertDataFrameEqual(lake.read_lake(spark, settings, version=first), expected(spark, ev(1, 1)))


def test_an_empty_lake_says_what_to_run(spark, settings) -> None:  # type: ignore[no-untyped-def]
    from runtime.errors import PulseError

    with pytest.raises(PulseError, match="pulse ingest"):
        lake.read_lake(spark, settings)


def test_a_lake_written_by_spark_before_the_protocol_is_read_then_adopted(spark, settings) -> None:  # type: ignore[no-untyped-def]
    old = expected(spark, ev(1, 1), ev(2, 2))
    old.write.partitionBy("event_date").parquet(str(settings.lake_dir))
    assertDataFrameEqual(lake.read_lake(spark, settings), old)
    assert write(settings, 0, ev(2, 2), ev(3, 3)) == 1
    got = lake.read_lake(spark, settings)
    assertDataFrameEqual(got, expected(spark, ev(1, 1), ev(2, 2), ev(3, 3)))
    assert got.where(F.col("event_id") == "e2").count() == 1

"""Spark reads the lake and writes model outputs through s3a, on a real S3 server.

The lake is written by the write protocol (delta-rs, tests/unit/test_object_store.py);
Spark reads exactly its live files from the bucket, and a model output written by
Spark is read back by a plain S3 client, customer by customer.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.publish import write_output
from runtime.settings import Settings
from runtime.spark import use_object_store
from storage import lake, registry
from storage.objects import s3_filesystem


def ev(n: int, day: int) -> dict:  # type: ignore[type-arg]
    when = datetime(2020, 1, day, 12, n, tzinfo=UTC)
    return {"event_id": f"e{n}", "event_time": when, "customer_id": f"c{n % 3}",
            "article_id": f"a{n}", "quantity": 1 + n % 2, "unit_price": 0.5 * n,
            "sales_channel_id": 1, "source": "synthetic", "produced_at": when}  # fmt: skip


def test_spark_reads_the_lake_and_writes_outputs_in_the_object_store(
    spark, s3_settings: Settings
) -> None:  # type: ignore[no-untyped-def]
    events = [ev(n, 1 + n % 3) for n in range(12)]
    rows = pa.Table.from_pylist(events, schema=lake.EVENT_ARROW_SCHEMA)
    assert lake.write_events(s3_settings, rows, "ingest", 0) == 12
    use_object_store(spark, s3_settings)

    read = lake.read_lake(spark, s3_settings).toPandas().set_index("event_id").sort_index()
    expected = {e["event_id"]: e for e in events}
    assert sorted(read.index) == sorted(expected)
    for event_id, row in read.iterrows():
        assert row["customer_id"] == expected[event_id]["customer_id"]
        assert row["unit_price"] == pytest.approx(expected[event_id]["unit_price"])
        assert row["event_date"] == expected[event_id]["event_time"].date()
    before = lake.read_lake(spark, s3_settings, cutoff=date(2020, 1, 3)).count()
    assert before == sum(1 for e in events if e["event_time"].day < 3)

    # A model output, by customer: each customer's spend, computed by Spark from the lake.
    spend = (
        lake.read_lake(spark, s3_settings)
        .selectExpr("customer_id", "quantity * unit_price AS spend", "event_time")
        .groupBy("customer_id")
        .agg({"spend": "sum", "event_time": "max"})
        .selectExpr(
            "customer_id",
            "CAST(`max(event_time)` AS TIMESTAMP) AS as_of",
            "CAST(`sum(spend)` AS DOUBLE) AS churn_probability",
        )
    )
    path = write_output(spend, s3_settings, "churn_scores", "v1")
    assert path == registry.output_path(s3_settings, "churn_scores", "v1")
    store = s3_filesystem(s3_settings.s3_options())
    key = str(path).removeprefix("s3://")
    back = pq.ParquetDataset(key, filesystem=store).read().to_pandas()
    by_hand: dict[str, float] = {}
    for e in events:
        by_hand[e["customer_id"]] = (
            by_hand.get(e["customer_id"], 0) + e["quantity"] * e["unit_price"]
        )
    assert dict(zip(back["customer_id"], back["churn_probability"], strict=True)) == pytest.approx(
        by_hand
    )
    assert not s3_settings.local_root.exists() or not any(s3_settings.local_root.rglob("*.parquet"))

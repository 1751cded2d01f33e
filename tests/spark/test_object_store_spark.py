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


def test_a_retrain_in_the_object_store_serves_what_a_local_one_does(
    spark, settings: Settings, s3_settings: Settings
) -> None:  # type: ignore[no-untyped-def]
    """The same shop ingested and retrained once on a local disk and once in the bucket:
    every output table, read back per customer, and every gate verdict are equal."""
    from batch_shop import TableSource, events_table, shop_rows

    from batch.ingest import ingest_source
    from batch.params import ChurnParams, RankerParams, RecParams
    from batch.retrain import RetrainOptions, retrain
    from serving.view import _read_table

    small = RetrainOptions(
        as_of=date(2020, 4, 20),
        rec=RecParams(rank=4, max_iter=3, ranker=RankerParams(max_iter=3)),
        churn=ChurnParams(max_iter=3, max_depth=3),
        k_min=3,
        k_max=3,
        progress=False,
    )
    runs = {}
    for name, where in (("local", settings), ("s3", s3_settings)):
        where = where.model_copy(update={"churn_horizon_days": 14})
        use_object_store(spark, s3_settings)  # harmless for the local run
        ingest_source(spark, where, TableSource([events_table(shop_rows())]), progress=False)
        runs[name] = (where, retrain(spark, where, small))
    for model in registry.MODELS:
        local_gate, s3_gate = runs["local"][1][model]["gate"], runs["s3"][1][model]["gate"]
        assert (s3_gate["passed"], s3_gate["value"]) == pytest.approx(
            (local_gate["passed"], local_gate["value"]), rel=1e-6
        ), model
        served = registry.current_version(runs["s3"][0], model)
        assert (served == runs["s3"][1][model]["version"]) == s3_gate["passed"], model
    for table, key in (("churn_scores", "churn_probability"), ("segments", "segment_id")):
        got = {}
        for name, (where, run) in runs.items():
            version = run["churn" if table == "churn_scores" else "segments"]["version"]
            rows = _read_table(registry.output_path(where, table, version))
            assert rows is not None
            got[name] = dict(
                zip(rows["customer_id"].to_pylist(), rows[key].to_pylist(), strict=True)
            )
        assert got["s3"].keys() == got["local"].keys() and len(got["s3"]) > 0
        if key == "segment_id":  # K-Means seeds alike: the same partition of customers
            assert got["s3"] == got["local"]
        else:
            assert got["s3"] == pytest.approx(got["local"], rel=1e-6)

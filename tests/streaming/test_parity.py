"""Parity: the stream's published features equal the batch feature function, exactly."""

from __future__ import annotations

from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual
from stream_helpers import event

from features.customer import compute_features
from schemas.transaction import FIELD_NAMES, spark_schema
from storage import snapshots
from streaming.job import run

PHASE1 = [
    event("c1", "2020-09-01", 10.0),
    event("c1", "2020-09-01", 5.0, n=1),
    event("c1", "2020-09-05", 20.0),
    event("c2", "2020-09-02", 7.5, n=1),
    event("c2", "2020-09-09", 2.5),
    event("c3", "2020-09-10T13:30", 40.0, quantity=2),
    event("c4", "2020-09-08", 3.0, n=1),
]
PHASE2 = [
    event("c1", "2020-09-12", 11.0),
    event("c3", "2020-09-11", 4.0, quantity=-1),  # a return
    event("c2", "2020-09-10", 6.0, n=3),  # late by 2 days: within the 3-day lateness
    PHASE1[5],  # re-sent duplicate (same event_id) within the watermark
    event("c5", "2020-09-12T08:00", 9.0, n=1),
]
PHASE3 = [
    event("c4", "2020-09-20", 1.0),
    event("c6", "2020-09-01", 100.0),  # 19 days late: lake only, not features
    PHASE2[0],  # duplicate again
]


def _events_df(spark, events):  # type: ignore[no-untyped-def]
    rows = [tuple(e[n] for n in FIELD_NAMES) for e in events]
    return spark.createDataFrame(rows, spark_schema())


def test_stream_features_equal_batch_features(spark, stream_settings, file_topic) -> None:  # type: ignore[no-untyped-def]
    logs: list[str] = []
    for phase in (PHASE1, PHASE2, PHASE3):
        file_topic.send(phase, per_file=3)
        run(spark, stream_settings, until_idle=True, log=logs.append, raw=file_topic.stream(spark))

    published = snapshots.current(stream_settings.features_dir)
    assert published is not None
    live = spark.read.parquet(str(published))

    too_late = PHASE3[1]
    unique = {e["event_id"]: e for e in PHASE1 + PHASE2 + PHASE3}
    counted = [e for e in unique.values() if e is not too_late]
    as_of = max(e["event_time"] for e in counted)
    expected = compute_features(_events_df(spark, counted), as_of)
    assertDataFrameEqual(live, expected)
    assert live.count() == 5  # c6 only sent a too-late event
    assert live.select("as_of").distinct().collect()[0][0] == as_of.replace(tzinfo=None)

    # The lake keeps every unique event, the too-late one included, exactly once.
    lake = spark.read.parquet(str(stream_settings.lake_dir))
    assert lake.count() == len(unique)
    assert sorted(r[0] for r in lake.select("event_id").collect()) == sorted(unique)
    assert lake.where(F.col("customer_id") == "c6").count() == 1
    assert any("1 beyond the allowed lateness" in line for line in logs), logs


def test_seeded_from_lake_then_streamed_equals_batch(spark, stream_settings, file_topic) -> None:  # type: ignore[no-untyped-def]
    """A backfilled lake seeds the state; Kafka then carries only the later days."""
    lake_part = PHASE1  # up to 2020-09-10
    kafka_part = [e for e in PHASE2 + PHASE3 if e["event_time"].date().isoformat() > "2020-09-10"]
    assert len(kafka_part) == 5  # c1 09-12 and its re-send, c3's return, c5, c4 09-20
    lake = _events_df(spark, lake_part).withColumn("event_date", F.to_date("event_time"))
    lake.write.partitionBy("event_date").parquet(str(stream_settings.lake_dir))
    file_topic.send(kafka_part, per_file=2)
    logs: list[str] = []

    def start_seeded() -> None:
        run(spark, stream_settings, until_idle=True, log=logs.append, seed=True,
            raw=file_topic.stream(spark))  # fmt: skip

    start_seeded()
    assert "stream state seeded from the lake: 4 customers" in logs

    unique = {e["event_id"]: e for e in lake_part + kafka_part}
    as_of = max(e["event_time"] for e in unique.values())
    expected = compute_features(_events_df(spark, list(unique.values())), as_of)
    live = spark.read.parquet(str(snapshots.current(stream_settings.features_dir)))
    assertDataFrameEqual(live, expected)
    assert live.count() == 5  # c1..c4 from the lake, c5 from Kafka

    # A second start has state already: no second seeding, nothing counted twice.
    logs.clear()
    start_seeded()
    assert not any("seeded" in line for line in logs)
    live = spark.read.parquet(str(snapshots.current(stream_settings.features_dir)))
    assertDataFrameEqual(live, expected)

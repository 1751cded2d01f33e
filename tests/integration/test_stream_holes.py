"""The speed layer's three holes, closed, on a real broker.

1. ``--seed-from-lake`` refuses a topic that overlaps the lake (it would count twice).
2. An event dated after its ``produced_at`` is quarantined with a reason and moves
   nobody's clock.
3. Records deleted by retention before the stream read them stop the stream (one
   clear error) unless the documented override skips them.
"""

from __future__ import annotations

import pytest
from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from pyspark.sql import functions as F

from runtime.errors import PulseError
from runtime.settings import Settings
from schemas.transaction import encode, make_event_id, now_utc
from storage import snapshots
from streaming.job import run


def _event(i: int, day: str, customer: str = "c1", **extra):  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    return {
        "event_id": make_event_id("synthetic", "holes", day, i),
        "event_time": datetime.fromisoformat(day).replace(tzinfo=UTC),
        "customer_id": customer,
        "article_id": f"a{i}",
        "quantity": 1,
        "unit_price": 2.0,
        "sales_channel_id": 1,
        "source": "synthetic",
        "produced_at": now_utc(),
        **extra,
    }


def _produce(settings: Settings, events: list[dict], partition: int = 0) -> None:  # type: ignore[type-arg]
    producer = Producer(settings.kafka_client_config())
    for e in events:
        producer.produce(settings.topic_transactions, value=encode(e), partition=partition)
    assert producer.flush(30) == 0


@pytest.fixture
def holes_settings(kafka_settings: Settings, topic: str, tmp_path) -> Settings:  # type: ignore[no-untyped-def]
    return kafka_settings.model_copy(
        update={"topic_transactions": topic, "data_root": tmp_path, "max_offsets_per_trigger": 50}
    )


def test_seeding_refuses_a_topic_that_overlaps_the_lake(spark, holes_settings) -> None:  # type: ignore[no-untyped-def]
    from schemas.transaction import FIELD_NAMES, spark_schema

    lake_events = [_event(i, f"2020-09-0{1 + i}") for i in range(3)]  # lake ends 2020-09-03
    rows = [tuple(e[n] for n in FIELD_NAMES) for e in lake_events]
    spark.createDataFrame(rows, spark_schema()).withColumn(
        "event_date", F.to_date("event_time")
    ).write.partitionBy("event_date").parquet(str(holes_settings.lake_dir))
    _produce(holes_settings, [_event(9, "2020-09-05")], partition=0)
    _produce(holes_settings, [_event(8, "2020-09-03"), _event(7, "2020-09-06")], partition=2)

    with pytest.raises(PulseError, match=r"partition 2 starts at 2020-09-03, on or before"):
        run(spark, holes_settings, until_idle=True, log=lambda _: None, seed=True)
    assert snapshots.current(holes_settings.features_dir) is None  # nothing seeded


def test_a_seeded_stream_restarts_with_the_same_command_line(spark, holes_settings) -> None:  # type: ignore[no-untyped-def]
    """The lake then holds the stream's own events, dated on or after the topic's
    first day: a restart must resume its state, not refuse the overlap (a supervisor
    restarts the command it was given)."""
    import pyarrow as pa

    from schemas.transaction import FIELD_NAMES
    from storage.lake import write_events

    lake = [_event(i, f"2020-09-0{1 + i}") for i in range(3)]  # lake ends 2020-09-03
    columns = {n: [e[n] for e in lake] for n in FIELD_NAMES}
    assert write_events(holes_settings, pa.table(columns), "test", 0) == 3
    _produce(holes_settings, [_event(10, "2020-09-05"), _event(11, "2020-09-06")])
    first = run(spark, holes_settings, until_idle=True, log=lambda _: None, seed=True)
    _produce(holes_settings, [_event(12, "2020-09-07")])
    again = run(spark, holes_settings, until_idle=True, log=lambda _: None, seed=True)

    assert (first.counted, again.counted) == (2, 1)
    live = spark.read.parquet(str(snapshots.current(holes_settings.features_dir)))
    (row,) = live.where(F.col("customer_id") == "c1").collect()
    assert row["frequency"] == 6  # three days from the lake, three streamed, each once


def test_an_event_after_its_produced_at_is_quarantined_and_moves_no_clock(
    spark, holes_settings
) -> None:  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime, timedelta

    normal = [_event(i, "2020-09-01", customer=f"c{i}") for i in range(5)]
    future = _event(99, "2031-01-01", customer="c0")  # produced today, dated years ahead
    _produce(holes_settings, normal[:3] + [future] + normal[3:])
    stats = run(spark, holes_settings, until_idle=True, log=lambda _: None)

    assert (stats.counted, stats.quarantined) == (5, 1)
    reason = spark.read.parquet(str(holes_settings.quarantine_dir)).first()["reason"]
    assert reason.startswith("event_time: after produced_at")
    live = spark.read.parquet(str(snapshots.current(holes_settings.features_dir)))
    assert live.select("as_of").distinct().first()[0] == datetime(2020, 9, 1, tzinfo=UTC).replace(
        tzinfo=None
    )
    assert live.where(F.col("recency_days") != 0).count() == 0
    assert future["event_time"] - future["produced_at"] > timedelta(days=365)


def test_records_lost_to_retention_stop_the_stream_unless_overridden(spark, holes_settings) -> None:  # type: ignore[no-untyped-def]
    _produce(holes_settings, [_event(i, "2020-09-01") for i in range(5)])
    run(spark, holes_settings, until_idle=True, log=lambda _: None)
    _produce(holes_settings, [_event(i, "2020-09-02") for i in range(5, 15)])
    # Retention deletes records the stream has not read yet (offsets 5..9 of 15).
    admin = AdminClient(holes_settings.kafka_client_config())
    futures = admin.delete_records([TopicPartition(holes_settings.topic_transactions, 0, 10)])
    for future in futures.values():
        future.result(30)

    with pytest.raises(PulseError, match="PULSE_FAIL_ON_DATA_LOSS"):
        run(spark, holes_settings, until_idle=True, log=lambda _: None)

    skipping = holes_settings.model_copy(update={"fail_on_data_loss": False})
    stats = run(spark, skipping, until_idle=True, log=lambda _: None)
    assert stats.counted == 5  # offsets 10..14; 5..9 are gone

"""A real broker: 1,000 keyed records in with confluent-kafka, the same 1,000 out with Spark."""

from __future__ import annotations

from confluent_kafka import Producer

N = 1000


def produce_records(bootstrap: str, topic: str) -> set[tuple[str, str]]:
    """Write N keyed records; return the (key, value) pairs delivered."""
    delivered: set[tuple[str, str]] = set()
    errors: list[str] = []

    def on_delivery(err, msg) -> None:  # type: ignore[no-untyped-def]
        if err is not None:
            errors.append(str(err))
        else:
            delivered.add((msg.key().decode(), msg.value().decode()))

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    for i in range(N):
        producer.produce(
            topic, key=f"customer-{i % 37}", value=f'{{"n":{i}}}', on_delivery=on_delivery
        )
        producer.poll(0)
    assert producer.flush(30) == 0
    assert errors == []
    return delivered


def test_spark_batch_and_stream_read_exactly_what_was_produced(
    spark, kafka_settings, topic, tmp_path
):
    sent = produce_records(kafka_settings.kafka_bootstrap, topic)
    assert len(sent) == N  # every value is distinct, so this is N different records

    opts = kafka_settings.spark_kafka_options()
    batch = (
        spark.read.format("kafka")
        .options(**opts)
        .option("subscribe", topic)
        .option("startingOffsets", "earliest")
        .load()
        .selectExpr("CAST(key AS STRING) AS k", "CAST(value AS STRING) AS v")
    )
    batch_rows = [(r.k, r.v) for r in batch.collect()]
    assert len(batch_rows) == N
    assert set(batch_rows) == sent

    stream = (
        spark.readStream.format("kafka")
        .options(**opts)
        .option("subscribe", topic)
        .option("startingOffsets", "earliest")
        .load()
        .selectExpr("CAST(key AS STRING) AS k", "CAST(value AS STRING) AS v")
    )
    query = (
        stream.writeStream.format("memory")
        .queryName(f"rt_{topic.replace('-', '_')}")
        .option("checkpointLocation", str(tmp_path / "ckpt"))
        .start()
    )
    try:
        query.processAllAvailable()
        stream_rows = [(r.k, r.v) for r in spark.table(f"rt_{topic.replace('-', '_')}").collect()]
    finally:
        query.stop()
    assert len(stream_rows) == N
    assert set(stream_rows) == sent

"""`pulse bench stream`: throughput of the whole job vs a pass-through, and end-to-end latency.

1. Throughput: N synthetic events (H&M density, keyed by customer) are produced into
   a fresh topic first (confluent-kafka, batched), then the full job (quarantine +
   lake + features, ``Trigger.AvailableNow``) and a plain Kafka -> Parquet
   pass-through query each consume the whole topic, one after the other in the same
   Spark session. Events/s = N / wall time; the ratio says what parsing, validation,
   dedup, state and publishing cost.
2. Latency: the job runs with the configured trigger while a producer sends events at a
   steady rate, each for a new customer; after every publish the snapshot's new customer
   ids are matched to their ``produced_at`` (latency = publish time - produced_at).

Everything is written under ``<data_root>/bench-stream`` on fresh topics; figures are
printed, nothing is asserted.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, date, datetime, timedelta

from runtime.errors import PulseError
from runtime.settings import Settings

START_DAY = date(2018, 9, 20)
# H&M density for the bulk run: 2M transactions are ~84.5k customers over two years
# (design.md's measured facts), so each customer has a few purchase days in any
# 90-day history, as in the real data.
BULK_CUSTOMERS = 84_500
BULK_DAYS = 730


def _customer(i: int) -> str:
    """The bulk run's customer of event i (``BULK_CUSTOMERS``, interleaved)."""
    return f"c{(i * 7919) % BULK_CUSTOMERS}"


def _wire(i: int, produced_at: str, customer: str | None = None, days: int = BULK_DAYS) -> bytes:
    """One valid event as compact JSON (string template: ~10x faster than json.dumps)."""
    day = START_DAY + timedelta(days=i * days // 2_000_000 % days)
    customer = customer or _customer(i)
    return (
        f'{{"event_id":"synthetic-{i:024x}","event_time":"{day.isoformat()}T00:00:00Z",'
        f'"customer_id":"{customer}","article_id":"a{i % 5000:06d}",'
        f'"quantity":1,"unit_price":{(i % 97) / 10 + 0.5:.2f},"sales_channel_id":{1 + i % 2},'
        f'"source":"synthetic","produced_at":"{produced_at}"}}'
    ).encode()


def _producer(settings: Settings):  # type: ignore[no-untyped-def]
    from confluent_kafka import Producer

    return Producer(
        {
            **settings.kafka_client_config(),
            "linger.ms": 50,
            "batch.size": 1_000_000,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 1_000_000,
        }
    )


def _send(producer, topic: str, value: bytes, key: bytes | None = None) -> None:  # type: ignore[no-untyped-def]
    while True:
        try:
            producer.produce(topic, value=value, key=key)
            return
        except BufferError:
            producer.poll(0.05)


def produce_bulk(settings: Settings, n: int) -> float:
    """Send n events to settings.topic_transactions as fast as possible; returns events/s."""
    producer = _producer(settings)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    t0 = time.perf_counter()
    for i in range(n):
        # Keyed by customer like the replay producer, so each partition is in event-time
        # order (unkeyed, sticky batches skew partitions and make events "late").
        customer = _customer(i)
        _send(producer, settings.topic_transactions, _wire(i, stamp, customer), customer.encode())
        if i % 10_000 == 0:
            producer.poll(0)
    if producer.flush(120) != 0:
        raise PulseError("bench: the producer could not deliver every event")
    return n / (time.perf_counter() - t0)


def _fresh(settings: Settings, tag: str) -> Settings:
    from runtime.kafka_admin import create_topics

    topic = f"bench-{tag}-{uuid.uuid4().hex[:8]}"
    derived = settings.model_copy(
        update={
            "topic_transactions": topic,
            "data_root": settings.data_root / "bench-stream" / topic,
        }
    )
    create_topics(derived, log=lambda *_: None)
    return derived


def _timed_full_job(spark, settings: Settings) -> float:  # type: ignore[no-untyped-def]
    from streaming.job import kafka_source, monitor, start

    t0 = time.perf_counter()
    queries = start(spark, settings, kafka_source(spark, settings), until_idle=True)
    monitor(queries, log=lambda line: print("  full:", line))
    return time.perf_counter() - t0


def _timed_passthrough(spark, settings: Settings) -> float:  # type: ignore[no-untyped-def]
    from streaming.job import kafka_source, monitor

    t0 = time.perf_counter()
    query = (
        kafka_source(spark, settings)
        .select("key", "value", "topic", "partition", "offset", "timestamp")
        .writeStream.queryName("bench-passthrough")
        .format("parquet")
        .option("path", str(settings.data_root / "passthrough"))
        .option("checkpointLocation", str(settings.checkpoint_dir / "passthrough"))
        .trigger(availableNow=True)
        .start()
    )
    monitor([query], log=lambda line: print("  pass-through:", line))
    return time.perf_counter() - t0


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _latency(spark, settings: Settings, rate: int, seconds: int) -> list[float]:  # type: ignore[no-untyped-def]
    """Run the job live while producing ``rate`` events/s; per-event visibility latencies."""
    import pyarrow.parquet as pq

    from storage import snapshots
    from streaming.job import kafka_source, monitor, start

    produced: dict[str, float] = {}
    latencies: list[float] = []
    stop = threading.Event()

    def on_publish(_features) -> None:  # type: ignore[no-untyped-def]
        now = time.time()
        path = snapshots.current(settings.features_dir)
        ids = pq.read_table(str(path), columns=["customer_id"]).column(0).to_pylist()
        for cid in ids:
            sent = produced.pop(cid, None)
            if sent is not None:
                latencies.append(now - sent)

    def produce_steady() -> None:
        producer = _producer(settings)
        i, t0 = 0, time.time()
        while not stop.is_set() and time.time() - t0 < seconds:
            due = int((time.time() - t0) * rate)
            while i < due:
                now = time.time()
                stamp = datetime.fromtimestamp(now, UTC)
                cid = f"L{i}"
                value = _wire(i, stamp.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z", cid)
                produced[cid] = now
                _send(producer, settings.topic_transactions, value, key=cid.encode())
                i += 1
            producer.poll(0)
            time.sleep(0.01)
        producer.flush(30)

    queries = start(
        spark, settings, kafka_source(spark, settings), until_idle=False, on_publish=on_publish
    )
    thread = threading.Thread(target=produce_steady, daemon=True)
    thread.start()
    deadline = time.time() + seconds + 60

    def finished() -> bool:
        return (not thread.is_alive() and not produced) or time.time() > deadline

    try:
        monitor(queries, log=lambda line: print("  latency:", line), stop_when=finished)
    finally:
        stop.set()
        thread.join(10)
    return latencies


def bench_stream(settings: Settings, events: int, rate: int, latency_seconds: int) -> None:
    """Print events/s of the full job vs a pass-through over ``events``, and latency p50/p95."""
    from runtime.spark import build_spark

    spark = build_spark(settings, app_name="pulse-bench-stream")
    try:
        full = _fresh(settings, "full")
        print(f"producing {events:,} events into {full.topic_transactions} ...")
        print(f"  producer: {produce_bulk(full, events):,.0f} events/s")
        passthrough = full.model_copy(update={"data_root": full.data_root / "passthrough"})
        t_pass = _timed_passthrough(spark, passthrough)
        t_full = _timed_full_job(spark, full)
        live = _fresh(settings, "latency")
        lat = _latency(spark, live, rate, latency_seconds)
    finally:
        spark.stop()
    print(
        f"throughput over {events:,} events: full job {events / t_full:,.0f} events/s "
        f"({t_full:.1f} s), pass-through {events / t_pass:,.0f} events/s ({t_pass:.1f} s), "
        f"ratio full/pass-through {t_pass / t_full:.2f}"
    )
    if lat:
        print(
            f"latency at {rate:,} events/s for {latency_seconds} s (trigger "
            f"{settings.trigger_interval}): p50 {_percentile(lat, 0.5):.2f} s, "
            f"p95 {_percentile(lat, 0.95):.2f} s over {len(lat):,} events"
        )
    else:
        print("latency: no event became visible")

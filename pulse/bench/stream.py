"""`pulse bench stream`: the speed layer at the scale users bring, against a pass-through.

1. Load: N events at H&M density (``--customers`` customers over two years, keyed by
   customer, in event-time order per partition) go into a fresh topic. A plain Kafka
   -> Parquet pass-through query and then the full job (quarantine + lake + keyed
   state, ``Trigger.AvailableNow``) each consume the whole topic in the same Spark
   session. Events/s = N / wall time; the ratio says what parsing, validation, the
   lake and the state cost over reading and writing the bytes.
2. Latency, with the whole state loaded: the job keeps running on the same topic,
   checkpoint and store while a producer sends ``--rate`` events/s for ``--seconds``,
   each for an existing customer, dated after the load. Latency = the moment the
   batch holding an event has committed that customer's new state - the event's
   ``produced_at``.
3. The state store's size on disk and the driver JVM's peak heap.
4. The driver's cost (the ceiling of one driver, docs/streaming.md): the fold runs in
   the driver's Python process, so its peak resident memory (VmHWM; the load is
   produced by a child process, so this is the stream's) and its CPU seconds per
   million events of the full job are measured, with the Spark JVM's
   beside them (in local mode the JVM is the driver and the executors).
5. With ``--object-store``: the full job once more on the same topic into a data root
   in a local SeaweedFS (``pulse.local.s3``), checkpoint and all, in the same Spark
   session; the ratio of its events/s to the local run's says what the store costs.

Everything is written under ``<data_root>/bench-stream``; figures are printed (a
table, or one JSON object with ``--json``), nothing is asserted.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

from runtime.errors import PulseError
from runtime.settings import Settings

START_DAY = date(2018, 9, 20)
DAYS = 730  # H&M: two years


def _customer(i: int, customers: int) -> str:
    """The load's customer of event i: spread over all customers, interleaved."""
    return f"c{(i * 7919) % customers:07d}"


def _wire(i: int, produced_at: str, customer: str, day: date) -> bytes:
    """One valid event as compact JSON (string template: ~10x faster than json.dumps)."""
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
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 1_000_000,
        }
    )


def _send(producer, topic: str, value: bytes, key: bytes) -> None:  # type: ignore[no-untyped-def]
    while True:
        try:
            producer.produce(topic, value=value, key=key)
            return
        except BufferError:
            producer.poll(0.05)


def produce_load(
    settings: Settings, events: int, customers: int, say: Callable[[str], None] = print
) -> float:
    """Send the load (``events`` over ``DAYS`` days); returns events/s."""
    producer = _producer(settings)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    t0 = time.perf_counter()
    for i in range(events):
        customer = _customer(i, customers)
        day = START_DAY + timedelta(days=i * DAYS // events)
        _send(
            producer, settings.topic_transactions, _wire(i, stamp, customer, day), customer.encode()
        )
        if i % 10_000 == 0:
            producer.poll(0)
        if i % 1_000_000 == 0 and i:
            say(f"  produced {i:,} events ({i / (time.perf_counter() - t0):,.0f}/s)")
    if producer.flush(300) != 0:
        raise PulseError("bench: the producer could not deliver every event")
    return events / (time.perf_counter() - t0)


def _silent(_: str) -> None:
    """``say`` of a ``--json`` run (stdout holds the one JSON object)."""


def produce_in_child(settings: Settings, events: int, customers: int, quiet: bool) -> float:
    """``produce_load`` in a child process; its events/s. The driver's own peak RSS then
    measures the stream alone, not the generator and librdkafka's send queue (up to
    1 GB by default)."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        say = _silent if quiet else print
        return float(pool.apply(produce_load, (settings, events, customers, say)))


def _fresh(settings: Settings, tag: str) -> Settings:
    from runtime.kafka_admin import create_topics

    topic = f"bench-{tag}-{uuid.uuid4().hex[:8]}"
    derived = settings.model_copy(
        update={
            "topic_transactions": topic,
            "data_root": settings.data_root / "bench-stream" / topic,
            # the full snapshot is a scheduled step, timed on its own below
            "snapshot_interval_seconds": 10**9,
        }
    )
    create_topics(derived, log=lambda *_: None)
    return derived


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
    monitor([query], log=lambda line: None)
    return time.perf_counter() - t0


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _latency(
    spark, settings: Settings, customers: int, rate: int, seconds: int
) -> tuple[list[float], list[float]]:  # type: ignore[no-untyped-def]
    """Run the job live on the loaded state while producing ``rate`` events/s.

    Returns (per-event latencies, per-batch durations) in seconds.
    """
    from storage.columnar_store import BatchResult
    from streaming.job import StreamJob, kafka_source, monitor
    from streaming.seed import open_store

    sent: dict[str, float] = {}
    lock = threading.Lock()
    latencies: list[float] = []
    stop = threading.Event()
    day = START_DAY + timedelta(days=DAYS)  # after the load: never late
    store = open_store(settings)

    def on_batch(result: BatchResult) -> None:
        now = time.time()
        if not result.applied or not result.touched:
            return
        for cid in result.touched_ids:
            with lock:
                t = sent.pop(cid, None)
            if t is not None:
                latencies.append(now - t)

    def produce_steady() -> None:
        producer = _producer(settings)
        rng = random.Random(7)
        i, t0 = 0, time.time()
        while not stop.is_set() and time.time() - t0 < seconds:
            due = int((time.time() - t0) * rate)
            while i < due:
                now = time.time()
                stamp = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
                cid = f"c{rng.randrange(customers):07d}"
                with lock:
                    sent.setdefault(cid, now)
                value = _wire(10**12 + i, stamp + "Z", cid, day)
                _send(producer, settings.topic_transactions, value, cid.encode())
                i += 1
            producer.poll(0)
            time.sleep(0.005)
        producer.flush(30)

    job = StreamJob(spark, settings, store, log=lambda line: None, on_batch=on_batch)
    query = job.start(kafka_source(spark, settings), until_idle=False)
    thread = threading.Thread(target=produce_steady, daemon=True)
    thread.start()
    deadline = time.time() + seconds + 120

    def finished() -> bool:
        return (not thread.is_alive() and not sent) or time.time() > deadline

    try:
        monitor([query], log=lambda line: None, stop_when=finished)
    finally:
        stop.set()
        thread.join(10)
        job.close()
        store.close()
    durations = [p["durationMs"]["triggerExecution"] / 1000 for p in query.recentProgress]
    return latencies, durations


def _proc_figures(pid: int | None) -> tuple[float, int]:
    """(CPU seconds, user + system; peak resident bytes, VmHWM) of process ``pid``."""
    if pid is None:
        return 0.0, 0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/status") as f:
        hwm = next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:")), 0)
    return cpu, hwm


def _jvm_pid(spark) -> int | None:  # type: ignore[no-untyped-def]
    """The Spark JVM's process id when this process launched it (not under spark-submit)."""
    proc = getattr(spark.sparkContext._gateway, "proc", None)
    return proc.pid if proc is not None else None


def _timed_in_store(spark, full: Settings, events: int, say: Callable[[str], None]) -> float:  # type: ignore[no-untyped-def]
    """The full job on ``full``'s topic into a data root in a local SeaweedFS; seconds."""
    from pathlib import Path

    from pulse.local.s3 import s3_server
    from runtime.settings import revalidated
    from runtime.spark import use_object_store
    from streaming.job import run

    with tempfile.TemporaryDirectory(prefix="pulse-bench-s3-") as tmp:
        with s3_server(full, Path(tmp) / "s3") as endpoint:
            remote = revalidated(
                full, **endpoint.settings(f"bench-stream/{full.topic_transactions}"),
                local_dir=Path(tmp) / "local",
            )  # fmt: skip
            use_object_store(spark, remote)
            say(f"full job into {remote.data_root} (SeaweedFS at {endpoint.url}) ...")
            t0 = time.perf_counter()
            run(spark, remote, until_idle=True, log=lambda line: None)
            seconds = time.perf_counter() - t0
    say(f"  {events / seconds:,.0f} events/s")
    return seconds


def _heap_peak_bytes(spark) -> int:  # type: ignore[no-untyped-def]
    """The driver JVM's peak heap use: the sum of its heap pools' peaks."""
    jvm = spark.sparkContext._jvm
    pools = jvm.java.lang.management.ManagementFactory.getMemoryPoolMXBeans()
    heap = jvm.java.lang.management.MemoryType.HEAP
    return int(sum(p.getPeakUsage().getUsed() for p in pools if p.getType().equals(heap)))


def bench_stream(
    settings: Settings,
    events: int,
    customers: int,
    rate: int,
    latency_seconds: int,
    as_json: bool = False,
    object_store: bool = False,
) -> dict[str, Any]:
    """Measure the speed layer (see the module docstring); print and return the figures."""
    from runtime.spark import build_spark
    from streaming.job import run
    from streaming.output import publish_snapshot
    from streaming.seed import open_store

    def say(msg: str) -> None:
        if not as_json:
            print(msg, flush=True)

    spark = build_spark(settings, app_name="pulse-bench-stream")
    try:
        full = _fresh(settings, "load")
        say(f"producing {events:,} events, {customers:,} customers: {full.topic_transactions}")
        producer_rate = produce_in_child(full, events, customers, quiet=as_json)
        say(f"  producer: {producer_rate:,.0f} events/s")
        passthrough = full.model_copy(update={"data_root": full.data_root / "passthrough"})
        say("pass-through ...")
        t_pass = _timed_passthrough(spark, passthrough)
        say(f"  {events / t_pass:,.0f} events/s")
        say("full job ...")
        jvm = _jvm_pid(spark)
        (py_cpu0, _), (jvm_cpu0, _) = _proc_figures(os.getpid()), _proc_figures(jvm)
        t0 = time.perf_counter()
        stats = run(spark, full, until_idle=True, log=lambda line: None)
        t_full = time.perf_counter() - t0
        py_cpu1, jvm_cpu1 = _proc_figures(os.getpid())[0], _proc_figures(jvm)[0]
        say(f"  {events / t_full:,.0f} events/s over {stats.batches} batches")
        t_store = _timed_in_store(spark, full, events, say) if object_store else None
        store = open_store(full)
        in_state = store.customer_count()
        t0 = time.perf_counter()
        publish_snapshot(full, store)
        t_snapshot = time.perf_counter() - t0
        store.close()
        say(f"  full snapshot of {in_state:,} customers: {t_snapshot:.1f} s")
        say(f"latency at {rate:,} events/s for {latency_seconds} s ...")
        lat, durations = _latency(spark, full, customers, rate, latency_seconds)
        store = open_store(full)
        state_bytes = store.size_bytes()
        store.close()
        heap = _heap_peak_bytes(spark)
        py_hwm, jvm_hwm = _proc_figures(os.getpid())[1], _proc_figures(jvm)[1]  # whole run
    finally:
        spark.stop()
    figures: dict[str, Any] = {
        "customers": in_state,
        "events": events,
        "job_events_per_s": round(events / t_full, 1),
        "passthrough_events_per_s": round(events / t_pass, 1),
        "ratio": round(t_pass / t_full, 3),
        "latency_p50_s": round(_percentile(lat, 0.5), 3) if lat else None,
        "latency_p95_s": round(_percentile(lat, 0.95), 3) if lat else None,
        "latency_events": len(lat),
        "latency_batch_p50_s": round(_percentile(durations, 0.5), 3) if durations else None,
        "state_bytes": state_bytes,
        "heap_peak_bytes": heap,
        "snapshot_s": round(t_snapshot, 1),
        "producer_events_per_s": round(producer_rate, 1),
        "driver_python_rss_peak_bytes": py_hwm,
        "driver_python_cpu_s_per_m_events": round((py_cpu1 - py_cpu0) * 1e6 / events, 1),
        "spark_jvm_rss_peak_bytes": jvm_hwm,
        "spark_jvm_cpu_s_per_m_events": round((jvm_cpu1 - jvm_cpu0) * 1e6 / events, 1),
    }
    if t_store is not None:
        figures["object_store_events_per_s"] = round(events / t_store, 1)
        figures["object_store_ratio"] = round(t_full / t_store, 3)
    if as_json:
        print(json.dumps(figures))
    else:
        width = max(len(k) for k in figures)
        print("\n" + "\n".join(f"{k:<{width}}  {v}" for k, v in figures.items()))
    return figures

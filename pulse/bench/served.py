"""`pulse bench view`'s event-to-served latency: from an event's ``produced_at`` to the
moment a look-up of its customer reflects it, score included.

On the bench's filled data root (``customers`` customers in the online store), the same
state is loaded into the stream's store, and the real stream runs on a fresh topic of
the configured broker with the live view as its sink and the settings as given (the
default trigger interval included). A producer sends ``rate`` events/s for ``seconds``,
each for an existing customer not sent before (so "reflects it" is unambiguous: the
customer's ``n_events`` went up by one), dated the day after the state's clock. Every
``PROBE_EVERY``-th event is followed by a prober, as an application would: it polls
the customer's record (a key read), and once the record holds the event, looks the
customer up (``serving.read.lookup``: features and scores as of the clock) and records
the time. The first ``WARMUP_S`` seconds of events are left out (the stream's first
batches compile their plans).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa

from runtime.settings import Settings

PROBE_EVERY = 10
WARMUP_S = 10.0


def event_to_served(
    settings: Settings,
    state: tuple[pa.Table, pa.Table],
    clock_day: int,
    rate: int,
    seconds: int,
    say: Any = print,
) -> dict[str, Any]:
    """Run the stream and the prober; returns the figures (latencies in seconds)."""
    from pulse.bench.stream import _producer, _send, _wire
    from runtime.kafka_admin import create_topics
    from runtime.spark import build_spark
    from serving import read
    from serving.live import LiveView
    from streaming.job import StreamJob, kafka_source, monitor
    from streaming.seed import SEED_BATCH, open_store

    s = settings.model_copy(update={"topic_transactions": f"bench-served-{uuid.uuid4().hex[:8]}"})
    create_topics(s, log=lambda *_: None)
    customers, days = state
    store = open_store(s)
    store.load(customers, days, clock_day * 86_400_000_000, SEED_BATCH)
    ids = customers["customer_id"].to_pylist()
    before = dict(zip(ids, customers["n_events"].to_pylist(), strict=True))
    day = date(1970, 1, 1) + timedelta(days=clock_day + 1)

    pending: deque[tuple[str, float]] = deque()
    latencies: list[float] = []
    lock = threading.Lock()
    done = threading.Event()
    t_start = time.time()

    def produce() -> None:
        producer = _producer(s)
        order = np.random.default_rng(3).permutation(len(ids))
        i, t0 = 0, time.time()
        while time.time() - t0 < seconds and i < len(order):
            due = min(int((time.time() - t0) * rate), len(order))
            while i < due:
                now = time.time()
                cid = ids[order[i]]
                stamp = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
                _send(producer, s.topic_transactions, _wire(10**12 + i, stamp + "Z", cid, day),
                      cid.encode())  # fmt: skip
                if i % PROBE_EVERY == 0:
                    with lock:
                        pending.append((cid, now))
                i += 1
            producer.poll(0)
            time.sleep(0.002)
        producer.flush(30)

    def probe() -> None:
        reader = read.open_reader(s)
        try:
            while not done.is_set():
                with lock:
                    batch = list(pending)
                served = []
                for cid, sent in batch:
                    record = reader.get(cid)
                    if record is not None and record["n_events"] > before[cid]:
                        row = read.lookup(s, cid, store=reader, with_value=True)
                        assert row["churn_probability"] is not None, row
                        now = time.time()
                        if sent - t_start >= WARMUP_S:
                            latencies.append(now - sent)
                        served.append((cid, sent))
                with lock:
                    for item in served:
                        pending.remove(item)
                time.sleep(0.01)
        finally:
            reader.close()

    spark = build_spark(s, app_name="pulse-bench-served")
    live = LiveView(s, log=lambda *_: None)
    job = StreamJob(spark, s, store, log=lambda *_: None, sink=live)
    say(f"event to served: the stream on {len(ids):,} customers, {rate:,} events/s for "
        f"{seconds} s (trigger {s.trigger_interval}) ...")  # fmt: skip
    query = job.start(kafka_source(spark, s), until_idle=False)
    producer = threading.Thread(target=produce, daemon=True)
    prober = threading.Thread(target=probe, daemon=True)
    producer.start()
    prober.start()
    deadline = time.time() + seconds + 120

    def finished() -> bool:
        with lock:
            empty = not pending
        return (not producer.is_alive() and empty) or time.time() > deadline

    try:
        monitor([query], log=lambda *_: None, stop_when=finished)
    finally:
        done.set()
        prober.join(10)
        job.close()
        live.close()
        store.close()
        spark.stop()
    with lock:
        unserved = len(pending)
    durations = [p["durationMs"]["triggerExecution"] / 1000 for p in query.recentProgress]
    return {
        "event_to_served_p50_s": _round(latencies, 50),
        "event_to_served_p95_s": _round(latencies, 95),
        "event_to_served_events": len(latencies),
        "event_to_served_unserved": unserved,
        "event_to_served_rate": rate,
        "trigger_interval": s.trigger_interval,
        "batch_p50_s": _round(durations, 50),
    }


def _round(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None

"""`pulse bench producer`: our replay producer next to Kafka's own ProducerPerformance.

Both run in the same invocation against the same broker, each on a fresh topic,
with the same record count, acks=all and idempotence, and the same record size
(ProducerPerformance gets the mean value size our producer measured).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from runtime.errors import PulseError
from runtime.settings import Settings
from schemas.transaction import make_event_id

if TYPE_CHECKING:
    import pyarrow as pa

# "1000000 records sent, 412371.1 records/sec (39.33 MB/sec), 571.2 ms avg latency, ..."
_FINAL_LINE = re.compile(
    r"(?P<records>\d+) records sent, (?P<rps>[\d.]+) records/sec \((?P<mibps>[\d.]+) MB/sec\)"
    r", (?P<avg_ms>[\d.]+) ms avg latency"
)


@dataclass(frozen=True)
class PerfResult:
    """One producer's throughput: records/s and value MB/s (10^6 bytes)."""

    records: int
    records_per_s: float
    mb_per_s: float


def bench_events(n: int, customers: int = 50_000, chunk: int = 100_000) -> Iterator[pa.Table]:
    """``n`` valid contract events, H&M-like, in event-time order (about 2,000 per day).

    Arrow tables of ``chunk`` rows in the adapters' schema, as ``Source.iter_batches``
    yields them, so the benchmark measures the producer, not a CSV reader.
    """
    import numpy as np
    import pyarrow as pa

    from producers.adapters import ARROW_SCHEMA

    day0_us = int(datetime(2020, 1, 1, tzinfo=UTC).timestamp()) * 1_000_000
    for lo in range(0, n, chunk):
        i = np.arange(lo, min(lo + chunk, n), dtype=np.int64)
        columns = {
            "event_id": [make_event_id("synthetic", "bench", k) for k in i.tolist()],
            "event_time": pa.array(day0_us + (i // 2000) * 86_400_000_000).cast(
                pa.timestamp("us", tz="UTC")
            ),
            # H&M customer ids are 64 hex characters
            "customer_id": [f"{c:064x}" for c in ((i * 7919) % customers).tolist()],
            "article_id": [f"{a:010d}" for a in (700000000 + (i * 104729) % 100000).tolist()],
            "quantity": np.ones(len(i), dtype=np.int32),
            "unit_price": np.round(0.0169 + (i % 97) / 5900.0, 6),
            "sales_channel_id": np.where(i % 10 < 7, 2, 1).astype(np.int32),
            "source": ["synthetic"] * len(i),
            "produced_at": pa.nulls(len(i), pa.timestamp("us", tz="UTC")),
        }
        yield pa.table(columns, schema=ARROW_SCHEMA)


def parse_producer_performance(output: str) -> PerfResult:
    """Read the final summary line of ``ProducerPerformance`` (MB there means MiB)."""
    matches = list(_FINAL_LINE.finditer(output))
    if not matches:
        tail = output.strip().splitlines()[-1:] or ["no output"]
        raise PulseError(f"ProducerPerformance printed no summary line: {tail[0][:200]}")
    final = matches[-1]
    return PerfResult(
        records=int(final["records"]),
        records_per_s=float(final["rps"]),
        mb_per_s=float(final["mibps"]) * 1024 * 1024 / 1e6,
    )


def run_producer_performance(
    settings: Settings, topic: str, records: int, record_size: int
) -> PerfResult:
    """Run Kafka's ProducerPerformance from the broker jars; acks=all, idempotent."""
    from runtime.jvm import kafka_classpath, require_tool

    java = require_tool("java", "Java 17+")
    cmd = [
        java,
        "-Xmx512m",
        "-cp",
        kafka_classpath(settings),
        "org.apache.kafka.tools.ProducerPerformance",
        "--topic",
        topic,
        "--num-records",
        str(records),
        "--record-size",
        str(record_size),
        "--throughput",
        "-1",
        "--producer-props",
        f"bootstrap.servers={settings.kafka_bootstrap}",
        "acks=all",
        "enable.idempotence=true",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise PulseError(f"ProducerPerformance failed: {tail[0][:200]}")
    return parse_producer_performance(proc.stdout)


def bench_producer(
    settings: Settings,
    events: int,
    log: Callable[[str], None] = print,
    *,
    as_json: bool = False,
) -> dict[str, Any]:
    """Produce ``events`` with ``replay`` and with ProducerPerformance; print and return both.

    Prints a table, or with ``as_json`` one JSON object of the same figures on stdout
    (the table and progress lines then go to stderr). Returns that object.
    """
    from producers.replay import ReplayOptions, replay
    from producers.resume import position_path
    from runtime.kafka_admin import admin_client, create_topics

    if as_json:
        log = partial(print, file=sys.stderr)
    run_id = uuid.uuid4().hex[:8]
    ours_topic, theirs_topic = f"bench-pulse-{run_id}", f"bench-kafka-{run_id}"
    for name in (ours_topic, theirs_topic):
        create_topics(settings.model_copy(update={"topic_transactions": name}), log=log)
    ours_settings = settings.model_copy(update={"topic_transactions": ours_topic})
    identity = {"source": "bench", "run": run_id, "topic": ours_topic}
    _wait_for_leaders(settings, [ours_topic, theirs_topic])
    tables = list(bench_events(events))  # built before the clock starts

    try:
        options = ReplayOptions(identity=identity, progress=False)
        stats = replay(tables, ours_settings, options, log=log)
        if stats.failed or stats.delivered != events:
            raise PulseError(f"bench replay lost records: {stats.summary()}")
        record_size = round(stats.bytes / stats.delivered)
        ours = PerfResult(
            records=stats.delivered,
            records_per_s=stats.delivered / stats.elapsed_s,
            mb_per_s=stats.bytes / 1e6 / stats.elapsed_s,
        )
        theirs = run_producer_performance(settings, theirs_topic, events, record_size)
    finally:
        # the bench topics hold ~2 x N records: give the broker's disk back
        admin = admin_client(settings)  # keep a reference: the futures die with the client
        deleted = admin.delete_topics([ours_topic, theirs_topic])
        for name, future in deleted.items():
            try:
                future.result(timeout=60)
            except Exception as exc:  # cleanup is best effort; the figures still stand
                log(f"could not confirm deletion of bench topic {name}: {exc!r}")
        position_path(ours_settings, identity).unlink(missing_ok=True)
    python_only = _python_ceiling(tables)
    ratio = ours.records_per_s / theirs.records_per_s
    log(f"producer benchmark: {events:,} records of {record_size} B, acks=all, idempotent")
    log(f"{'':28}{'events/s':>12}{'MB/s':>10}")
    log(f"{'pulse replay (confluent)':28}{ours.records_per_s:>12,.0f}{ours.mb_per_s:>10.2f}")
    log(f"{'kafka ProducerPerformance':28}{theirs.records_per_s:>12,.0f}{theirs.mb_per_s:>10.2f}")
    log(f"{'python only (encode)':28}{python_only:>12,.0f}{'':>10}")
    log(f"ratio pulse / kafka: {ratio:.2f}")
    result = {
        "events": events,
        "record_size": record_size,
        "acks": "all",
        "idempotent": True,
        "ours": asdict(ours),
        "theirs": asdict(theirs),
        "python_only_per_s": round(python_only, 1),
        "ratio": round(ratio, 4),
    }
    if as_json:
        print(json.dumps(result), flush=True)
    return result


def _wait_for_leaders(settings: Settings, topics: list[str], timeout_s: float = 60) -> None:
    """Block until every partition of ``topics`` has a leader, so no timer includes that wait."""
    from runtime.kafka_admin import admin_client

    admin = admin_client(settings)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        metadata = admin.list_topics(timeout=10).topics
        if all(
            name in metadata and all(p.leader >= 0 for p in metadata[name].partitions.values())
            for name in topics
        ):
            return
        time.sleep(0.2)
    raise PulseError(f"bench topics {topics} have no leader after {timeout_s:.0f} s")


def _python_ceiling(tables: list[pa.Table]) -> float:
    """Events/s of the producer's own encoding alone (keys, bodies, produced_at), no Kafka.

    The bound the replay cannot beat, whatever the broker does.
    """
    from producers.arrow_encode import closing, encode_bodies, event_keys

    rows = size = 0
    started = time.perf_counter()
    for table in tables:
        keys, bodies = event_keys(table), encode_bodies(table)
        for key, body in zip(keys, bodies, strict=True):
            size += len(key) + len(body + closing(time.time_ns() // 1_000_000))
        rows += len(bodies)
    return rows / (time.perf_counter() - started)

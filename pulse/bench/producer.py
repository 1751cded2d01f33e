"""`pulse bench producer`: our replay producer next to Kafka's own ProducerPerformance.

Both run in the same invocation against the same broker, each on a fresh topic,
with the same record count, acks=all and idempotence, and the same record size
(ProducerPerformance gets the mean value size our producer measured).
"""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from runtime.errors import PulseError
from runtime.settings import Settings
from schemas.transaction import make_event_id

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


def bench_events(n: int, customers: int = 50_000) -> Iterator[dict[str, Any]]:
    """``n`` valid contract events, H&M-like, in event-time order (about 2,000 per day).

    Built in memory so the benchmark measures the producer, not a CSV reader.
    """
    day0 = datetime(2020, 1, 1, tzinfo=UTC)
    for i in range(n):
        yield {
            "event_id": make_event_id("synthetic", "bench", i),
            "event_time": day0 + timedelta(days=i // 2000),
            "customer_id": f"{(i * 7919) % customers:064x}",  # H&M ids are 64 hex chars
            "article_id": f"{700000000 + (i * 104729) % 100000:010d}",
            "quantity": 1,
            "unit_price": round(0.0169 + (i % 97) / 5900.0, 6),
            "sales_channel_id": 2 if i % 10 < 7 else 1,
            "source": "synthetic",
            "produced_at": None,
        }


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


def bench_producer(settings: Settings, events: int, log=print) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Produce ``events`` with ``replay`` and with ProducerPerformance; print and return both."""
    from producers.replay import position_path, replay
    from runtime.kafka_admin import admin_client, create_topics

    run_id = uuid.uuid4().hex[:8]
    ours_topic, theirs_topic = f"bench-pulse-{run_id}", f"bench-kafka-{run_id}"
    for name in (ours_topic, theirs_topic):
        create_topics(settings.model_copy(update={"topic_transactions": name}), log=log)
    ours_settings = settings.model_copy(update={"topic_transactions": ours_topic})
    identity = {"source": "bench", "run": run_id, "topic": ours_topic}
    _wait_for_leaders(settings, [ours_topic, theirs_topic])

    try:
        stats = replay(
            bench_events(events),
            ours_settings,
            identity=identity,
            progress=False,
            log=log,
        )
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
    python_only = _python_ceiling(events)
    log(f"producer benchmark: {events:,} records of {record_size} B, acks=all, idempotent")
    log(f"{'':28}{'events/s':>12}{'MB/s':>10}")
    log(f"{'pulse replay (confluent)':28}{ours.records_per_s:>12,.0f}{ours.mb_per_s:>10.2f}")
    log(f"{'kafka ProducerPerformance':28}{theirs.records_per_s:>12,.0f}{theirs.mb_per_s:>10.2f}")
    log(f"{'python only (build+encode)':28}{python_only:>12,.0f}{'':>10}")
    ratio = ours.records_per_s / theirs.records_per_s
    log(f"ratio pulse / kafka: {ratio:.2f}")
    return {
        "record_size": record_size,
        "ours": ours,
        "theirs": theirs,
        "python_only_per_s": python_only,
        "ratio": ratio,
    }


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


def _python_ceiling(events: int) -> float:
    """Events/s of building and encoding the events alone: the bound Kafka cannot beat."""
    from producers.replay import TimestampText
    from schemas.transaction import encode

    stamps = TimestampText()
    started = time.perf_counter()
    for event in bench_events(events):
        wire = {**event, "event_time": stamps.event_time(event["event_time"])}
        wire["produced_at"] = stamps.produced_at()
        encode(wire)
    return events / (time.perf_counter() - started)

"""`GET /health` and `/metrics` against a real broker: the Kafka lag is the records a test
put in each partition minus the offsets the store's last stream report read to.

The store is written by hand (no stream): its meta holds the report ``LiveView.progress``
keeps (``serving.live.stream_summary`` of a Spark progress dict), so the expected lag
is plain arithmetic on counts the test chose.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

from api_server import Server

from pulse.chaos import lab
from serving.live import stream_summary
from serving.online import SqliteStore

CLOCK_US = 18_527 * 86_400_000_000


def _produce(settings, topic: str, per_partition: dict[int, int]) -> None:  # type: ignore[no-untyped-def]
    from confluent_kafka import Producer

    producer = Producer(settings.kafka_client_config())
    for partition, n in per_partition.items():
        for i in range(n):
            producer.produce(topic, value=b"{}", key=str(i).encode(), partition=partition)
    assert producer.flush(30) == 0


def _metric(server: Server, name: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=30) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


def test_lag_is_the_records_after_the_last_batch(kafka_settings, topic, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = kafka_settings.model_copy(
        update={"data_root": tmp_path, "topic_transactions": topic}
    )
    _produce(settings, topic, {0: 5, 1: 3})  # partition 2 stays empty
    # Spark's report of a batch that read partition 0 up to offset 2 and all of partition 1
    progress = {
        "batchId": 7, "numInputRows": 5, "inputRowsPerSecond": 40.0,
        "processedRowsPerSecond": 125.0, "durationMs": {"triggerExecution": 400},
        "sources": [{"endOffset": json.dumps({topic: {"0": 2, "1": 3, "2": 0}})}],
    }  # fmt: skip
    store = SqliteStore(settings.online_store_path)
    stream = stream_summary(progress, events_total=5)
    store.set_meta({"clock_us": CLOCK_US, "last_batch": 7, "written_at": time.time(),
                    "versions": {}, "stream": stream})  # fmt: skip
    store.close()

    server = Server([], env=lab.settings_env(settings))
    try:
        health = server.get("/health")
        assert health["kafka_lag"] == (5 - 2) + (3 - 3) + 0, health
        assert (health["events_per_s"], health["batch_seconds"], health["events_total"]) == (
            125.0, 0.4, 5,
        )  # fmt: skip
        assert health["clock"] == "2020-09-22T00:00:00+00:00" and health["last_batch"] == 7
        assert _metric(server, "pulse_kafka_lag_records") == 3
        assert _metric(server, "pulse_stream_events_total") == 5
        assert _metric(server, "pulse_stream_batch_duration_seconds") == 0.4

        _produce(settings, topic, {2: 4})  # four more, nobody reads them
        time.sleep(1.2)  # the end offsets are re-read at most once a second
        assert server.get("/health")["kafka_lag"] == 3 + 4
    finally:
        server.stop()


def test_an_unreachable_broker_leaves_health_answering(tmp_path: Path, base_settings) -> None:  # type: ignore[no-untyped-def]
    settings = base_settings.model_copy(
        update={"data_root": tmp_path, "kafka_bootstrap": f"127.0.0.1:{lab.free_port()}"}
    )
    progress = {"batchId": 0, "sources": [{"endOffset": json.dumps({"t": {"0": 1}})}]}
    store = SqliteStore(settings.online_store_path)
    store.set_meta({"clock_us": CLOCK_US, "written_at": time.time(),
                    "stream": stream_summary(progress, events_total=1)})  # fmt: skip
    store.close()
    server = Server([], env=lab.settings_env(settings))
    try:
        t0 = time.monotonic()
        status, health = server.call("GET", "/health")
        assert status == 200 and health["kafka_lag"] is None  # the view is fresh: still ok
        assert "Kafka end offsets unreadable" in health["kafka_lag_error"]
        assert time.monotonic() - t0 < 10
    finally:
        server.stop()

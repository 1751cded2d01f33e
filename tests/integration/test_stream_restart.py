"""Exactly once across a crash: `pulse stream` SIGKILLed mid-run, restarted on its checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pyspark.testing import assertDataFrameEqual

from runtime.settings import Settings
from schemas.transaction import encode, make_event_id, now_utc
from storage import snapshots

REPO = Path(__file__).resolve().parents[2]


def _events(n: int) -> list[dict]:
    from datetime import UTC, datetime, timedelta

    start = datetime(2020, 9, 1, tzinfo=UTC)
    out = []
    for i in range(n):
        out.append(
            {
                "event_id": make_event_id("synthetic", "restart", i),
                "event_time": start + timedelta(hours=7 * i),
                "customer_id": f"c{i % 23}",
                "article_id": f"a{i % 11}",
                "quantity": -1 if i % 17 == 0 else 1,
                "unit_price": round(1 + (i % 7) * 0.5, 2),
                "sales_channel_id": 1 + i % 2,
                "source": "synthetic",
                "produced_at": now_utc(),
            }
        )
    return out + out[:10]  # re-sent duplicates


def _produce(settings: Settings, events: list[dict]) -> None:
    from confluent_kafka import Producer

    producer = Producer(settings.kafka_client_config())
    for e in events:
        producer.produce(settings.topic_transactions, key=e["customer_id"], value=encode(e))
    assert producer.flush(30) == 0


def _stream_cmd(settings: Settings, until_idle: bool) -> tuple[list[str], dict[str, str]]:
    env = {
        **os.environ,
        "PULSE_DATA_ROOT": str(settings.data_root),
        "PULSE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "PULSE_TOPIC_TRANSACTIONS": settings.topic_transactions,
        "PULSE_MAX_OFFSETS_PER_TRIGGER": str(settings.max_offsets_per_trigger),
        "PULSE_TRIGGER_INTERVAL": "1 second",
        "PULSE_SPARK_DRIVER_MEMORY": "1g",
        "PULSE_SPARK_SHUFFLE_PARTITIONS": "2",
        "PULSE_JVM_CACHE": str(settings.jvm_cache),
    }
    cmd = [sys.executable, "-m", "pulse.cli", "stream"] + (["--until-idle"] if until_idle else [])
    return cmd, env


def _running_stream(
    settings: Settings, command: tuple[list[str], dict[str, str]], batches: int
) -> tuple[subprocess.Popen, Path]:
    """Start `pulse stream` and return once it has committed ``batches`` micro-batches
    (the process, still running, and its commits folder)."""
    cmd, env = command
    proc = subprocess.Popen(
        cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    commits = settings.checkpoint_dir / "stream" / "commits"
    deadline = time.monotonic() + 900  # JVM start is slow on a busy 2-core box
    while time.monotonic() < deadline and proc.poll() is None:
        if commits.is_dir() and len(list(commits.glob("[0-9]*"))) >= batches:
            break
        time.sleep(0.2)
    if proc.poll() is not None:
        pytest.fail(f"pulse stream exited: {proc.stdout.read().decode()[-2000:]}")
    return proc, commits


def _kill_mid_run(
    settings: Settings, command: tuple[list[str], dict[str, str]], reference: Settings
) -> None:
    """Start `pulse stream`, SIGKILL it once two batches are committed, and check that
    it really was mid-run (fewer commits than the uninterrupted ``reference`` run's)."""
    proc, commits = _running_stream(settings, command, batches=2)
    try:
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(30)
    killed_after = len(list(commits.glob("[0-9]*")))
    total_batches = len(list((reference.checkpoint_dir / "stream" / "commits").glob("[0-9]*")))
    assert 0 < killed_after < total_batches


def test_sigkill_and_restart_equals_uninterrupted_run(
    spark, kafka_settings, topic, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    from streaming.job import run

    base = kafka_settings.model_copy(
        update={"topic_transactions": topic, "max_offsets_per_trigger": 40}
    )
    _produce(base, _events(300))

    # The uninterrupted reference run, in-process.
    reference = base.model_copy(update={"data_root": tmp_path / "reference"})
    run(spark, reference, until_idle=True, log=lambda _: None)

    # The crashed run: a real process, SIGKILLed once its first batches are committed.
    crashed = base.model_copy(update={"data_root": tmp_path / "crashed"})
    _kill_mid_run(crashed, _stream_cmd(crashed, until_idle=False), reference)

    cmd, env = _stream_cmd(crashed, until_idle=True)
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, timeout=900)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert "counted" in done.stdout.decode()

    def lake(s: Settings):  # type: ignore[no-untyped-def]
        return spark.read.parquet(str(s.lake_dir))

    def features(s: Settings):  # type: ignore[no-untyped-def]
        return spark.read.parquet(str(snapshots.current(s.features_dir)))

    assert lake(reference).count() == 300
    assertDataFrameEqual(lake(crashed), lake(reference))
    assertDataFrameEqual(features(crashed), features(reference))


def test_sigint_publishes_the_final_snapshot(kafka_settings, topic, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Ctrl-C on a running stream: what it processed is published, though no snapshot was due."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    settings = kafka_settings.model_copy(
        update={
            "topic_transactions": topic,
            "max_offsets_per_trigger": 10_000,  # the whole topic in the first batch
            "data_root": tmp_path / "root",
        }
    )
    events = _events(300)
    _produce(settings, events)
    cmd, env = _stream_cmd(settings, until_idle=False)
    env["PULSE_SNAPSHOT_INTERVAL_SECONDS"] = "86400"  # only the stop can publish
    proc, _ = _running_stream(settings, (cmd, env), batches=1)
    try:
        assert snapshots.current(settings.features_dir) is None  # none published yet
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=300)[0].decode()
    finally:
        proc.kill()
        proc.wait(30)
    assert proc.returncode == 130, output[-2000:]
    assert "pulse: interrupted" in output
    published = snapshots.current(settings.features_dir)
    assert published is not None, output[-2000:]
    features = pq.read_table(published)
    assert sorted(features.column("customer_id").to_pylist()) == sorted(
        {e["customer_id"] for e in events}
    )
    assert pc.sum(features.column("n_events")).as_py() == 300  # the 10 re-sent ones once
    last = max(e["event_time"] for e in events)
    assert {t.replace(tzinfo=last.tzinfo) for t in features.column("as_of").to_pylist()} == {last}


def test_in_the_object_store_a_sigkill_and_a_restart_on_a_fresh_machine_equal_a_local_run(
    spark, kafka_settings, topic, tmp_path, s3_endpoint
) -> None:  # type: ignore[no-untyped-def]
    """The data root in S3: checkpoint, inbox, changelogs, lake and snapshots all there.
    The stream is SIGKILLed mid-run, then restarted with another local directory (a
    driver on a fresh machine): it resumes from the bucket alone, and its lake and live
    features equal an uninterrupted run's on a local disk, customer by customer."""
    import pyarrow.parquet as pq

    from runtime.settings import load_settings
    from storage import lake
    from storage.objects import s3_filesystem
    from streaming.job import run

    base = kafka_settings.model_copy(
        update={"topic_transactions": topic, "max_offsets_per_trigger": 40}
    )
    _produce(base, _events(300))
    reference = base.model_copy(update={"data_root": tmp_path / "reference"})
    run(spark, reference, until_idle=True, log=lambda _: None)

    where = s3_endpoint.settings(f"restart-{topic}")
    s3 = load_settings(**where, jvm_cache=base.jvm_cache)

    def command(machine: str, until_idle: bool) -> tuple[list[str], dict[str, str]]:
        cmd, env = _stream_cmd(base, until_idle)
        env |= {f"PULSE_{k.upper()}": v for k, v in where.items()}
        env["PULSE_LOCAL_DIR"] = str(tmp_path / machine)
        return cmd, env

    _kill_mid_run(s3, command("machine-1", until_idle=False), reference)

    cmd, env = command("machine-2", until_idle=True)
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, timeout=900)
    assert done.returncode == 0, done.stderr.decode()[-2000:]

    store = s3_filesystem(s3.s3_options())

    def lake_ids(s: Settings) -> list[str]:
        ids = lake.read_parquet(s, lake.live_files(s), ["event_id"])["event_id"]
        return sorted(ids.to_pylist())

    assert lake_ids(s3) == lake_ids(reference) and len(lake_ids(s3)) == 300
    published = snapshots.current(s3.features_dir)
    assert published is not None
    got = pq.ParquetDataset(str(published).removeprefix("s3://"), filesystem=store).read()
    want = pq.read_table(str(snapshots.current(reference.features_dir)))
    got_rows = {r["customer_id"]: r for r in got.to_pylist()}
    want_rows = {r["customer_id"]: r for r in want.to_pylist()}
    assert got_rows == want_rows
    for machine in ("machine-1", "machine-2"):  # nothing of the data root on local disk
        local = tmp_path / machine
        assert not local.exists() or not any(
            p.suffix in (".parquet", ".arrow", ".json") for p in local.rglob("*")
        )

"""The fault campaign's bench: real brokers, real `pulse stream` processes, real files.

Everything a case starts lives under one work directory and is stopped by the case
(``with`` blocks): a local KRaft broker from the project's jars on free ports, the
stream as a child process (``python -m pulse.cli stream``, configured only through
``PULSE_*`` variables, as a user would), and the replay producer on a thread. The
checks read what the stream wrote: the lake's Delta log and files, the quarantine's
Parquet files and the published feature snapshot, and recompute the features with
the batch layer's function over the lake. They read the data root where it is, on a
disk or in an object store (``s3://``: through ``storage.objects`` and ``s3a``).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from upath import UPath

from runtime.errors import PulseError
from runtime.settings import Settings, settings_env

REPO = Path(__file__).resolve().parents[2]
START = datetime(2020, 6, 1, tzinfo=UTC)  # first event of a generated replay
SPAN = timedelta(days=90)  # the replay's event-time span
CHUNK = 100_000  # rows per Arrow table handed to the producer

Log = Callable[[str], None]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now (never 9092/9093)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in (9092, 9093):
            return port


# --------------------------------------------------------------------------- events


def event_id(seed: int, row: int) -> str:
    """The id of generated row ``row`` (what the lake must hold, once)."""
    return f"chaos{seed}-{row:09d}"


def expected_ids(seed: int, n: int) -> pa.Array:
    """The ids of rows ``0 .. n-1``."""
    return pa.array([event_id(seed, i) for i in range(n)], pa.string())


def generate(n: int, seed: int, customers: int | None = None) -> Iterator[pa.Table]:
    """``n`` valid contract events in event-time order, as Arrow tables of ``CHUNK`` rows.

    Deterministic in (n, seed): H&M-like rows (one unit, a few returns, two channels)
    spread over ``SPAN`` from ``START``, ``customers`` (default n/20) customers.
    """
    rng = np.random.default_rng(seed)
    customers = customers or max(n // 20, 10)
    span_us = int(SPAN / timedelta(microseconds=1))
    offsets = np.sort(rng.integers(0, span_us, n)) // 1_000_000 * 1_000_000  # whole seconds
    start_us = int((START - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))
    for lo in range(0, n, CHUNK):
        hi = min(lo + CHUNK, n)
        k = hi - lo
        cust = rng.integers(0, customers, k)
        art = rng.integers(0, 5000, k)
        qty = np.where(rng.random(k) < 0.03, -1, 1).astype(np.int32)
        price = np.round(rng.uniform(1.0, 80.0, k), 2)
        channel = rng.integers(1, 3, k).astype(np.int32)
        yield pa.table(
            {
                "event_id": pa.array([event_id(seed, i) for i in range(lo, hi)], pa.string()),
                "event_time": pa.array(offsets[lo:hi] + start_us, pa.timestamp("us", tz="UTC")),
                "customer_id": pc.binary_join_element_wise(
                    "c", pa.array(cust).cast(pa.string()), ""
                ),
                "article_id": pc.binary_join_element_wise("a", pa.array(art).cast(pa.string()), ""),
                "quantity": pa.array(qty, pa.int32()),
                "unit_price": pa.array(price, pa.float64()),
                "sales_channel_id": pa.array(channel, pa.int32()),
                "source": pa.array(["synthetic"] * k, pa.string()),
            }
        )


# --------------------------------------------------------------------------- broker


@contextlib.contextmanager
def local_broker(base: Settings, root: Path, log: Log) -> Iterator[Settings]:
    """A single KRaft broker on free ports under ``root``; stopped (or killed) on exit."""
    from pulse.local import broker

    settings = base.model_copy(
        update={
            "data_root": root,
            "broker_port": free_port(),
            "controller_port": free_port(),
            "broker_heap": "512m",
        }
    )
    broker.start(settings, timeout_s=240, log=log)
    try:
        yield settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{settings.broker_port}"})
    finally:
        if broker.stop(settings, log=lambda _: None) is False:
            broker.kill(settings)


def create_topic(
    settings: Settings,
    partitions: int = 3,
    replication: int = -1,
    config: dict[str, str] | None = None,
) -> None:
    """The case's transactions topic (``replication`` -1: the cluster's default)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import NewTopic

    from runtime.kafka_admin import admin_client

    name = settings.topic_transactions
    topic = NewTopic(
        name, num_partitions=partitions, replication_factor=replication, config=config or {}
    )
    admin = admin_client(settings)  # held: a collected client never resolves its futures
    try:
        admin.create_topics([topic], operation_timeout=60)[name].result(timeout=90)
    except KafkaException as exc:
        raise PulseError(f"creating topic {name} failed: {exc.args[0].str()}") from None


def end_offsets(settings: Settings, timeout_s: float = 180.0) -> int:
    """Records in the topic: the sum of its partitions' end offsets.

    Retried until ``timeout_s``: after a broker died, a partition answers once its
    new leader is elected.
    """
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    from runtime.kafka_admin import admin_client

    topic = settings.topic_transactions
    deadline = time.monotonic() + timeout_s
    while True:
        consumer = Consumer({**settings.kafka_client_config(), "group.id": "pulse-chaos-peek"})
        try:
            meta = admin_client(settings).list_topics(topic, timeout=10).topics[topic]
            return sum(
                consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in meta.partitions
            )
        except (KafkaException, PulseError):
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)
        finally:
            consumer.close()


# ------------------------------------------------------------------------- producer


class Producer:
    """The replay producer (``producers.replay.replay``) on a thread."""

    def __init__(
        self,
        settings: Settings,
        tables: Iterator[pa.Table],
        *,
        name: str,
        inject: float = 0.0,
        kinds: Sequence[str] | None = None,
        seed: int = 0,
        rate: float | None = None,
        resume: bool = False,
    ) -> None:
        from producers.bad_records import BAD_KINDS
        from producers.replay import Pacing, ReplayOptions, ReplayStats

        self.stats: ReplayStats | None = None
        self.error: BaseException | None = None
        self._options = ReplayOptions(
            pacing=Pacing(rate=rate),
            identity={"source": name},
            resume=resume,
            inject_bad=inject,
            bad_kinds=tuple(kinds or BAD_KINDS),
            seed=seed,
            progress=False,
        )
        self._settings, self._tables = settings, tables
        self.thread = threading.Thread(target=self._run, name=f"chaos-producer-{name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from producers.replay import replay

        try:
            self.stats = replay(self._tables, self._settings, self._options, log=lambda _: None)
        except BaseException as exc:  # noqa: BLE001 - reported by result()
            self.error = exc

    def done(self) -> bool:
        """True once the replay returned."""
        return not self.thread.is_alive()

    def result(self, timeout_s: float = 3600, lossless: bool = True) -> Any:
        """The replay's stats; PulseError if it failed (or, ``lossless``, lost a record)."""
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            raise PulseError(f"the producer did not finish within {timeout_s:.0f} s")
        if self.error is not None:
            raise PulseError(f"the producer failed: {self.error}")
        stats = self.stats
        assert stats is not None
        if lossless and (stats.failed or stats.delivered != stats.sent):
            raise PulseError(
                f"the producer lost records: sent {stats.sent}, delivered {stats.delivered}, "
                f"failed {stats.failed} ({stats.first_error})"
            )
        return stats


# --------------------------------------------------------------------------- stream


class Stream:
    """`pulse stream` as a child process in its own process group (the JVM included)."""

    def __init__(self, settings: Settings, logfile: Path) -> None:
        self.settings = settings
        self.logfile = logfile
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0

    def env(self) -> dict[str, str]:
        """The child's environment: ours, with the case's settings as PULSE_* variables."""
        keep = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
        return {**keep, **settings_env(self.settings), "PYTHONUNBUFFERED": "1"}

    def start(self, until_idle: bool = False) -> None:
        """Start `pulse stream` (``--until-idle``: stop once caught up)."""
        cmd = [sys.executable, "-m", "pulse.cli", "stream"] + (
            ["--until-idle"] if until_idle else []
        )
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        with open(self.logfile, "ab") as out:
            out.write(f"--- start {self.starts + 1}: {' '.join(cmd[2:])}\n".encode())
            self.proc = subprocess.Popen(
                cmd, env=self.env(), cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        self.starts += 1

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (Python and its JVM) and reap the process."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        self.proc.wait(120)
        self._reap_group(self.proc.pid)
        if sig == signal.SIGKILL:
            self.kills += 1

    @staticmethod
    def _reap_group(pgid: int, timeout_s: float = 60.0) -> None:
        """Wait until no process of the group is left (the JVM dies with its parent)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)

    def wait(self, timeout_s: float = 1800) -> int:
        """Wait for the process to end; its exit code. PulseError (with the log) if not 0."""
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise PulseError(f"the stream did not finish within {timeout_s:.0f} s") from None
        self._reap_group(self.proc.pid)
        if code != 0:
            raise PulseError(f"the stream exited with code {code}:\n{self.tail()}")
        return code

    def late(self) -> int:
        """Events the stream logged as beyond the allowed lateness (lake only), all runs."""
        import re

        try:
            text = self.logfile.read_text(errors="replace")
        except OSError:
            return 0
        return sum(int(m) for m in re.findall(r"(?m)^batch \d+: .*? (\d+) late,", text))

    def tail(self, n: int = 12) -> str:
        """The last lines of the stream's log."""
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """End the process if it still runs (SIGTERM, then SIGKILL)."""
        if self.alive():
            self.kill(signal.SIGTERM)

    def progress(self) -> int:
        """Records the stream has started to read: the offsets of its latest planned batch."""
        return checkpoint_offsets(self.settings)

    def committed(self) -> int:
        """Micro-batches the checkpoint has committed."""
        commits = self.settings.checkpoint_dir / "stream" / "commits"
        return len(list(commits.glob("[0-9]*"))) if commits.is_dir() else 0


def checkpoint_offsets(settings: Settings) -> int:
    """Sum of the end offsets of the newest batch in the stream's checkpoint (0 if none)."""
    offsets = settings.checkpoint_dir / "stream" / "offsets"
    if not offsets.is_dir():
        return 0
    names = [int(p.name) for p in offsets.iterdir() if p.name.isdigit()]
    if not names:
        return 0
    try:
        last = (offsets / str(max(names))).read_text().splitlines()[-1]
        parts = json.loads(last)
    except (OSError, ValueError, IndexError):
        return 0
    return sum(int(v) for topic in parts.values() for v in topic.values())


def wait_until(check: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.2) -> None:
    """Poll ``check`` until true; PulseError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise PulseError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


def caught_up(stream: Stream, total: int) -> bool:
    """True once the stream has read ``total`` records and published their features.

    Needs ``snapshot_interval_seconds=0`` (a snapshot after every batch that counted
    something): the snapshot's name carries the last batch folded into it; a batch
    that counted nothing says so in the stream's log line.
    """
    planned = _planned(stream.settings)
    if stream.progress() < total or stream.committed() < planned:
        return False
    last = planned - 1
    if published_batch(stream.settings) >= last:
        return True
    # A batch that counted nothing (all quarantined, say) publishes no snapshot: done
    # once the stream has logged it.
    try:
        text = stream.logfile.read_text(errors="replace")
    except OSError:
        return False
    at = text.rfind(f"\nbatch {last}: ")
    if at < 0:
        return False
    line = text[at + 1 :].split("\n", 1)[0]
    return " 0 counted" in line


def published_batch(settings: Settings) -> int:
    """The last micro-batch in the published feature snapshot (-1 if none)."""
    path = snapshot_path(settings)
    if path is None:
        return -1
    try:
        return int(path.name.removeprefix("v=").split("-", 1)[0])
    except ValueError:
        return -1


def _planned(settings: Settings) -> int:
    offsets = settings.checkpoint_dir / "stream" / "offsets"
    return len([p for p in offsets.iterdir() if p.name.isdigit()]) if offsets.is_dir() else 0


# ---------------------------------------------------------------------------- checks


@dataclass
class LakeCheck:
    """What the lake holds against what was produced."""

    rows: int = 0  # rows in the lake's live files
    distinct: int = 0  # distinct event ids among them
    lost: int = 0  # expected ids not in the lake
    unexpected: int = 0  # ids in the lake nobody produced as valid
    version: int = -1  # the Delta table's version
    files: frozenset[str] = field(default_factory=frozenset)

    @property
    def doubled(self) -> int:
        """Rows beyond one per event id."""
        return self.rows - self.distinct


def _lake_event_ids(settings: Settings, files: list[str]) -> pa.Array:
    """Every row's event id in the lake's ``files`` (local paths or ``s3://`` URIs)."""
    from storage.lake import read_parquet

    return read_parquet(settings, files, ["event_id"]).column("event_id").combine_chunks()


def check_lake(settings: Settings, expected: pa.Array) -> LakeCheck:
    """Compare the lake's event ids with ``expected`` (each must be there exactly once)."""
    from deltalake import DeltaTable

    from storage.lake import live_files
    from storage.objects import delta_location

    files = live_files(settings)
    if not files:
        return LakeCheck(lost=len(expected))
    ids = _lake_event_ids(settings, files)
    distinct = pc.unique(ids)
    found = pc.sum(pc.is_in(expected, value_set=distinct)).as_py() or 0
    unexpected = pc.sum(pc.invert(pc.is_in(distinct, value_set=expected))).as_py() or 0
    uri, options = delta_location(settings.lake_dir)
    return LakeCheck(
        rows=len(ids),
        distinct=len(distinct),
        lost=len(expected) - found,
        unexpected=int(unexpected),
        version=DeltaTable(uri, storage_options=options).version(),
        files=frozenset(files),
    )


def lake_ids(settings: Settings) -> pa.Array:
    """The distinct event ids in the lake."""
    from storage.lake import live_files

    files = live_files(settings)
    if not files:
        return pa.array([], pa.string())
    return pc.unique(_lake_event_ids(settings, files))


def quarantine(settings: Settings) -> pa.Table:
    """Every quarantined record (value, partition, offset, reason)."""
    from storage.objects import read_parquet_file

    parts = sorted(settings.quarantine_dir.glob("batch=*/*.parquet"), key=str)
    if not parts:
        return pa.table(
            {
                "value": pa.array([], pa.binary()),
                "partition": pa.array([], pa.int32()),
                "offset": pa.array([], pa.int64()),
                "reason": pa.array([], pa.string()),
            }
        )
    columns = ["value", "partition", "offset", "reason"]
    tables = [read_parquet_file(p, columns=columns) for p in parts]
    return pa.concat_tables(tables, promote_options="permissive")


def snapshot_path(settings: Settings) -> UPath | None:
    """The stream's current feature snapshot (a local path, or an ``s3://`` one)."""
    from storage import snapshots

    return snapshots.current(settings.features_dir)


def features_equal_batch(
    spark: Any, settings: Settings, exclude_ids: pa.Array | None = None
) -> tuple[bool, str]:
    """The stream's published features against ``compute_features`` over the lake.

    ``exclude_ids``: lake events the stream rightly did not count (older than its
    allowed lateness: the lake keeps them for the batch layer). Returns (equal, note).
    """
    from pyspark.sql import functions as F
    from pyspark.testing import assertDataFrameEqual

    from features.customer import compute_features
    from pulse.oracle import reach_store
    from storage.lake import read_lake
    from storage.objects import spark_path

    path = snapshot_path(settings)
    if path is None:
        return False, "no feature snapshot published"
    reach_store(spark, settings)
    live = spark.read.parquet(spark_path(path))
    as_of = live.agg(F.max("as_of")).collect()[0][0]
    events = read_lake(spark, settings)
    if exclude_ids is not None and len(exclude_ids):
        skip = spark.createDataFrame([(i,) for i in exclude_ids.to_pylist()], "event_id string")
        events = events.join(F.broadcast(skip), "event_id", "left_anti")
    expected = compute_features(events, as_of.replace(tzinfo=UTC))
    try:
        assertDataFrameEqual(live, expected)
    except AssertionError as exc:
        return False, str(exc).splitlines()[0][:200]
    return True, f"{live.count():,} customers as of {as_of}"


def random_points(rng: random.Random, n: int, total: int) -> list[int]:
    """``n`` sorted random record counts spread over (3 %, 97 %) of ``total``."""
    return sorted(int(total * rng.uniform(0.03, 0.97)) for _ in range(n))


# --------------------------------------------------------------- Spark standalone


def spark_home() -> Path:
    """pyspark's own installation: it ships ``bin/spark-class`` and Spark's jars."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def _alive_workers(ui_port: int) -> int:
    """Workers the master lists as ALIVE (its web UI's JSON), 0 if it does not answer."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=5) as r:
            return int(json.load(r).get("aliveworkers", 0))
    except (OSError, ValueError):
        return 0


@contextlib.contextmanager
def spark_standalone(
    root: Path, log: Log, workers: int = 2, cores: int = 1, memory: str = "2g"
) -> Iterator[str]:
    """A Spark standalone master and ``workers`` workers on this machine; yields its URL.

    Started as a user would from pyspark's launcher (``spark-class ...Master`` and
    ``...Worker``), on free ports, logs and work directories under ``root``; each
    daemon in its own process group (a worker's executors are its children), stopped
    with SIGTERM, then SIGKILL, on exit.
    """
    spark_class = str(spark_home() / "bin" / "spark-class")
    root.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "SPARK_HOME": str(spark_home()),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_DAEMON_MEMORY": "256m",  # the daemons only schedule; executors get `memory`
    }
    port, ui_port = free_port(), free_port()
    url = f"spark://127.0.0.1:{port}"
    procs: list[subprocess.Popen[bytes]] = []

    def launch(name: str, *args: str) -> None:
        with open(root / f"{name}.log", "ab") as out:
            procs.append(
                subprocess.Popen(
                    [spark_class, *args],
                    env=env,
                    cwd=root,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )  # fmt: skip
            )

    try:
        launch(
            "master", "org.apache.spark.deploy.master.Master",
            "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(ui_port),
        )  # fmt: skip
        for i in range(1, workers + 1):
            launch(
                f"worker-{i}", "org.apache.spark.deploy.worker.Worker",
                "--host", "127.0.0.1", "--cores", str(cores), "--memory", memory,
                "--webui-port", str(free_port()), "--work-dir", str(root / f"worker-{i}"), url,
            )  # fmt: skip
        wait_until(
            lambda: _alive_workers(ui_port) >= workers or any(p.poll() is not None for p in procs),
            240,
            f"the Spark master to list {workers} workers",
            poll_s=1.0,
        )
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            raise PulseError(f"a Spark daemon exited (code {dead[0].returncode}); see {root}")
        log(f"Spark standalone {url}: {workers} workers, {cores} core(s) and {memory} each")
        yield url
    finally:
        for p in reversed(procs):  # workers first: they stop their executors
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(30)

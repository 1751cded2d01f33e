"""Case 8: the whole loop off one machine's disk, against the same loop in local mode.

A user's loop (``pulse ingest`` of a backfill, ``pulse produce`` of the rest,
``pulse stream --seed-from-lake``, ``pulse retrain``, ``pulse serve``), run twice on the
same generated data, each step a ``pulse`` child process configured by environment
alone:

- **local**: the data root on this disk, ``local[2]``;
- **store**: the data root in an object store (a SeaweedFS bucket), the stream and the
  retrain on a Spark standalone cluster whose two workers each have their own working
  directory and no data path; the stream SIGKILLed once mid-replay and restarted with
  another ``PULSE_LOCAL_DIR`` (a driver on a fresh machine), which then serves.

Both read a three-broker Kafka (replication 3, min ISR 2). The lake, the feature
snapshot, every retrain output and every answer the API serves (each customer's row,
the at-risk lists, the segments) must equal local mode's; the store run's served
answers must equal the independent batch computation (``pulse.oracle``); and no file
of the data root's kinds may appear under the store run's local directories (the
drivers', the workers', the children's working directory, Spark's scratch space).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from pulse.chaos import lab
from pulse.chaos.cases.case6_compare import FLOAT_REL, compare_runs
from pulse.chaos.cases.common import WAIT_S, CaseResult, Context, fill
from runtime.errors import PulseError
from runtime.settings import Settings, revalidated

REPLAY_DAYS = 30  # the stream's part of the data; the rest is backfilled
TAIL_DAYS = 3  # of those, the days replayed after the retrain
START = date(2020, 1, 1)
#: Files that only the data root holds: the lake's and outputs' Parquet, the state's
#: Arrow changelogs, Delta's and the registry's JSON, Spark's checkpoint files.
DATA_ROOT_SUFFIXES = (".parquet", ".arrow", ".json", ".crc", ".checkpoint")
DATA_ROOT_DIRS = ("_delta_log", "offsets", "commits", "sources", "state", "lake", "outputs")
#: Served fields that name a run, not an answer: the model versions are the retrain's
#: timestamps, so they differ between two runs by construction.
RUN_FIELDS = ("version", "written_at", "served_at", "registered_at", "trained_at")


def _env(settings: Settings, workdir: Path) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    return {
        **keep, **lab.settings_env(settings), "PYTHONUNBUFFERED": "1",
        "SPARK_LOCAL_DIRS": str(workdir / "spark-scratch"),
    }  # fmt: skip


def _cli(settings: Settings, workdir: Path, log: Path, *argv: str) -> float:
    """Run `pulse ARGV` in ``workdir`` as a user would; its seconds. PulseError if not 0."""
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with open(log, "ab") as out:
        out.write(f"--- pulse {' '.join(argv)}\n".encode())
        out.flush()
        code = subprocess.run(
            [sys.executable, "-m", "pulse.cli", *argv], env=_env(settings, workdir),
            cwd=workdir, stdout=out, stderr=subprocess.STDOUT, timeout=WAIT_S,
        ).returncode  # fmt: skip
    if code != 0:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        raise PulseError(f"`pulse {argv[0]}` exited {code}: {lines[-1] if lines else ''}")
    return time.monotonic() - t0


class _Stream(lab.Stream):
    """`pulse stream --seed-from-lake` in its own working directory."""

    def __init__(self, settings: Settings, logfile: Path, workdir: Path) -> None:
        super().__init__(settings, logfile)
        self.workdir = workdir

    def start(self, until_idle: bool = False) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pulse.cli", "stream", "--seed-from-lake"]
        cmd += ["--until-idle"] if until_idle else []
        with open(self.logfile, "ab") as out:
            out.write(f"--- start {self.starts + 1}: {' '.join(cmd[2:])}\n".encode())
            self.proc = subprocess.Popen(
                cmd, env=_env(self.settings, self.workdir), cwd=self.workdir, stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        self.starts += 1


def _get(url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if data else {}
    request = urllib.request.Request(url, data=data, headers=headers)
    with urllib.request.urlopen(request, timeout=60) as r:
        return json.load(r)


def _served(settings: Settings, workdir: Path, log: Path, ids: list[str]) -> dict[str, Any]:
    """Start `pulse serve` and read every answer it gives: each customer's row (in
    batches of 500), the at-risk lists in both orders, the segments."""
    port = lab.free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pulse.cli", "serve", "--port", str(port)],
            env=_env(settings, workdir), cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            if proc.poll() is not None:
                raise PulseError(f"`pulse serve` exited {proc.returncode}; see {log}")
            try:
                _get(f"{base}/models")
                return True
            except OSError:
                return False

        lab.wait_until(up, 120, "`pulse serve` to answer", poll_s=0.5)
        rows: dict[str, Any] = {}
        for i in range(0, len(ids), 500):
            got = _get(f"{base}/customers", {"ids": ids[i : i + 500]})
            rows |= {row["customer_id"]: row for row in got["customers"]}
            rows |= {cid: None for cid in got["unknown"]}
        return {
            "customers": rows,
            "at_risk_value": _get(f"{base}/at-risk?n=50&order=value")["rows"],
            "at_risk_probability": _get(f"{base}/at-risk?n=50&order=probability")["rows"],
            "segments": _get(f"{base}/segments"),
        }
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def _answer(value: Any) -> Any:
    """``value`` without the fields that name a run rather than an answer."""
    if isinstance(value, dict):
        return {k: _answer(v) for k, v in value.items() if not any(f in k for f in RUN_FIELDS)}
    if isinstance(value, list):
        return [_answer(v) for v in value]
    return value


def _same(a: Any, b: Any) -> bool:
    """Equal, floats to ``FLOAT_REL`` relative (a model fitted on the cluster sums its
    partitions in another order)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=FLOAT_REL, abs_tol=1e-12)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def compare_served(local: dict[str, Any], store: dict[str, Any]) -> list[str]:
    """How the store run's served answers differ from local mode's, customer by customer
    (by id), then list by list (in the order served); empty when they are the same."""
    out = []
    a, b = local["customers"], store["customers"]
    if a.keys() != b.keys():
        out.append(f"customers: {len(a.keys() ^ b.keys())} ids answered by one run only")
    differing = sorted(c for c in a.keys() & b.keys() if not _same(_answer(a[c]), _answer(b[c])))
    if differing:
        first, second = _answer(a[differing[0]]), _answer(b[differing[0]])
        fields = [f"{k} {first.get(k)!r} against {second.get(k)!r}" for k in first.keys()
                  | second.keys() if not _same(first.get(k), second.get(k))]  # fmt: skip
        out.append(f"{len(differing)} customers' rows differ, e.g. {differing[0]}: "
                   + "; ".join(sorted(fields)))  # fmt: skip
    for name in ("at_risk_value", "at_risk_probability", "segments"):
        if not _same(_answer(local[name]), _answer(store[name])):
            out.append(f"{name} differs")
    return out


def written_locally(dirs: list[Path]) -> dict[str, int]:
    """Files under ``dirs`` of the kinds only the data root holds, counted by kind."""
    found: dict[str, int] = {}
    for top in dirs:
        for path in top.rglob("*") if top.exists() else []:
            if not path.is_file():
                continue
            kind = path.suffix if path.suffix in DATA_ROOT_SUFFIXES else None
            if kind is None and any(part in DATA_ROOT_DIRS for part in path.parts[-3:-1]):
                kind = f"{path.parent.name}/"
            if kind is not None:
                found[kind] = found.get(kind, 0) + 1
    return found


def _loop(
    ctx: Context, s: Settings, root: Path, backfill: Path, source: Path, split: date,
    last: date, kill: bool, seconds: dict[str, float],
) -> list[Path]:  # fmt: skip
    """One run of the loop; the local directories it used.

    Ingest the backfill; replay all but the last ``TAIL_DAYS`` and stream them (the
    store run SIGKILLs its stream and restarts it elsewhere); retrain; replay the tail
    and stream it with the same command line, so the live view picks up the retrain's
    models and its batch state (the lambda correction) at its first batch, as a running
    stream does.
    """
    mode = root.name
    log = root / "pulse.log"
    cwd = root / "cwd"
    tail = last - timedelta(days=TAIL_DAYS - 1)
    seconds[f"{mode}_ingest"] = _cli(s, cwd, log, "ingest", f"synthetic:{backfill}")
    lab.create_topic(s, replication=3, config={"min.insync.replicas": "2"})

    def produce(first: date, end: date) -> float:
        return _cli(s, cwd, log, "produce", f"synthetic:{source}", "--start",
                    first.isoformat(), "--end", end.isoformat())  # fmt: skip

    seconds[f"{mode}_produce"] = produce(split, tail - timedelta(days=1))
    stream = _Stream(s, root / "stream.log", cwd)
    t0 = time.monotonic()
    try:
        if kill:
            stream.start()
            lab.wait_until(lambda: stream.committed() >= 4 or not stream.alive(), WAIT_S,
                           "the stream's fourth micro-batch", poll_s=0.5)  # fmt: skip
            if not stream.alive():
                raise PulseError(f"the stream exited before the kill:\n{stream.tail()}")
            at = stream.progress()
            stream.kill()
            ctx.log(f"case 8: stream SIGKILLed at {at:,} records read; restarting elsewhere")
            s = revalidated(s, local_dir=root / "driver-2")  # a driver on a fresh machine
            stream.settings = s
        stream.start(until_idle=True)
        stream.wait(WAIT_S)
        seconds[f"{mode}_stream"] = time.monotonic() - t0
        seconds[f"{mode}_retrain"] = _cli(s, cwd, log, "retrain")
        seconds[f"{mode}_produce"] += produce(tail, last)
        t0 = time.monotonic()
        stream.start(until_idle=True)
        stream.wait(WAIT_S)
        seconds[f"{mode}_stream"] += time.monotonic() - t0
    finally:
        stream.stop()
    return [cwd, root / "driver-1", root / "driver-2"]


def object_store_loop(ctx: Context) -> CaseResult:
    """The loop with an object-store data root on a Kafka and a Spark cluster, against
    local mode (see the module docstring)."""
    from producers.generator import generate
    from pulse.demo import _date_range, write_backfill
    from pulse.local.cluster import Cluster
    from pulse.local.s3 import s3_server
    from runtime.spark import use_object_store

    result = CaseResult("8 object store", "S3 data root, 3 brokers, 2 workers; 1 stream SIGKILL")
    root = ctx.root / "case8"
    customers = max(ctx.small // 5, 500)
    source = root / "source"
    generate(source, customers=customers, articles=2_000, start=START, days=150, seed=ctx.seed)
    last = _date_range(source)[1]
    split = last - timedelta(days=REPLAY_DAYS - 1)
    backfill = write_backfill(source, root / "backfill", before=split)
    seconds: dict[str, float] = {}
    ports = [(lab.free_port(), lab.free_port()) for _ in range(3)]
    cluster = Cluster.create(ctx.base.model_copy(update={"broker_heap": "512m"}), root, ports)
    cluster.start()
    try:
        with (
            s3_server(ctx.base, root / "s3") as endpoint,
            lab.spark_standalone(root / "spark", ctx.log) as master,
        ):
            common: dict[str, Any] = {
                "kafka_bootstrap": cluster.bootstrap,
                "trigger_interval": "1 second",
                "max_offsets_per_trigger": 400,
                "snapshot_interval_seconds": 0,
                "spark_driver_memory": "2g",
                "spark_executor_memory": "1g",
            }
            local = revalidated(
                ctx.base, **common, data_root=root / "local" / "data", spark_master="local[2]",
                topic_transactions="case8-local", local_dir=None,
            )  # fmt: skip
            store = revalidated(
                ctx.base, **common, **endpoint.settings("case8"), spark_master=master,
                topic_transactions="case8-store", local_dir=root / "store" / "driver-1",
            )  # fmt: skip
            _loop(ctx, local, root / "local", backfill, source, split, last, False, seconds)
            used = _loop(ctx, store, root / "store", backfill, source, split, last, True, seconds)
            served_store_settings = revalidated(store, local_dir=root / "store" / "driver-2")
            lake = lab.lake_ids(local)
            ids = sorted(set(_customer_ids(local)))
            served_local = _served(local, root / "local" / "cwd", root / "local" / "serve.log", ids)
            served_store = _served(served_store_settings, root / "store" / "cwd",
                                   root / "store" / "serve.log", ids)  # fmt: skip
            for mode, answers in (("local", served_local), ("store", served_store)):
                (root / f"served-{mode}.json").write_text(json.dumps(answers, indent=1))
            found = compare_runs(local, store, lake_run_columns=("produced_at",))
            served_diff = compare_served(served_local, served_store)
            spark = ctx.spark()
            use_object_store(spark, store)
            fill(result, served_store_settings, lake, spark)
            workers = sorted((root / "spark").glob("worker-*"))
            stray = written_locally([*used, *workers, root / "store" / "cwd" / "spark-scratch"])
    finally:
        cluster.stop()
    result.produced = len(lake)
    differences = found.differences + served_diff
    same = "identical to local mode: " + ", ".join([*found.compared, "served"])
    result.notes.insert(0, "differs from local mode: " + "; ".join(differences) if differences
                        else same)  # fmt: skip
    result.notes.insert(1, f"served answers compared for {len(ids):,} customers, at-risk 50 "
                           "by value and by probability, segments")  # fmt: skip
    result.notes.append(
        "nothing of the data root on local disk"
        if not stray
        else f"data-root files on local disk: {stray}"
    )
    result.notes.append(", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    if differences:
        result.error = differences[0]
    elif stray:
        result.error = f"data-root files written locally: {stray}"
    result.details = {
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "compared": found.compared + ["served"],
        "differences": differences,
        "order_sensitive_differences": found.known,
        "written_locally": stray,
        "customers_served": len(ids),
    }
    return result


def _customer_ids(settings: Settings) -> list[str]:
    """Every customer in the local run's lake."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from storage.lake import live_files

    table = pq.ParquetDataset(live_files(settings)).read(columns=["customer_id"])
    return [str(c) for c in pc.unique(table["customer_id"]).to_pylist()]

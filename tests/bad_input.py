"""Bad command-line input, command by command: one clear line, a non-zero exit, nothing left.

The cases, and how one is run and checked; the tests that run them are
tests/unit/test_bad_input.py and tests/integration/test_bad_input_broker.py.

Each case runs the real ``pulse`` executable in a subprocess, on a fresh data root, and
checks what a user sees: exactly one line on stderr naming the problem (a distinctive
fragment of it: the bad value, file or variable), a non-zero exit code, no traceback on
either stream, an exit within a bounded time, and no process of the run still alive
afterwards (every process the run started carries a marker in its environment, which
/proc shows even for a daemon that left the process group).

Unit cases start no JVM and talk to no broker: PULSE_KAFKA_BOOTSTRAP points at a closed
port, so nothing reaches a broker someone else runs on 9092. They run three at a time
(mostly waiting), each timed alone. The integration cases use the session's real broker
(tests/conftest.py) for a topic that does not exist.

A case belongs here once the command prints its one line; a command that does not
yet is listed in the issue, not here with an expectation bent to fit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

PULSE = Path(sys.executable).with_name("pulse")
MARK = "PULSE_BAD_INPUT_RUN"  # not a setting: pydantic-settings ignores unknown PULSE_ names
UNIT_TIMEOUT_S = 60  # the slowest unit case, `stream` against a closed port, takes ~15 s
BROKER_TIMEOUT_S = 90
GRACE_S = 10  # a JVM child may outlive its Python parent by a moment; never longer

HM_HEADER = "t_dat,customer_id,article_id,price,sales_channel_id\n"


@dataclass(frozen=True)
class Case:
    """One bad invocation: arguments after ``--data-root``, and the fragment the error names.

    ``{closed}`` in ``argv``, ``env`` or ``fragment`` is replaced by a port nobody listens on,
    ``{busy}`` by one the test listens on, ``{broker}`` by the session broker's servers.
    """

    id: str
    argv: list[str]
    fragment: str
    env: dict[str, str] = field(default_factory=dict)
    prepare: Callable[[Path], None] | None = None


def registered_commands() -> set[str]:
    """The subcommands `pulse` has now (building the parser imports no JVM library)."""
    from pulse.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return set(sub.choices)  # type: ignore[arg-type]


def publish_view(data_root: Path) -> None:
    """A customer view holding one customer, written without Spark.

    Both places `pulse view` has read from: the Parquet snapshot, and the online store
    (an empty one) where that module exists; the view is moving to the online store.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from storage import snapshots

    table = pa.table(
        {
            "customer_id": ["known"],
            "as_of": [datetime(2020, 9, 22, tzinfo=UTC)],
            "recency_days": [1],
            "churn_probability": [0.5],
        }
    )

    def write(directory: Path) -> None:
        directory.mkdir()
        pq.write_table(table, directory / "part-0.parquet")

    snapshots.publish(data_root / "serving" / "customer_view", write)
    from runtime.settings import Settings, load_settings

    if "online_store" not in Settings.model_fields:
        return
    from serving.online import open_store

    open_store(load_settings(data_root=data_root, online_store="sqlite")).close()


def lake_from_2020_01_05(data_root: Path) -> None:
    """A lake whose first (and only) day is 2020-01-05, written as ingest writes it (no Spark)."""
    from producers.adapters import open_source
    from runtime.settings import load_settings
    from storage.lake import write_events

    csv = data_root.parent / "one_day.csv"
    csv.write_text(HM_HEADER + "2020-01-05,c1,0100000001,0.01,2\n")
    settings = load_settings(data_root=data_root)
    for batch in open_source(f"hm:{csv}").iter_batches():
        write_events(settings, batch, "test", 0)


UNIT_CASES = [
    # the program itself
    Case("no-command", [], "the following arguments are required: COMMAND"),
    Case("unknown-command", ["frobnicate"], "invalid choice: 'frobnicate'"),
    # settings: environment variables and the global flags that override them
    Case(
        "setting-not-a-number",
        ["topics", "create"],
        "PULSE_TOPIC_PARTITIONS='three'",
        env={"PULSE_TOPIC_PARTITIONS": "three"},
    ),
    Case(
        "setting-port-out-of-range",
        ["broker", "start"],
        "PULSE_BROKER_PORT='99999'",
        env={"PULSE_BROKER_PORT": "99999"},
    ),
    Case(
        "setting-trigger-interval",
        ["stream"],
        "PULSE_TRIGGER_INTERVAL='5s'",
        env={"PULSE_TRIGGER_INTERVAL": "5s"},
    ),
    Case(
        "setting-spark-memory",
        ["retrain"],
        "PULSE_SPARK_DRIVER_MEMORY='lots'",
        env={"PULSE_SPARK_DRIVER_MEMORY": "lots"},
    ),
    Case(
        "flag-topic-name",
        ["--topic", "my topic", "produce", "shop"],
        "PULSE_TOPIC_TRANSACTIONS='my topic'",
    ),
    # setup and the local broker
    Case(
        "setup-without-java",
        ["setup"],
        "`java` not found on PATH",
        env={"PATH": "/nonexistent", "PULSE_JVM_CACHE": "jvm-empty"},
    ),
    Case(
        "broker-without-jars",
        ["broker", "start"],
        "Kafka broker jars missing in jvm-empty/kafka-",
        env={"PULSE_JVM_CACHE": "jvm-empty"},
    ),
    Case(
        "broker-port-in-use",
        ["--broker-port", "{busy}", "broker", "start"],
        "port {busy} on 127.0.0.1 is already in use",
        env={"PULSE_CONTROLLER_PORT": "{closed}"},
    ),
    Case(
        "topics-unreachable-broker",
        ["--bootstrap", "127.0.0.1:{closed}", "topics", "create"],
        "Kafka at 127.0.0.1:{closed} is unreachable",
    ),
    # data
    Case(
        "generate-missing-articles-file",
        ["data", "generate", "--customers", "10", "--articles", "missing.csv", "--out", "gen"],
        "articles file not found: missing.csv",
    ),
    Case("profile-folder-without-transactions", ["data", "profile", "empty"], "empty: no transac"),
    Case(
        "inspect-wrong-columns",
        ["data", "inspect", "hm:wrong_columns.csv"],
        "missing column(s) t_dat",
    ),
    # produce
    Case("produce-missing-file", ["produce", "nope.csv"], "source not found: nope.csv"),
    Case(
        "produce-wrong-columns",
        ["produce", "wrong_columns.csv"],
        "wrong_columns.csv: not an Online Retail file, missing column InvoiceNo",
    ),
    Case("produce-bad-date", ["produce", "shop", "--end", "2020-02-30"], "'2020-02-30'"),
    Case(
        "produce-end-before-start",
        ["produce", "shop", "--start", "2020-02-01", "--end", "2020-01-31"],
        "--end 2020-01-31 is before --start 2020-02-01",
    ),
    Case("produce-zero-speedup", ["produce", "shop", "--speedup", "0"], "--speedup must be pos"),
    Case(
        "produce-speedup-and-rate",
        ["produce", "shop", "--speedup", "1", "--rate", "2"],
        "not allowed with argument --speedup",
    ),
    Case("produce-limit-zero", ["produce", "shop", "--limit", "0"], "--limit: not a whole number"),
    Case(
        "produce-unreachable-broker",
        ["--bootstrap", "127.0.0.1:{closed}", "produce", "shop"],
        "Kafka at 127.0.0.1:{closed} is unreachable",
    ),
    # stream
    Case(
        "stream-unreachable-broker",
        ["--bootstrap", "127.0.0.1:{closed}", "stream", "--until-idle"],
        "Kafka at 127.0.0.1:{closed} is unreachable",
    ),
    # ingest, retrain, report
    Case(
        "ingest-wrong-columns",
        ["ingest", "hm:wrong_columns.csv"],
        "wrong_columns.csv: not an H&M transactions file",
    ),
    Case("ingest-folder-without-transactions", ["ingest", "hm:empty"], "empty: no transactions"),
    Case("ingest-empty-csv", ["ingest", "online_retail:blank.csv"], "blank.csv: the file is empty"),
    Case("ingest-amazon-no-reviews", ["ingest", "amazon:empty"], "empty: no Amazon reviews file"),
    Case(
        "ingest-amazon-not-gzip",
        ["ingest", "amazon:broken.json.gz"],
        "broken.json.gz: cannot read (Not a gzipped file",
    ),
    Case(
        "produce-amazon-wrong-file",
        ["produce", "amazon:wrong.jsonl"],
        "wrong.jsonl: not an Amazon reviews file, its first record has keys a",
    ),
    Case("produce-empty-csv", ["produce", "hm:blank.csv"], "blank.csv: the file is empty"),
    Case("demo-negative-speedup", ["demo", "--speedup", "-5"], "not a number above zero: '-5'"),
    Case(
        "generate-out-is-a-file",
        ["data", "generate", "--customers", "5", "--articles", "3", "--out", "blank.csv"],
        "--out blank.csv: a file is there",
    ),
    Case("retrain-bad-date", ["retrain", "--as-of", "2020-13-01"], "'2020-13-01'"),
    Case("retrain-bad-interval", ["retrain", "--every", "soon"], "--every: not an interval"),
    Case("retrain-zero-interval", ["retrain", "--every", "0"], "not an interval above zero"),
    Case("retrain-unknown-model", ["retrain", "--models", "all"], "invalid choice: 'all'"),
    Case("retrain-empty-lake", ["retrain"], "is empty: run `pulse ingest SOURCE`"),
    Case(
        "retrain-cutoff-before-lake",
        ["retrain", "--as-of", "2020-01-05"],
        "--as-of 2020-01-05: no events before it, the lake starts on 2020-01-05",
        prepare=lake_from_2020_01_05,
    ),
    Case("report-no-model-yet", ["report"], "no trained model in"),
    Case("compact-empty-lake", ["compact"], "is empty: run `pulse ingest SOURCE`"),
    # view, demo, bench
    Case("view-nothing-published", ["view", "known"], "(run `pulse stream`"),
    Case(
        "view-unknown-customer",
        ["view", "nobody"],
        "unknown customer 'nobody'",
        prepare=publish_view,
    ),
    Case("view-no-customer-given", ["view"], "give a CUSTOMER_ID or --at-risk N"),
    Case("demo-missing-source", ["demo", "--source", "hm:nowhere"], "nowhere is not a folder"),
    Case("demo-missing-amazon", ["demo", "--source", "amazon:nowhere"], "nowhere not found"),
    Case(
        "generate-amazon-articles-file",
        ["data", "generate", "--layout", "amazon", "--customers", "5", "--articles", "blank.csv"]
        + ["--out", "gen"],
        "--layout amazon: --articles takes a number of products",
    ),
    Case("bench-zero-events", ["bench", "stream", "--events", "0"], "not a whole number >= 1"),
    Case("bench-view-store", ["bench", "view", "--store", "mongo"], "invalid choice: 'mongo'"),
    Case("view-at-risk-word", ["view", "--at-risk", "lots"], "not a whole number >= 1: 'lots'"),
    Case("serve-exposed-without-token", ["serve", "--host", "0.0.0.0"], "set PULSE_API_TOKEN"),
    Case("serve-port-word", ["serve", "--port", "http"], "not a whole number >= 1: 'http'"),
    Case("serve-zero-workers", ["serve", "--workers", "0"], "not a whole number >= 1: '0'"),
    Case(
        "bench-serve-store",
        ["bench", "serve", "--store", "sqlite,mongo"],
        "not a comma list of sqlite/redis: 'sqlite,mongo'",
    ),
    Case(
        "bench-serve-clients",
        ["bench", "serve", "--clients", "1,0"],
        "not a comma list of whole numbers >= 1: '1,0'",
    ),
    Case("bench-zero-size", ["bench", "batch", "--sizes", "0"], "--sizes: not a whole number"),
    Case("bench-producer-no-events", ["bench", "producer", "--events", "-5"], "'-5'"),
    # sql: read-only queries over the catalog
    Case("sql-unknown-table", ["sql", "SELECT * FROM nowhere"], "unknown table 'nowhere'"),
    Case("sql-syntax", ["sql", "SELEC 1"], 'SQL syntax error: syntax error at or near "SELEC"'),
    Case("sql-drop", ["sql", "DROP TABLE transactions"], "DROP is not allowed"),
    Case("sql-absent-table", ["sql", "SELECT * FROM churn_scores"], "`pulse retrain` creates it"),
    # backtest: the schedule is checked before a Spark session starts
    Case("backtest-empty-lake", ["backtest"], "is empty: run `pulse ingest SOURCE`"),
    Case("backtest-zero-step", ["backtest", "--every", "0d"], "not a step (month, or days"),
    Case("backtest-bad-date", ["backtest", "--from", "2011-13-01"], "'2011-13-01'"),
    Case("backtest-unknown-model", ["backtest", "--models", "segments"], "invalid choice"),
    Case(
        "backtest-window-past-the-lake",
        ["backtest", "--from", "2020-01-06", "--to", "2020-01-06", "--every", "7d"],
        "the window after 2020-01-06 (30 days) runs past the lake's last event (2020-01-05)",
        prepare=lake_from_2020_01_05,
    ),
    # chaos (the fault campaign): refused before any broker or stream starts
    Case("chaos-unknown-case", ["chaos", "--cases", "1,12"], "unknown case '12'"),
    Case("chaos-cases-not-numbers", ["chaos", "--cases", "kill"], "case numbers: 'kill'"),
    Case("chaos-zero-events", ["chaos", "--events", "0"], "not a whole number >= 1: '0'"),
]

BROKER_CASES = [
    Case(
        "produce-missing-topic",
        ["--bootstrap", "{broker}", "--topic", "pulse-no-such-topic", "produce", "shop"],
        "topic pulse-no-such-topic does not exist",
    ),
    Case(
        "stream-missing-topic",
        ["--bootstrap", "{broker}", "--topic", "pulse-no-such-topic", "stream", "--until-idle"],
        "topic 'pulse-no-such-topic' does not exist",
    ),
]


def write_inputs(cwd: Path) -> None:
    """The files the cases name, relative to the working directory."""
    (cwd / "wrong_columns.csv").write_text("a,b\n1,2\n")
    (cwd / "blank.csv").write_text("")
    (cwd / "wrong.jsonl").write_text('{"a": 1}\n')
    (cwd / "broken.json.gz").write_bytes(b"not gzip\n")
    (cwd / "empty").mkdir()
    (cwd / "jvm-empty").mkdir()
    shop = cwd / "shop"
    shop.mkdir()
    (shop / "transactions_train.csv").write_text(
        HM_HEADER + "2020-01-01,c1,0100000001,0.01,2\n2020-01-02,c2,0100000002,0.02,1\n"
    )


def marked_processes(marker: str) -> list[str]:
    """Live processes whose environment carries ``MARK=marker``: the run's descendants."""
    needle = f"{MARK}={marker}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if needle not in (proc / "environ").read_bytes().split(b"\0"):
                continue
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        found.append(f"pid {proc.name}: {cmdline[:200]}")
    return found


@dataclass(frozen=True)
class Run:
    """What one case's run showed."""

    case: Case
    fragment: str
    returncode: int | None  # None: killed at the time limit
    out: str
    err: str
    seconds: float
    left: list[str]  # processes of the run alive GRACE_S after it exited


def run_case(case: Case, tmp_path: Path, timeout_s: float, **values: str) -> Run:
    """Run ``pulse --data-root <fresh> <argv>`` in ``tmp_path``; kill whatever it leaves."""
    write_inputs(tmp_path)
    data_root = tmp_path / "data"
    data_root.mkdir()
    if case.prepare is not None:
        case.prepare(data_root)
    marker = uuid.uuid4().hex
    ours = {"PULSE_KAFKA_BOOTSTRAP": "127.0.0.1:{closed}", **case.env}  # never a broker on 9092
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    env |= {k: v.format(**values) for k, v in ours.items()} | {MARK: marker}
    argv = [str(PULSE), "--data-root", str(data_root), *(a.format(**values) for a in case.argv)]

    began = time.monotonic()
    proc = subprocess.Popen(
        argv,
        cwd=tmp_path,  # no .env of the checkout is read
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    returncode: int | None
    try:
        out, err = proc.communicate(timeout=timeout_s)
        returncode = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        returncode = None
    seconds = time.monotonic() - began

    deadline = time.monotonic() + GRACE_S
    while (left := marked_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for line in left:  # do not leave them to the next test either
        os.kill(int(line.split()[1].rstrip(":")), signal.SIGKILL)
    return Run(case, case.fragment.format(**values), returncode, out, err, seconds, left)


def check(run: Run, timeout_s: float) -> None:
    """One line naming the problem, a non-zero exit, no traceback, in time, nothing left."""
    shown = (
        f"exit {run.returncode} after {run.seconds:.1f}s\nstdout:\n{run.out}\nstderr:\n{run.err}"
    )
    assert run.returncode is not None, f"still running after {timeout_s}s, killed\n{shown}"
    assert "Traceback" not in run.out + run.err, shown
    assert run.returncode != 0, shown
    lines = run.err.strip().splitlines()
    assert len(lines) == 1, f"expected exactly one line on stderr\n{shown}"
    assert "error" in lines[0] and run.fragment in lines[0], f"expected {run.fragment!r}\n{shown}"
    assert not run.left, f"processes outlived the run by {GRACE_S}s: {run.left}\n{shown}"

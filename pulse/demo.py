"""`pulse demo`: the whole lambda loop end to end, as the real CLI steps.

Every step is the `pulse` command a user would type, run as a child process:
broker start, topics create, data generate, ingest (backfill of all but the last
``replay_days``: a copy of the source cut at the split, H&M or Amazon layout), a first
retrain, then the stream in the background (its state
seeded from the backfilled lake), a paced replay of the last ``replay_days`` into
Kafka, periodic churn retrains while the stream runs, a live line per tick showing one
customer's churn probability moving, and finally the report. Everything is
stopped in ``finally``: each child runs in its own process group (so a Ctrl-C
reaches the demo only, and the demo stops the groups in order), and an
``atexit`` hook repeats the kill for exits that skip ``finally``.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from runtime.errors import PulseError
from runtime.settings import Settings
from storage.objects import local_path

TICK_SECONDS = 5.0
CATCH_UP_TIMEOUT = 300.0


@dataclass(frozen=True)
class DemoOptions:
    """What `pulse demo` runs on (generated data unless ``source`` is given)."""

    source: str | None = None
    customers: int = 50_000
    articles: int = 5_000
    days: int = 730
    replay_days: int = 90
    speedup: float = 86_400.0
    retrain_every: int = 60
    seed: int = 42
    start: date = date(2018, 9, 20)


class Children:
    """Child processes, each in its own process group; ``stop_all`` ends every group."""

    def __init__(self, log_dir: Path, prefix_len: int = 3) -> None:
        self.log_dir = log_dir
        self.prefix_len = prefix_len  # argv items before the subcommand (not printed)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        atexit.register(self.stop_all)

    def start(self, name: str, argv: list[str], foreground: bool = False) -> subprocess.Popen:
        """Start ``argv``; output to the terminal (foreground) or ``log_dir/<name>.log``."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        out = None if foreground else open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT if out else None,
                                start_new_session=True)  # fmt: skip
        if out is not None:
            out.close()  # the child holds its own descriptor
        self.procs[name] = proc
        return proc

    def run(self, name: str, argv: list[str]) -> None:
        """Run a foreground step to completion; PulseError if it fails."""
        began = time.monotonic()
        print(f"\n== {name}: pulse {' '.join(argv[self.prefix_len :])}", flush=True)
        code = self.start(name, argv, foreground=True).wait()
        self.procs.pop(name, None)
        if code != 0:
            raise PulseError(f"demo step {name!r} failed with exit code {code}")
        print(f"== {name}: done in {time.monotonic() - began:.1f}s", flush=True)

    def stop(self, name: str, grace: float = 30.0) -> None:
        """SIGINT the group (lets Spark/producers flush), then SIGTERM, then SIGKILL."""
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # Spark's JVM is a child of the Python driver, in the same group: make sure it's gone.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def stop_all(self) -> None:
        """Stop every child still running (newest first)."""
        for name in reversed(list(self.procs)):
            self.stop(name, grace=10.0)


def _date_range(source_dir: Path, kind: str = "hm") -> tuple[date, date]:
    """First and last ``t_dat`` of an H&M-layout folder (DuckDB scan, no Spark); for
    ``kind`` amazon, the first and last accepted review's date (read by the adapter)."""
    if kind == "amazon":
        return _amazon_date_range(source_dir)
    import duckdb

    for name in (
        "transactions_train.parquet",
        "transactions_train.csv",
        "transactions_train.csv.gz",
    ):
        path = source_dir / name
        if path.exists():
            reader = "read_parquet" if name.endswith("parquet") else "read_csv"
            opts = "" if reader == "read_parquet" else ", all_varchar=true"
            row = duckdb.sql(
                f"select min(t_dat)::date, max(t_dat)::date from {reader}('{path}'{opts})"
            ).fetchone()
            if row is None or row[0] is None:
                raise PulseError(f"{path} holds no transactions")
            return row[0], row[1]
    raise PulseError(f"{source_dir}: no transactions_train.csv[.gz] or .parquet")


def _amazon_date_range(path: Path) -> tuple[date, date]:
    from producers.adapters import open_source

    first = last = None
    for batch in open_source(f"amazon:{path}").iter_batches():
        first = first or batch.column("event_time")[0].as_py()
        last = batch.column("event_time")[-1].as_py()
    if first is None or last is None:
        raise PulseError(f"{path} holds no valid reviews")
    return first.date(), last.date()


def write_backfill(source_dir: Path, out_dir: Path, before: date, kind: str = "hm") -> Path:
    """Copy an H&M-layout folder keeping only transactions with ``t_dat < before``.

    Rows keep their text and order exactly, so the adapters give them the same event ids
    as when the full folder is replayed. Dimension files and the generator marker are
    linked as they are. ``kind`` amazon: an Amazon folder or reviews file, copied as an
    ``amazon:`` folder of the reviews dated before ``before``, lines verbatim
    (``producers.amazon.write_reviews_before``).
    """
    if kind == "amazon":
        from producers.amazon import write_reviews_before

        return write_reviews_before(source_dir, out_dir, before)
    import duckdb

    out_dir.mkdir(parents=True, exist_ok=True)
    for path in source_dir.iterdir():
        if not path.name.startswith("transactions_train") and path.is_file():
            target = out_dir / path.name
            if not target.exists():
                os.symlink(path.resolve(), target)
    src = next(
        source_dir / n
        for n in (
            "transactions_train.parquet",
            "transactions_train.csv",
            "transactions_train.csv.gz",
        )
        if (source_dir / n).exists()
    )
    reader = (
        f"read_parquet('{src}')"
        if src.suffix == ".parquet"
        else f"read_csv('{src}', all_varchar=true)"
    )
    target = out_dir / "transactions_train.csv"
    con = duckdb.connect()
    con.sql("SET preserve_insertion_order = true")
    con.sql("SET enable_progress_bar = false")
    con.sql(
        f"COPY (SELECT * FROM {reader} WHERE CAST(t_dat AS VARCHAR) < '{before.isoformat()}') "
        f"TO '{target}' (HEADER, DELIMITER ',')"
    )
    return out_dir


def _latest_view(settings: Settings) -> Any:
    """The current view snapshot as a pyarrow Table, or None."""
    import pyarrow.dataset as ds

    from storage import snapshots

    path = snapshots.current(settings.serving_dir)
    if path is None:
        return None
    try:
        return ds.dataset(str(path), format="parquet", exclude_invalid_files=True).to_table()
    except (FileNotFoundError, OSError):  # cleaned up between CURRENT and the read
        return None


def _view_as_of(settings: Settings) -> Any:
    """The stream clock the online store was last written at (a datetime), or None.

    The live view writes it after each micro-batch's customers are stored:
    waiting on it means the last batch is fully served before the stream is stopped.
    """
    from serving.read import live_clock

    try:
        return live_clock(settings)
    except PulseError:  # no store yet
        return None


def _customer_to_watch(view: Any) -> str:
    """A recent buyer whose churn probability is nearest 0.5: the one most likely to move
    visibly as they buy again or go quiet (the most active buyer if no score yet)."""
    import pyarrow.compute as pc

    recent = view.filter(pc.less_equal(view["recency_days"], 14))
    probs = recent["churn_probability"] if recent.num_rows else None
    if probs is not None and probs.null_count < len(probs):
        distance = pc.abs(pc.subtract(probs, 0.5))
        return recent["customer_id"][pc.index(distance, pc.min(distance)).as_py()].as_py()
    i = pc.index(view["n_events_30d"], pc.max(view["n_events_30d"])).as_py()
    return view["customer_id"][i].as_py()


# The stream's log lines the demo echoes: each batch's latency, the live view's rounds,
# a retrained model or batch state picked up, each full snapshot.
SHOWN_STREAM_LINES = ("batch ", "live view", "model picked up", "snapshot ")


class Watcher:
    """Prints, per tick: the stream's new batch and model pick-up lines (from its log),
    and one customer's live view, looked up in the online store, when it changed."""

    def __init__(self, settings: Settings, stream_log: Path | None = None) -> None:
        self.settings = settings
        self.stream_log = stream_log
        # Start at the log's end: what the stream printed before is not news.
        self.log_offset = stream_log.stat().st_size if stream_log and stream_log.exists() else 0
        self.customer: str | None = None
        self.last_line = ""

    def _stream_lines(self) -> None:
        if self.stream_log is None or not self.stream_log.exists():
            return
        with self.stream_log.open("rb") as f:
            f.seek(self.log_offset)
            chunk = f.read()
        done = chunk.rfind(b"\n") + 1
        self.log_offset += done
        for line in chunk[:done].decode(errors="replace").splitlines():
            if line.startswith(SHOWN_STREAM_LINES):
                print(f"[stream] {line}", flush=True)

    def tick(self) -> None:
        """Echo the stream's progress; print the watched customer if their row changed."""
        from serving.read import lookup

        self._stream_lines()
        if self.customer is None:
            view = _latest_view(self.settings)
            if view is None or view.num_rows == 0:
                return
            self.customer = _customer_to_watch(view)
        try:
            row = lookup(self.settings, self.customer)
        except PulseError:
            return
        p = row["churn_probability"]
        line = (
            f"[view] as_of {row['as_of']:%Y-%m-%d} | customer {self.customer[:12]}... "
            f"churn_p={'-' if p is None else f'{p:.3f}'} recency={row['recency_days']}d "
            f"events30d={row['n_events_30d']} | churn model {row['churn_model_version'] or '-'}"
        )
        if line != self.last_line:
            print(line, flush=True)
            self.last_line = line


def run_demo(settings: Settings, options: DemoOptions) -> int:
    """Run the demo loop; returns 0 on success. Leaves no child process running."""
    from pulse.local import broker

    data_root = local_path(settings.data_root, "`pulse demo`").resolve()
    settings = settings.model_copy(update={"data_root": data_root})
    cli = _cli_of(settings)
    if options.source:  # bad input fails before anything starts
        kind, source_dir = _source(options.source)
        first, last = _date_range(source_dir, kind)
    children = Children(data_root / "demo-logs", prefix_len=len(cli))
    began = time.monotonic()
    # A SIGTERM to the demo must run the same cleanup as Ctrl-C.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    broker_started = False
    try:
        children.run("setup", [*cli, "setup"])
        children.run("broker", [*cli, "broker", "start"])
        broker_started = True
        children.run("topics", [*cli, "topics", "create"])

        if not options.source:
            kind, source_dir = "synthetic", data_root / "generated"
            if not (source_dir / "_pulse_generated.json").exists():
                children.run("generate", [
                    *cli, "data", "generate", "--customers", str(options.customers),
                    "--articles", str(options.articles), "--start", options.start.isoformat(),
                    "--days", str(options.days), "--seed", str(options.seed),
                    "--out", str(source_dir),
                ])  # fmt: skip
            first, last = _date_range(source_dir)
        split = last - timedelta(days=options.replay_days - 1)
        print(f"\n== data {first}..{last}: backfill before {split}, stream {split}..{last}")

        backfill = write_backfill(source_dir, data_root / "backfill", before=split, kind=kind)
        children.run("ingest", [*cli, "ingest", f"{kind}:{backfill}"])
        children.run("retrain", [*cli, "retrain"])

        # The speed layer's state is seeded from the backfilled lake (whole days before
        # the split), so Kafka carries only the replayed period.
        # Each batch updates the online store (the line below reads it, scored as of the
        # clock); a full snapshot, which rewrites every customer and publishes the Parquet
        # view, every 30 s here (the default is 5 minutes).
        os.environ.setdefault("PULSE_SNAPSHOT_INTERVAL_SECONDS", "30")
        children.start("stream", [*cli, "stream", "--seed-from-lake"])
        print(f"\n== stream started, seeded from the lake (logs in {children.log_dir})")
        _wait_seeded(settings, children, _date_range(backfill, kind)[1])
        port = _serving_port(settings.api_port)
        children.start("serve", [*cli, "serve", "--port", str(port)])
        print(f"== dashboard: http://127.0.0.1:{port}/ (open it now: the view moves with the "
              f"replay; the API's OpenAPI page is /docs)", flush=True)  # fmt: skip
        print(f"== paced replay {split}..{last} ({options.speedup:g} simulated s/s)", flush=True)
        live = children.start("produce-live", [
            *cli, "produce", f"{kind}:{source_dir}", "--start", split.isoformat(),
            "--speedup", str(options.speedup),
        ])  # fmt: skip
        watcher = Watcher(settings, children.log_dir / "stream.log")
        _replay_loop(settings, children, live, last, options.retrain_every, watcher)
        children.stop("stream")
        _wait_for("retrain", children)
        children.run("report", [*cli, "report"])
        print(f"\n== demo finished in {time.monotonic() - began:.0f}s", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        children.stop_all()
        if broker_started:
            broker.stop(settings)


def _serving_port(preferred: int) -> int:
    """``preferred`` (PULSE_API_PORT) when nothing listens on it, else a free port."""
    import socket

    from pulse.chaos.lab import free_port

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            return free_port()
    return preferred


def _wait_seeded(settings: Settings, children: Children, last: date) -> None:
    """Wait until the stream has published the seeded view (as of ``last``)."""
    deadline = time.monotonic() + CATCH_UP_TIMEOUT
    while True:
        _check_stream(children)
        as_of = _view_as_of(settings)
        if as_of is not None and as_of.date() >= last:
            print(f"[stream] seeded: live view as of {as_of}", flush=True)
            return
        if time.monotonic() > deadline:
            raise PulseError(f"the stream did not seed its state within {CATCH_UP_TIMEOUT:.0f}s")
        time.sleep(1)


def _source(spec: str) -> tuple[str, Path]:
    """``hm:PATH`` (or ``synthetic:PATH``) -> (kind, folder); ``amazon:PATH`` -> (kind, its
    folder or reviews file); PulseError otherwise."""
    kind, _, path = spec.partition(":")
    if kind not in ("hm", "synthetic", "amazon") or not path:
        raise PulseError(
            f"--source must be hm:PATH (an H&M folder) or amazon:PATH (Amazon reviews), "
            f"got {spec!r}"
        )
    where = Path(path).resolve()
    if kind == "amazon":
        if not where.exists():
            raise PulseError(f"--source {spec}: {where} not found")
        return kind, where
    if not where.is_dir():
        raise PulseError(f"--source {spec}: {where} is not a folder")
    return kind, where


def _check_stream(children: Children) -> None:
    """Raise PulseError (pointing at its log) if the background stream has exited."""
    stream = children.procs["stream"]
    if stream.poll() is not None:
        raise PulseError(
            f"the stream exited (code {stream.returncode}); see {children.log_dir}/stream.log"
        )


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _wait_for(name: str, children: Children) -> None:
    proc = children.procs.get(name)
    if proc is not None:
        proc.wait()
        children.procs.pop(name, None)


def _replay_loop(
    settings: Settings,
    children: Children,
    produce: subprocess.Popen,
    last: date,
    retrain_every: int | None,
    watcher: Watcher | None,
) -> None:
    """While a replay runs: show the view and retrain every ``retrain_every`` s (if set).

    Returns once the producer has finished and the stream's features have reached ``last``.
    """
    next_retrain = time.monotonic()  # the first one at once, while events still flow
    caught_up_deadline: float | None = None
    while True:
        if watcher is not None:
            watcher.tick()
        _check_stream(children)
        retrain = children.procs.get("retrain")
        if retrain is not None and retrain.poll() is not None:
            children.procs.pop("retrain")
            print(f"[retrain] finished (exit {retrain.returncode})", flush=True)
        if produce.poll() is not None:
            if produce.returncode != 0:
                raise PulseError(f"the replay failed; see {children.log_dir}/produce-*.log")
            if caught_up_deadline is None:
                print("[produce] replay sent; waiting for the stream to catch up", flush=True)
                caught_up_deadline = time.monotonic() + CATCH_UP_TIMEOUT
            as_of = _view_as_of(settings)
            if as_of is not None and as_of.date() >= last:
                if watcher is not None:
                    watcher.tick()
                print(f"[stream] caught up: live view as of {as_of}", flush=True)
                return
            if time.monotonic() > caught_up_deadline:
                raise PulseError(f"the stream did not catch up within {CATCH_UP_TIMEOUT:.0f}s")
        elif retrain_every and time.monotonic() >= next_retrain and "retrain" not in children.procs:
            # Churn only: the model whose output moves in the live view, and quick enough
            # (about a minute at 50k customers) to land while events still flow.
            print("[retrain] churn model retrain started while the stream runs", flush=True)
            children.start("retrain", [*_cli_of(settings), "retrain", "--models", "churn"])
            next_retrain = time.monotonic() + retrain_every
        time.sleep(TICK_SECONDS)


def _cli_of(settings: Settings) -> list[str]:
    """`pulse` with this run's settings as flags, so every child sees the same ones."""
    return [
        sys.executable, "-m", "pulse.cli", "--data-root", str(settings.data_root),
        "--bootstrap", settings.kafka_bootstrap, "--broker-port", str(settings.broker_port),
        "--topic", settings.topic_transactions,
    ]  # fmt: skip

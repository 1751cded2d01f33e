"""`pulse bench serve`: `pulse serve`'s ``GET /customers/{id}`` over HTTP, at H&M's
customer count.

Per online store (SQLite in a temporary data root; Redis in a ``redis-server`` this
bench starts on a free port, persistence off, and stops), ``customers`` records are
written by ``pulse.bench.view.fill`` (the records `pulse bench view` uses: H&M-shaped
state, 12 recommendations each, churn and segmentation scorers of the served kinds).
Then the real server runs as its own process (``python -m pulse.cli serve``), and per
client count:

- ``clients`` load processes (separate processes: no shared GIL with the server or each
  other), each one keep-alive HTTP/1.1 connection (``http.client``) sending
  ``GET /customers/{id}`` back to back for random ids of the store, after a warm-up,
  together for ``seconds`` (or ``requests`` in all); every request's latency is kept:
  requests/s is all answers over the window, p50/p99 over all requests;
- every answer must be a 200, and a reservoir sample of ``SAMPLE_BODIES`` bodies taken
  under load must equal ``serving.read.lookup(..., with_value=True)`` computed in this
  process (after a JSON round trip; floats to 1e-9 relative): a mismatch is an error;
- the floor, in this process without load: the same store's ``OnlineStore.get`` p50/p99,
  and a whole in-process look-up (get, ``read.view_row``, ``read.jsonable``).

The goals (``GOALS``): p99 <= 5 ms with one client; >= 1,000 requests/s with p99 <= 25 ms
at 16 clients. The clients and the server share the machine's cores.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import multiprocessing
import os
import queue
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pulse.chaos.lab import free_port
from pulse.local.redis import redis_server, stop
from runtime.errors import PulseError
from runtime.settings import Settings

STORES = ("sqlite", "redis")
GOALS: dict[int, tuple[float | None, float]] = {1: (None, 5.0), 16: (1_000.0, 25.0)}
SAMPLE_BODIES = 200  # answers per run checked against an in-process look-up
REL_TOL = 1e-9
WARMUP_S = 3.0
IDS_PER_CLIENT = 50_000  # random ids each client draws from (with the store's own spread)
STORE_GETS = 5_000  # in-process OnlineStore.get calls per run (the floor)
LOOKUPS = 1_000  # in-process whole look-ups per run
START_TIMEOUT_S = 120.0


def log(message: str) -> None:
    """A progress line on stderr (stdout holds the table or the JSON)."""
    print(message, file=sys.stderr, flush=True)


# --- arguments ---------------------------------------------------------------------------------


def store_list(text: str) -> tuple[str, ...]:
    """``sqlite,redis`` -> the stores, in the given order; argparse error otherwise."""
    stores = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    if not stores or any(s not in STORES for s in stores):
        raise argparse.ArgumentTypeError(f"not a comma list of {'/'.join(STORES)}: {text!r}")
    return stores


def client_counts(text: str) -> tuple[int, ...]:
    """``1,16`` -> the client counts (each >= 1); argparse error otherwise."""
    try:
        counts = tuple(dict.fromkeys(int(c) for c in text.split(",") if c.strip()))
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"not a comma list of whole numbers >= 1: {text!r}")
    return counts


# --- the processes this bench runs -------------------------------------------------------------


def server_env(settings: Settings) -> dict[str, str]:
    """The environment of `pulse serve` on ``settings``' store (no token: loopback)."""
    return os.environ | {
        "PULSE_DATA_ROOT": str(settings.data_root),
        "PULSE_ONLINE_STORE": settings.online_store,
        "PULSE_REDIS_URL": settings.redis_url,
        "PULSE_API_HOST": "127.0.0.1",
        "PULSE_API_TOKEN": "",
    }


@contextlib.contextmanager
def api_server(settings: Settings, log_path: Path, workers: int = 1) -> Iterator[int]:
    """`pulse serve` as its own process on a free port; yields the port once it answers
    HTTP (``/health``, any status), stops it after."""
    port = free_port()
    cmd = [sys.executable, "-m", "pulse.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--workers", str(workers)]  # fmt: skip
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, env=server_env(settings), stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-1:]
                raise PulseError(f"`pulse serve` exited ({proc.returncode}): {tail}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                conn.request("GET", "/health")
                conn.getresponse().read()
                conn.close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise PulseError(
                        f"`pulse serve` did not answer in {START_TIMEOUT_S:.0f} s"
                    ) from None
                time.sleep(0.1)
        yield port
    finally:
        stop(proc)


# --- the store ---------------------------------------------------------------------------------


def fill_store(settings: Settings, customers: int, every_s: float = 10.0) -> list[str]:
    """``pulse.bench.view.fill`` with a progress line every ``every_s`` seconds, then the
    meta's ``written_at`` (so ``/health`` is fresh); returns the ids."""
    from pulse.bench.view import fill
    from serving.online import open_store

    done = threading.Event()
    t0 = time.perf_counter()

    def progress() -> None:
        while not done.wait(every_s):
            try:
                store = open_store(settings, readonly=True)
                try:
                    n = store.count()
                finally:
                    store.close()
            except Exception:  # noqa: BLE001 - not written yet / busy: a line without a count
                n = 0
            log(f"  {n:,} / {customers:,} records ({time.perf_counter() - t0:.0f} s)"
                + (", then recommendations and meta" if n >= customers else ""))  # fmt: skip

    watcher = threading.Thread(target=progress, daemon=True)
    watcher.start()
    try:
        ids, _ = fill(settings, customers)
    finally:
        done.set()
        watcher.join()
    store = open_store(settings)
    try:
        store.set_meta({"written_at": time.time()})
    finally:
        store.close()
    return ids


# --- the load ----------------------------------------------------------------------------------


@dataclass
class ClientJob:
    """What one load process does (picklable: it crosses to a spawned process)."""

    port: int
    ids: list[str]
    seed: int
    warmup_s: float
    seconds: float
    requests: int | None  # per client; None: until ``seconds`` are over
    keep: int  # bodies kept for the check (a reservoir sample)


def _get(conn: http.client.HTTPConnection, customer_id: str) -> tuple[int, bytes]:
    conn.request("GET", f"/customers/{customer_id}")
    response = conn.getresponse()
    return response.status, response.read()


def client(job: ClientJob, barrier: Any, out: Any) -> None:
    """One load process: connect, warm up, wait for the others, then back-to-back GETs;
    puts its latencies (s), window, first bad answer and sampled bodies on ``out``."""
    try:
        rng = random.Random(job.seed)
        ids, n = job.ids, len(job.ids)
        conn = http.client.HTTPConnection("127.0.0.1", job.port, timeout=60)
        barrier.wait()  # every client is up: warm up together
        end = time.perf_counter() + job.warmup_s
        while time.perf_counter() < end:
            status, body = _get(conn, ids[rng.randrange(n)])
            if status != 200:
                raise PulseError(f"warm-up answer {status}: {body[:200]!r}")
        barrier.wait()  # the timed window starts together
        latencies = array("d")
        samples: list[tuple[str, bytes]] = []
        bad: tuple[str, int, bytes] | None = None
        start = time.perf_counter()
        deadline = start + job.seconds
        while (len(latencies) < job.requests) if job.requests else (time.perf_counter() < deadline):
            cid = ids[rng.randrange(n)]
            t = time.perf_counter()
            status, body = _get(conn, cid)
            latencies.append(time.perf_counter() - t)
            if status != 200:
                bad = (cid, status, body[:300])
                break
            if len(samples) < job.keep:  # reservoir: a uniform sample of the window
                samples.append((cid, body))
            elif (j := rng.randrange(len(latencies))) < job.keep:
                samples[j] = (cid, body)
        out.put({"latencies": latencies.tobytes(), "start": start,
                 "end": time.perf_counter(), "bad": bad, "samples": samples})  # fmt: skip
        conn.close()
    except BaseException as exc:  # noqa: BLE001 - reported to the bench, which raises
        barrier.abort()  # the others stop waiting
        out.put({"error": f"{type(exc).__name__}: {exc}"})


@dataclass
class Load:
    """One run's answers: every latency (ms), the window and the sampled bodies."""

    latencies_ms: list[float]
    window_s: float
    samples: list[tuple[str, bytes]]


def run_load(
    port: int,
    ids: Sequence[str],
    clients: int,
    seconds: float,
    requests: int | None,
    warmup_s: float,
    seed: int,
) -> Load:
    """``clients`` load processes against ``port``; PulseError on any non-200 or failure."""
    rng = random.Random(seed)
    per_client = min(IDS_PER_CLIENT, len(ids))
    keep = math.ceil(SAMPLE_BODIES / clients)
    each = None if requests is None else math.ceil(requests / clients)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(clients, timeout=START_TIMEOUT_S)
    out = ctx.Queue()
    pool = list(ids)
    jobs = [
        ClientJob(port, rng.choices(pool, k=per_client), seed * 1_000 + i, warmup_s, seconds,
                  each, keep)
        for i in range(clients)
    ]  # fmt: skip
    procs = [ctx.Process(target=client, args=(job, barrier, out), daemon=True) for job in jobs]
    for p in procs:
        p.start()
    results: list[dict[str, Any]] = []
    limit = time.monotonic() + START_TIMEOUT_S + warmup_s + (seconds if each is None else 3600)
    try:
        while len(results) < clients:
            try:
                results.append(out.get(timeout=1.0))
            except queue.Empty:
                if time.monotonic() > limit or not any(p.is_alive() for p in procs):
                    raise PulseError("a load client died or hung without answering") from None
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise PulseError(f"a load client failed: {errors[0]}")
    for r in results:
        if r["bad"] is not None:
            cid, status, body = r["bad"]
            raise PulseError(f"GET /customers/{cid} answered {status}, not 200: {body!r}")
    latencies: list[float] = []
    for r in results:
        latencies.extend(v * 1_000 for v in array("d", r["latencies"]))
    window = max(r["end"] for r in results) - min(r["start"] for r in results)
    return Load(latencies, window, [s for r in results for s in r["samples"]])


# --- the check ---------------------------------------------------------------------------------


def check_body(expected: Any, got: Any, where: str = "") -> None:
    """``got`` equals ``expected`` (JSON values; floats to ``REL_TOL`` relative), else a
    PulseError naming the first difference."""

    def differ(why: str) -> PulseError:
        return PulseError(f"served answer differs at {where or '/'}: {why}")

    if isinstance(expected, dict) and isinstance(got, dict):
        if expected.keys() != got.keys():
            raise differ(f"keys {sorted(set(expected) ^ set(got))} only on one side")
        for k in expected:
            check_body(expected[k], got[k], f"{where}/{k}")
    elif isinstance(expected, list) and isinstance(got, list):
        if len(expected) != len(got):
            raise differ(f"{len(got)} items, expected {len(expected)}")
        for i, (e, g) in enumerate(zip(expected, got, strict=True)):
            check_body(e, g, f"{where}/{i}")
    elif _number(expected) and _number(got) and float in (type(expected), type(got)):
        both_nan = math.isnan(expected) and math.isnan(got)
        if not both_nan and not math.isclose(expected, got, rel_tol=REL_TOL, abs_tol=0.0):
            raise differ(f"{got!r}, expected {expected!r}")
    elif type(expected) is not type(got) or expected != got:
        raise differ(f"{got!r}, expected {expected!r}")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def verify(settings: Settings, samples: Sequence[tuple[str, bytes]]) -> int:
    """Each sampled (id, body) equals the in-process look-up of the id; returns how many."""
    from serving import read

    reader = read.open_reader(settings)
    try:
        for cid, body in samples:
            row = read.lookup(settings, cid, store=reader, with_value=True)
            expected = json.loads(json.dumps(read.jsonable(row)))
            try:
                got = json.loads(body)
            except ValueError:
                raise PulseError(f"GET /customers/{cid}: not JSON: {body[:200]!r}") from None
            check_body(expected, got, f"customer {cid}")
    finally:
        reader.close()
    return len(samples)


def floor_ms(settings: Settings, ids: Sequence[str], seed: int) -> dict[str, list[float]]:
    """In this process, no load: ``OnlineStore.get`` and a whole look-up (get, view_row,
    jsonable), in ms."""
    from serving import read

    rng = random.Random(seed)
    reader = read.open_reader(settings)
    gets, lookups = [], []
    try:
        for cid in rng.choices(ids, k=200):  # warm the connection and caches
            read.lookup(settings, cid, store=reader, with_value=True)
        for cid in rng.choices(ids, k=STORE_GETS):
            t = time.perf_counter()
            reader.get(cid)
            gets.append((time.perf_counter() - t) * 1_000)
        for cid in rng.choices(ids, k=LOOKUPS):
            t = time.perf_counter()
            record = reader.get(cid)
            assert record is not None
            read.jsonable(read.view_row(record, reader.meta()))
            lookups.append((time.perf_counter() - t) * 1_000)
    finally:
        reader.close()
    return {"store_get": gets, "lookup": lookups}


# --- figures -----------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (NumPy's linear interpolation), rounded to µs."""
    import numpy as np

    return round(float(np.percentile(np.asarray(values), q)), 3)


def goal_of(clients: int) -> str | None:
    """The goal of a run with ``clients`` clients, as text (None: no goal)."""
    if clients not in GOALS:
        return None
    rate, p99 = GOALS[clients]
    return ("" if rate is None else f">= {rate:,.0f} requests/s with ") + f"p99 <= {p99:g} ms"


def goal_met(clients: int, requests_per_s: float, p99_ms: float) -> bool | None:
    """Whether the run met its goal (None: no goal at this client count)."""
    if clients not in GOALS:
        return None
    rate, p99 = GOALS[clients]
    return p99_ms <= p99 and (rate is None or requests_per_s >= rate)


def run_figures(
    customers: int, store: str, clients: int, load: Load, checked: int,
    floor: dict[str, list[float]], workers: int = 1,
) -> dict[str, Any]:  # fmt: skip
    """One run's figures (the JSON entry)."""
    rate = round(len(load.latencies_ms) / load.window_s, 1)
    p99 = percentile(load.latencies_ms, 99)
    return {
        "customers": customers,
        "store": store,
        "clients": clients,
        "workers": workers,
        "requests": len(load.latencies_ms),
        "window_s": round(load.window_s, 2),
        "requests_per_s": rate,
        "p50_ms": percentile(load.latencies_ms, 50),
        "p99_ms": p99,
        "max_ms": round(max(load.latencies_ms), 3),
        "store_get_p50_ms": percentile(floor["store_get"], 50),
        "store_get_p99_ms": percentile(floor["store_get"], 99),
        "lookup_p50_ms": percentile(floor["lookup"], 50),
        "lookup_p99_ms": percentile(floor["lookup"], 99),
        "checked_bodies": checked,
        "goal": goal_of(clients),
        "goal_met": goal_met(clients, rate, p99),
    }


# --- the bench ---------------------------------------------------------------------------------


def bench_store(
    settings: Settings,
    store: str,
    customers: int,
    clients: Sequence[int],
    seconds: float,
    requests: int | None,
    warmup_s: float,
    workers: int = 1,
) -> tuple[float, list[dict[str, Any]]]:
    """Fill one store, serve it, run each client count; returns the fill time and runs."""
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pulse-bench-serve-")))
        update: dict[str, Any] = {"data_root": tmp / "data", "online_store": store}
        if store == "redis":
            update["redis_url"] = stack.enter_context(redis_server(tmp / "redis"))
        local = settings.model_copy(update=update)
        log(f"{store}: filling the online store with {customers:,} customers ...")
        t0 = time.perf_counter()
        ids = fill_store(local, customers)
        fill_s = time.perf_counter() - t0
        log(f"{store}: filled in {fill_s:.1f} s; starting `pulse serve` ...")
        runs = []
        port = stack.enter_context(api_server(local, tmp / "serve.log", workers))
        for i, n in enumerate(clients):
            span = f"{requests:,} requests" if requests else f"{seconds:g} s"
            log(f"{store}: {n} client(s), {warmup_s:g} s warm-up + {span} ...")
            load = run_load(port, ids, n, seconds, requests, warmup_s, seed=11 + i)
            checked = verify(local, load.samples)
            figures = run_figures(customers, store, n, load, checked, floor_ms(local, ids, 5 + i),
                                  workers)  # fmt: skip
            log(f"{store}: {n} client(s): {figures['requests_per_s']:,.0f} requests/s, "
                f"p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms, "
                f"{checked} answers checked")  # fmt: skip
            runs.append(figures)
    return fill_s, runs


def bench_serve(
    settings: Settings,
    customers: int = 1_370_000,
    stores: Sequence[str] = STORES,
    clients: Sequence[int] = (1, 16),
    seconds: float = 15.0,
    requests: int | None = None,
    as_json: bool = False,
    warmup_s: float = WARMUP_S,
    say: Callable[[str], None] = print,
    workers: int = 1,
) -> dict[str, Any]:
    """Fill each store with ``customers`` records, serve it, and load it with each client
    count for ``seconds`` (or ``requests`` in all); print the table (or the JSON object)
    and return the figures."""
    if "redis" in stores and shutil.which("redis-server") is None:
        raise PulseError(
            "redis-server is not installed (Debian: apt-get install redis-server), "
            "or bench SQLite only: --store sqlite"
        )
    result: dict[str, Any] = {
        "bench": "serve",
        "endpoint": "GET /customers/{id}",
        "customers": customers,
        "cores": os.cpu_count(),
        "seconds_per_run": None if requests else seconds,
        "requests_per_run": requests,
        "warmup_s": warmup_s,
        "workers": workers,
        "goals": {str(n): goal_of(n) for n in GOALS},
        "note": f"The load clients and the server share the machine's {os.cpu_count()} cores",
        "fill_s": {},
        "runs": [],
    }
    for store in stores:
        fill_s, runs = bench_store(settings, store, customers, clients, seconds, requests,
                                   warmup_s, workers)  # fmt: skip
        result["fill_s"][store] = round(fill_s, 1)
        result["runs"].extend(runs)
    say(json.dumps(result) if as_json else format_table(result))
    return result


def format_table(result: dict[str, Any]) -> str:
    """The figures as a readable table, with the goals and a footnote."""
    span = (
        f"{result['requests_per_run']:,} requests"
        if result["requests_per_run"]
        else f"{result['seconds_per_run']:g} s"
    )
    lines = [
        f"`pulse serve` GET /customers/{{id}}, {result['customers']:,} customers, "
        f"{result['workers']} server process(es), "
        f"{span} per run after {result['warmup_s']:g} s warm-up",
        f"{'store':<7} {'clients':>7} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'get p99':>8} {'look-up p99':>11}  goal",
    ]
    for r in result["runs"]:
        met = {None: "", True: "  met", False: "  NOT met"}[r["goal_met"]]
        lines.append(
            f"{r['store']:<7} {r['clients']:>7} {r['requests_per_s']:>9,.0f} {r['p50_ms']:>8.2f} "
            f"{r['p99_ms']:>8.2f} {r['store_get_p99_ms']:>8.3f} {r['lookup_p99_ms']:>11.3f}  "
            f"{r['goal'] or '-'}{met}"
        )
    fills = ", ".join(f"{s} {t:.0f} s" for s, t in result["fill_s"].items())
    lines += [
        "",
        "get p99: the store's OnlineStore.get in this process (the floor); look-up p99:",
        "get + view_row + jsonable in this process; both measured without load.",
        f"Every answer was a 200; {SAMPLE_BODIES} per run (sampled under load) equal an",
        f"in-process look-up. {result['note']}.",
        f"Store fill: {fills}.",
    ]
    return "\n".join(lines)

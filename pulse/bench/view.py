"""`pulse bench view`: look-ups against the online store at H&M's customer count.

Fills a fresh online store (SQLite in a temporary data root, or the Redis at
``PULSE_REDIS_URL``) with ``customers`` records shaped like H&M's (a few purchase days
in the last 90, 12 recommendations each), then measures, on that store:

- one ``serving.read.lookup`` from Python (the function an application calls):
  p50 and p99 over ``lookups`` random customers;
- ``pulse view CUSTOMER_ID --json`` as a process, and the CLI's start-up alone
  (``pulse --help``), so the look-up's own share is visible;
- ``serving.read.at_risk(20)`` (the ``pulse view --at-risk 20`` query), and the same
  through the CLI.

The records are written by the store's own ``write_records`` (the stream's path), from
synthetic state: the stream itself is measured by ``pulse bench stream``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from runtime.errors import PulseError
from runtime.settings import Settings

AS_OF_DAY = 18_527  # 2020-09-22, the last day of H&M's data
CHUNK = 100_000


def _records(rng: np.random.Generator, ids: list[str], clock_us: int) -> list[tuple[Any, ...]]:
    """Online-store records for ``ids``: H&M-like totals, 0-3 days of recent history."""
    from serving.live import records
    from serving.view import SCORES
    from storage.state_table import state_table

    n = len(ids)
    last = AS_OF_DAY - rng.integers(0, 700, n)
    first = last - rng.integers(0, 300, n)
    customers = pa.table(
        {
            "customer_id": ids,
            "first_purchase_date": first,
            "last_purchase_date": last,
            "purchase_days": rng.integers(1, 12, n),
            "n_events": rng.integers(1, 40, n),
            "monetary": rng.random(n) * 2.0,
            "n_online": rng.integers(0, 20, n),
            "n_with_channel": rng.integers(20, 40, n),
            "max_event_time": last * 86_400_000_000,
        }
    )
    k = rng.integers(0, 4, n)
    owner = np.repeat(np.arange(n), k)
    days = pa.table(
        {
            "customer_id": pa.array(ids).take(pa.array(owner)),
            "day": AS_OF_DAY - rng.integers(0, 90, len(owner)),
            "n_events": rng.integers(1, 5, len(owner)),
            "n_purchases": rng.integers(1, 5, len(owner)),
            "spend": rng.random(len(owner)),
            "n_online": rng.integers(0, 2, len(owner)),
            "n_with_channel": np.ones(len(owner), np.int64),
        }
    )
    state = state_table(customers, days)
    scores = pa.table(
        {
            "customer_id": ids,
            "churn_probability": rng.random(n),
            "churn_as_of": pa.array(np.full(n, clock_us), pa.timestamp("us", tz="UTC")),
            "churn_model_version": ["bench"] * n,
            "segment_id": pa.array(rng.integers(0, 5, n), pa.int32()),
            "segment_name": ["bench segment"] * n,
            "segments_model_version": ["bench"] * n,
        },
        schema=SCORES,
    )
    return list(records(state, scores))


def fill(settings: Settings, customers: int, seed: int = 7) -> list[str]:
    """Write ``customers`` records, recommendations and meta; returns the ids."""
    from serving.online import open_store

    rng = np.random.default_rng(seed)
    ids = [f"{i:016x}{rng.integers(0, 2**62):016x}" for i in range(customers)]
    clock_us = AS_OF_DAY * 86_400_000_000
    store = open_store(settings)
    try:
        for start in range(0, customers, CHUNK):
            store.write_records(_records(rng, ids[start : start + CHUNK], clock_us))
        articles = [f"0{a:09d}" for a in rng.integers(100_000_000, 999_999_999, 105_000)]
        recs = (
            (cid, json.dumps([articles[j] for j in rng.integers(0, len(articles), 12)]))
            for cid in ids
        )
        store.replace_output("recommendations", "bench", recs)
        store.set_meta(
            {
                "clock_us": clock_us,
                "versions": {"recommendations": "bench", "churn": "bench", "segments": "bench"},
                "popular": articles[:12],
            }
        )
    finally:
        store.close()
    return ids


def _cli(settings: Settings, *args: str) -> float:
    """Wall seconds of one `pulse` process with this data root and store."""
    env = os.environ | {
        "PULSE_ONLINE_STORE": settings.online_store,
        "PULSE_REDIS_URL": settings.redis_url,
    }
    cmd = [sys.executable, "-m", "pulse.cli", "--data-root", str(settings.data_root), *args]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if done.returncode != 0:
        raise PulseError(f"`pulse {' '.join(args)}` failed: {done.stderr.strip()[:200]}")
    return took


def bench_view(
    settings: Settings, customers: int, store: str, lookups: int = 10_000, as_json: bool = False
) -> dict[str, Any]:
    """Fill a store with ``customers`` records and time look-ups; print and return figures."""
    from serving import read

    say = (lambda *_: None) if as_json else print
    with tempfile.TemporaryDirectory(prefix="pulse-bench-view-") as tmp:
        local = settings.model_copy(update={"data_root": Path(tmp), "online_store": store})
        if store == "redis":
            from serving.online import RedisStore

            RedisStore(local.redis_url).r.flushdb()  # a bench server: starts empty
        say(f"filling the {store} online store with {customers:,} customers ...")
        t0 = time.perf_counter()
        ids = fill(local, customers)
        load_s = time.perf_counter() - t0
        say(f"  {load_s:.1f} s ({customers / load_s:,.0f} records/s)")

        rng = np.random.default_rng(11)
        sample = [ids[i] for i in rng.integers(0, len(ids), lookups)]
        reader = read.open_reader(local)
        try:
            for cid in sample[:200]:  # warm the page cache / connection
                read.lookup(local, cid, store=reader)
            times = []
            for cid in sample:
                t = time.perf_counter()
                read.lookup(local, cid, store=reader)
                times.append(time.perf_counter() - t)
        finally:
            reader.close()
        t0 = time.perf_counter()
        top = read.at_risk(local, 20)
        at_risk_s = time.perf_counter() - t0
        assert len(top) == 20
        startup = min(_cli(local, "--help") for _ in range(3))
        view_cli = min(_cli(local, "view", ids[0], "--json") for _ in range(3))
        at_risk_cli = min(_cli(local, "view", "--at-risk", "20") for _ in range(3))
        if store == "redis":
            from serving.online import RedisStore

            RedisStore(local.redis_url).r.flushdb()
    ms = np.array(times) * 1000
    figures = {
        "customers": customers,
        "store": store,
        "lookup_p50_ms": round(float(np.percentile(ms, 50)), 3),
        "lookup_p99_ms": round(float(np.percentile(ms, 99)), 3),
        "at_risk_s": round(at_risk_s, 3),
        "lookups": lookups,
        "load_s": round(load_s, 1),
        "cli_view_s": round(view_cli, 3),
        "cli_startup_s": round(startup, 3),
        "cli_at_risk_s": round(at_risk_cli, 3),
    }
    if as_json:
        print(json.dumps(figures))
    else:
        rows = [
            ("look-up from Python, p50", f"{figures['lookup_p50_ms']:.3f} ms"),
            ("look-up from Python, p99", f"{figures['lookup_p99_ms']:.3f} ms  (goal <= 5 ms)"),
            ("at-risk 20 from Python", f"{at_risk_s:.3f} s  (goal <= 2 s)"),
            ("`pulse view ID --json`", f"{view_cli:.3f} s"),
            ("  of which CLI start-up (`pulse --help`)", f"{startup:.3f} s"),
            ("`pulse view --at-risk 20`", f"{at_risk_cli:.3f} s"),
            ("store fill (write_records)", f"{load_s:.1f} s"),
        ]
        print(f"\n{store} online store, {customers:,} customers, {lookups:,} random look-ups")
        for name, value in rows:
            print(f"  {name:<42} {value}")
    return figures

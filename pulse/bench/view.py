"""`pulse bench view`: look-ups against the online store at H&M's customer count.

Fills a fresh online store (SQLite in a temporary data root, or the Redis at
``PULSE_REDIS_URL``) with ``customers`` records shaped like H&M's (a few purchase days
in the last 90, 12 recommendations each), then measures, on that store:

- one ``serving.read.lookup`` from Python (the function an application calls):
  p50 and p99 over ``lookups`` random customers;
- ``pulse view CUSTOMER_ID --json`` as a process, and the CLI's start-up alone
  (``pulse --help``), so the look-up's own share is visible;
- ``serving.read.at_risk(20)`` (the ``pulse view --at-risk 20`` query: every customer
  evaluated as of the clock), and the same through the CLI;
- the event-to-served latency (``pulse.bench.served``): the real stream on the same
  customers, ``--rate`` events/s through the broker at ``PULSE_KAFKA_BOOTSTRAP``, from
  each event's ``produced_at`` to a look-up that reflects it (``--no-stream`` skips it).

The records are written by the store's own ``write_records`` (the stream's path), from
synthetic state; the look-ups score them with churn and segmentation scorers of the
served kinds (``bench_scorers``). The stream's throughput is ``pulse bench stream``'s.
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


def _store_tables(rng: np.random.Generator, ids: list[str]) -> tuple[pa.Table, pa.Table]:
    """The stream store's (customers, days) tables for ``ids``: H&M-like totals, 0-3 days
    of recent history (``CustomerStateStore.load``'s layout)."""
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
    back = rng.integers(0, 90, len(owner))
    _, first_of_day = np.unique(owner * 100 + back, return_index=True)  # a day once each
    owner, back = owner[np.sort(first_of_day)], back[np.sort(first_of_day)]
    days = pa.table(
        {
            "customer_id": pa.array(ids).take(pa.array(owner)),
            "day": AS_OF_DAY - back,
            "n_events": rng.integers(1, 5, len(owner)),
            "n_purchases": rng.integers(1, 5, len(owner)),
            "spend": rng.random(len(owner)),
            "n_online": rng.integers(0, 2, len(owner)),
            "n_with_channel": np.ones(len(owner), np.int64),
        }
    )
    return customers, days


def bench_scorers() -> dict[str, Any]:
    """A churn and a segmentation scorer of the served kinds, with plausible numbers (the
    look-ups evaluate them as the real ones are evaluated)."""
    from scoring.btyd import BGNBD, GammaGamma
    from scoring.churn import STACK_FEATURES, ChurnScorer
    from scoring.segments import SegmentScorer

    churn = ChurnScorer(
        "bench", 30, BGNBD(r=0.3, alpha=40.0, a=0.8, b=2.5), GammaGamma(p=3.0, q=4.0, gamma=0.1),
        "logistic", coefficients=[0.1 * (i + 1) for i in range(len(STACK_FEATURES))],
        intercept=-0.5,
    )  # fmt: skip
    segments = SegmentScorer(
        "bench", [4.0, 1.0, 0.5], [1.5, 0.6, 0.4],
        [[-1.0, 0.5, 0.5], [1.0, -0.5, -0.5], [0.0, 1.5, 1.5], [1.2, 0.0, 0.0]],
        {0: "Loyal", 1: "Hibernating", 2: "Champions", 3: "At risk"},
    )  # fmt: skip
    return {"churn": churn.as_dict(), "segments": segments.as_dict()}


def fill(
    settings: Settings, customers: int, seed: int = 7
) -> tuple[list[str], tuple[pa.Table, pa.Table]]:
    """Write ``customers`` records, recommendations and meta; returns the ids and the
    state written (the stream store's tables, for the event-to-served run)."""
    from serving.live import records
    from serving.online import open_store
    from storage.state_rows import state_table

    rng = np.random.default_rng(seed)
    ids = [f"{i:016x}{rng.integers(0, 2**62):016x}" for i in range(customers)]
    clock_us = AS_OF_DAY * 86_400_000_000
    store = open_store(settings)
    parts = []
    try:
        for start in range(0, customers, CHUNK):
            tables = _store_tables(rng, ids[start : start + CHUNK])
            store.write_records(records(state_table(*tables)))
            parts.append(tables)
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
                "scorers": bench_scorers(),
            }
        )
    finally:
        store.close()
    state = tuple(pa.concat_tables([p[i] for p in parts]) for i in (0, 1))
    return ids, (state[0], state[1])


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
    settings: Settings,
    customers: int,
    store: str,
    lookups: int = 10_000,
    as_json: bool = False,
    rate: int = 2_000,
    seconds: int = 60,
    stream: bool = True,
) -> dict[str, Any]:
    """Fill a store with ``customers`` records and time look-ups, then (``stream``) the
    event-to-served latency at ``rate`` events/s for ``seconds``; print and return figures."""
    from pulse.bench.served import event_to_served
    from serving import read

    say = (lambda *_: None) if as_json else print
    if stream:  # an unreachable broker is one line now, not after the look-ups
        from runtime.kafka_admin import admin_client

        admin_client(settings)
    with tempfile.TemporaryDirectory(prefix="pulse-bench-view-") as tmp:
        local = settings.model_copy(update={"data_root": Path(tmp), "online_store": store})
        if store == "redis":
            from serving.online import RedisStore

            RedisStore(local.redis_url).r.flushdb()  # a bench server: starts empty
        say(f"filling the {store} online store with {customers:,} customers ...")
        t0 = time.perf_counter()
        ids, state = fill(local, customers)
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
        served = event_to_served(local, state, AS_OF_DAY, rate, seconds, say) if stream else {}
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
        **served,
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
        if served:
            rows += [
                ("event to served, p50", f"{served['event_to_served_p50_s']} s"),
                ("event to served, p95", f"{served['event_to_served_p95_s']} s  (goal <= 2 s)"),
                ("  events probed (not served in time)",
                 f"{served['event_to_served_events']:,} ({served['event_to_served_unserved']})"),
                ("  trigger interval / batch p50",
                 f"{served['trigger_interval']} / {served['batch_p50_s']} s"),
            ]  # fmt: skip
        print(f"\n{store} online store, {customers:,} customers, {lookups:,} random look-ups")
        for name, value in rows:
            print(f"  {name:<42} {value}")
    return figures

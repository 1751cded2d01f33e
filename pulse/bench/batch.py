"""`pulse bench batch`: retrain wall time per stage and peak memory; ALS vs implicit.

For each size N: generate about N transactions at H&M's density (customers and
articles scaled from 1.37M and 105k at 31.8M, two years), ingest them into a fresh
data root, time a full retrain stage by stage while sampling the resident memory of
this process and its children (the Spark JVM), render the report, then fit Spark ALS
and the ``implicit`` library on the matrix the retrain trains ALS on (same rank,
iterations, regularisation and confidence) and print the ratio. With
``--object-store``, the same ingest and retrain run once more into a data root in a
local SeaweedFS (``pulse.local.s3``) in the same Spark session, and the ratios to the
local run are printed. ``--json``: one JSON object with the same figures.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from batch.params import RecParams
from runtime.settings import Settings
from storage.objects import local_path

# H&M's Kaggle set: 31.8M transactions of 1.37M customers and 105k articles in two years.
# The generator at these shapes writes 32.3M rows (1.37M customers, 730 days).
HM_TRANSACTIONS, HM_CUSTOMERS, HM_ARTICLES = 31_800_000, 1_370_000, 105_000
START, DAYS = date(2018, 9, 20), 730


def _tree(root: int) -> list[int]:
    """``root`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, []))
    return out


def _rollup(pid: int) -> tuple[int, int]:
    """(Rss, Pss) of one process in bytes, from /proc/PID/smaps_rollup (0, 0 once gone)."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return rss, pss


def machine_used_bytes() -> int:
    """The machine's used memory: MemTotal - MemAvailable (what `free` calls used, plus
    the page cache the kernel cannot drop)."""
    info: dict[str, int] = {}
    with open("/proc/meminfo") as f:
        for line in f:
            name, value = line.split(":", 1)
            info[name] = int(value.split()[0]) * 1024
    return info["MemTotal"] - info["MemAvailable"]


class PeakMemory:
    """Sample this process tree's memory every ``interval`` seconds in a thread; keep peaks.

    - ``peak_pss``: the tree's proportional set size: a page shared by k processes counts
      1/k in each, so the PySpark workers' shared pages count once (the real footprint);
    - ``peak_rss``: the sum of the processes' RSS, which counts each shared page once per
      process (an over-count: 22.62 GiB where the machine saw 13.5 GB);
    - ``peak_machine``: the machine's used memory above what it was at the start, which
      includes anything else running (a cross-check on a quiet machine).
    """

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.peak_rss = self.peak_pss = self.peak_machine = 0
        self._base = machine_used_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def peak(self) -> int:
        """The real footprint (PSS)."""
        return self.peak_pss

    def sample(self) -> None:
        """One sample of the three."""
        rss = pss = 0
        for pid in _tree(os.getpid()):
            r, p = _rollup(pid)
            rss, pss = rss + r, pss + p
        self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
        self.peak_machine = max(self.peak_machine, machine_used_bytes() - self._base)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def als_vs_implicit(spark, settings: Settings, params: RecParams) -> dict[str, float]:  # noqa: ANN001
    """Fit Spark ALS and implicit's ALS on the matrix a retrain trains on; seconds for each.

    The matrix is ``batch.als.als_interactions`` at the lake's end (the recency
    window and minimum support of ``params``); both get the same rank, iterations,
    regularisation and confidence 1 + alpha * weight.
    """
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp
    from implicit.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    from batch.als import als_estimator, als_interactions, als_matrix
    from storage.lake import last_event_date, read_lake

    cutoff = last_event_date(settings) + timedelta(days=1)
    events = read_lake(spark, settings, cutoff)
    ratings, users, items = als_matrix(als_interactions(events, cutoff, params))
    n = ratings.count()
    spark.sparkContext.setCheckpointDir(str((settings.checkpoint_dir / "als-bench").resolve()))
    als = als_estimator(params)
    t = time.perf_counter()
    model = als.fit(ratings)
    model.userFactors.count()  # force the factors
    spark_s = time.perf_counter() - t

    pdf: pd.DataFrame = ratings.toPandas()
    shape = (int(pdf["user"].max()) + 1, int(pdf["item"].max()) + 1)
    # implicit uses the values as confidence directly; Spark uses 1 + alpha * r
    conf = sp.csr_matrix(
        (1 + params.alpha * pdf["weight"].to_numpy(np.float32), (pdf["user"], pdf["item"])),
        shape=shape,
    )
    # implicit runs its own threads: BLAS's pool on top slows it (its constructor warns)
    with threadpool_limits(1, "blas"):
        model_i = AlternatingLeastSquares(
            factors=params.rank,
            iterations=params.max_iter,
            regularization=params.reg_param,
            random_state=params.seed,
        )
        t = time.perf_counter()
        model_i.fit(conf, show_progress=False)
        implicit_s = time.perf_counter() - t
        # the same solver as Spark's (an exact Cholesky solve per row, not implicit's
        # default 3 conjugate-gradient steps): what of the gap is the engine, not the maths
        model_x = AlternatingLeastSquares(
            factors=params.rank,
            iterations=params.max_iter,
            regularization=params.reg_param,
            random_state=params.seed,
            use_cg=False,
        )
        t = time.perf_counter()
        model_x.fit(conf, show_progress=False)
        exact_s = time.perf_counter() - t
    for frame in (ratings, users, items):
        frame.unpersist()
    return {
        "interactions": n,
        "users": shape[0],
        "items": shape[1],
        "spark_als_s": spark_s,
        "implicit_s": implicit_s,
        "ratio": spark_s / implicit_s,
        "implicit_exact_s": exact_s,
        "ratio_exact": spark_s / exact_s,
    }


def stream_into_lake(settings: Settings, batches: int, per_batch: int = 200) -> dict[str, float]:
    """Write ``batches`` micro-batches the way the stream does, then compact.

    Each batch is ``per_batch`` fresh events on the lake's last two days, written with
    ``storage.lake.write_lake_batch`` (the stream's writer: one file per event date per
    batch, one commit). Returns the live file counts before and after compaction and
    the time of each part.
    """
    import numpy as np
    import pyarrow as pa

    from storage.lake import compact, file_count, last_event_date, write_lake_batch

    last = last_event_date(settings)
    day0 = np.datetime64(last - timedelta(days=1), "us")
    rng = np.random.default_rng(11)
    before = file_count(settings)
    t = time.perf_counter()
    for b in range(batches):
        offsets = rng.integers(0, 2 * 86_400_000_000, per_batch).astype("timedelta64[us]")
        times = pa.array(day0 + offsets, pa.timestamp("us", tz="UTC"))
        rows = pa.table(
            {
                "event_id": pa.array([f"bench-stream-{b}-{i}" for i in range(per_batch)]),
                "event_time": times,
                "customer_id": pa.array([f"c{i % 5000}" for i in range(per_batch)]),
                "article_id": pa.array([f"a{i % 700}" for i in range(per_batch)]),
                "quantity": pa.array(np.ones(per_batch, np.int32)),
                "unit_price": pa.array(np.full(per_batch, 0.03)),
                "sales_channel_id": pa.array(np.full(per_batch, 2, np.int32)),
                "source": pa.array(["synthetic"] * per_batch),
                "produced_at": times,
            }
        )
        write_lake_batch(settings, rows, 1_000_000 + b)
    write_s = time.perf_counter() - t
    after_stream = file_count(settings)
    t = time.perf_counter()
    compact(settings)
    compact_s = time.perf_counter() - t
    return {
        "batches": batches,
        "events_per_batch": per_batch,
        "files_after_ingest": before,
        "files_after_stream": after_stream,
        "files_after_compaction": file_count(settings),
        "stream_write_s": round(write_s, 1),
        "compact_s": round(compact_s, 1),
    }


def in_object_store(spark, s: Settings, source: str, opts: Any, local: dict[str, Any]) -> dict:  # type: ignore[no-untyped-def]
    """Ingest ``source`` and retrain into a data root in a local SeaweedFS, as ``s`` was
    locally; seconds, and the local run's seconds over these (``local``: its figures)."""
    from batch.ingest import ingest_source
    from batch.retrain import StageLog, retrain
    from producers.adapters import open_source
    from pulse.local.s3 import s3_server
    from runtime.settings import revalidated
    from runtime.spark import use_object_store

    with tempfile.TemporaryDirectory(prefix="pulse-bench-s3-") as tmp:
        with s3_server(s, Path(tmp) / "s3") as endpoint:
            remote = revalidated(s, **endpoint.settings("bench"), local_dir=Path(tmp) / "local")
            use_object_store(spark, remote)
            t = time.perf_counter()
            ingest_source(spark, remote, open_source(source), progress=False)
            ingest_s = time.perf_counter() - t
            log = StageLog()
            t = time.perf_counter()
            retrain(spark, remote, opts, log)
            retrain_s = time.perf_counter() - t
    before = local["ingest_s"]  # None: the local lake was reused, not timed
    return {
        "ingest_s": round(ingest_s, 1),
        "retrain_s": round(retrain_s, 1),
        "ingest_ratio": None if before is None else round(before / ingest_s, 3),
        "retrain_ratio": round(local["retrain_s"] / retrain_s, 3),
        "stages": log.as_dict(),
    }


def hm_shape(n: int) -> tuple[int, int]:
    """Customers and articles for ``n`` transactions at H&M's density over two years."""
    scale = n / HM_TRANSACTIONS
    return max(100, round(HM_CUSTOMERS * scale)), max(2_000, round(HM_ARTICLES * scale))


def run_bench(
    settings: Settings,
    sizes: list[int],
    params: RecParams,
    as_json: bool = False,
    stream_batches: int = 0,
    object_store: bool = False,
) -> list[dict]:
    """Generate, ingest, retrain (stage table, peak memory), report, ALS vs implicit."""
    from batch.ingest import ingest_source
    from batch.report import write_report
    from batch.retrain import RetrainOptions, StageLog, retrain
    from producers.adapters import open_source
    from producers.generator import generate
    from runtime.spark import build_spark
    from storage.lake import file_count, lake_exists, read_lake

    results = []
    for n in sizes:
        root = local_path(settings.data_root, "`pulse bench batch`") / "bench" / f"n={n}"
        s = settings.model_copy(update={"data_root": root})
        gen = root / "generated"
        customers, articles = hm_shape(n)
        if not (gen / "_pulse_generated.json").exists():
            generate(gen, customers=customers, articles=articles, start=START, days=DAYS, seed=7)
        spark = build_spark(s, "pulse-bench-batch", with_kafka=False)
        ingest_s: float | None = None
        if lake_exists(s):  # measured when it was written (`pulse ingest`): not again
            rows = read_lake(spark, s).count()
        else:
            t = time.perf_counter()
            src = open_source(f"synthetic:{gen}")
            rows = ingest_source(spark, s, src, progress=not as_json).appended
            ingest_s = time.perf_counter() - t
        log = StageLog()
        opts = RetrainOptions(rec=params, progress=not as_json)
        with PeakMemory() as mem:
            t = time.perf_counter()
            retrain(spark, s, opts, log)
            retrain_s = time.perf_counter() - t
        write_report(s)
        als = als_vs_implicit(spark, s, params)
        if stream_batches:
            t = time.perf_counter()
            read_lake(spark, s).count()
            lake_before_s = time.perf_counter() - t
            lake = stream_into_lake(s, stream_batches)
            t = time.perf_counter()
            read_lake(spark, s).count()
            lake |= {"read_s_before": round(lake_before_s, 1)}
            lake |= {"read_s_after_compaction": round(time.perf_counter() - t, 1)}
        store = None
        if object_store:
            local = {"ingest_s": ingest_s, "retrain_s": retrain_s}
            store = in_object_store(spark, s, f"synthetic:{gen}", opts, local)
        spark.stop()
        result = {
            "transactions": rows,
            "customers": customers,
            "articles": articles,
            "ingest_s": None if ingest_s is None else round(ingest_s, 1),
            "lake_files": file_count(s),
            "retrain_s": round(retrain_s, 1),
            "peak_pss_gib": round(mem.peak_pss / 2**30, 2),
            "peak_rss_sum_gib": round(mem.peak_rss / 2**30, 2),
            "peak_machine_used_gib": round(mem.peak_machine / 2**30, 2),
            "stages": log.as_dict(),
            "als": {k: (round(v, 2) if isinstance(v, float) else v) for k, v in als.items()},
            "als_params": {"rank": params.rank, "iterations": params.max_iter},
        }
        if stream_batches:
            result["lake"] = lake
        if store is not None:
            result["object_store"] = store
        results.append(result)
        if not as_json:
            _print_result(result)
    if as_json:
        print(json.dumps({"bench": "batch", "runs": results}))
    return results


def _print_result(r: dict) -> None:
    print(f"\n## pulse bench batch: {r['transactions']:,} transactions")
    print(
        f"{r['customers']:,} customers, {r['articles']:,} articles, {DAYS} days; ingest "
        f"{'(reused)' if r['ingest_s'] is None else str(r['ingest_s']) + ' s'} "
        f"({r['lake_files']} lake files); retrain {r['retrain_s']:.1f} s, "
        f"peak memory (driver, JVM and Python workers) {r['peak_pss_gib']:.2f} GiB PSS "
        f"({r['peak_rss_sum_gib']:.2f} GiB summed RSS, which counts shared pages once per "
        f"process; the machine's used memory rose by {r['peak_machine_used_gib']:.2f} GiB)\n"
    )
    print("| stage | seconds | rows |")
    print("|---|---|---|")
    for st in r["stages"]:
        rows = f"{st['rows']:,}" if st["rows"] is not None else ""
        print(f"| {st['stage']} | {st['seconds']:.1f} | {rows} |")
    a = r["als"]
    print(
        f"\nALS on {a['interactions']:,} interactions ({a['users']:,} x {a['items']:,}), rank "
        f"{r['als_params']['rank']}, {r['als_params']['iterations']} iterations: Spark "
        f"{a['spark_als_s']:.1f} s, implicit {a['implicit_s']:.1f} s, ratio {a['ratio']:.2f}x; "
        f"implicit with Spark's exact solver {a['implicit_exact_s']:.1f} s, ratio "
        f"{a['ratio_exact']:.2f}x",
        flush=True,
    )
    if "object_store" in r:
        o = r["object_store"]
        print(
            f"\nin a local SeaweedFS: ingest {o['ingest_s']:.1f} s (local/store "
            f"{o['ingest_ratio']}), retrain {o['retrain_s']:.1f} s (local/store "
            f"{o['retrain_ratio']})",
            flush=True,
        )
    if "lake" in r:
        lk = r["lake"]
        print(
            f"lake files: {lk['files_after_ingest']} after ingest, {lk['files_after_stream']} "
            f"after {lk['batches']} streamed micro-batches of {lk['events_per_batch']} events "
            f"({lk['stream_write_s']:.1f} s), {lk['files_after_compaction']} after compaction "
            f"({lk['compact_s']:.1f} s); a full read {lk['read_s_before']:.1f} s -> "
            f"{lk['read_s_after_compaction']:.1f} s",
            flush=True,
        )

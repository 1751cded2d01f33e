"""`pulse bench batch`: retrain wall time and peak memory on generated data; ALS vs implicit.

For each size N: generate an H&M-like set of about N transactions (the DATA
generator), ingest it into a fresh data root, time a full retrain while sampling
the resident memory of this process and its children (the Spark JVM), render the
report, then fit Spark ALS and the ``implicit`` library on the same interaction
matrix (same rank, iterations, regularisation and confidence) and print the ratio.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import date
from pathlib import Path

from runtime.settings import Settings

TX_PER_CUSTOMER_YEAR = 13.6  # what the generator produced here: 1.09M rows / 80k customers / 365 d


def _rss_tree_bytes(root: int) -> int:
    """Resident memory of ``root`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ppid, pages = int(fields[1]), int(fields[21])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
        rss[int(entry)] = pages * os.sysconf("SC_PAGE_SIZE")
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


class PeakMemory:
    """Sample the process tree's RSS every ``interval`` seconds in a thread; keep the peak."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_tree_bytes(os.getpid()))
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def als_vs_implicit(spark, settings: Settings, rank: int, max_iter: int) -> dict[str, float]:  # noqa: ANN001
    """Fit Spark ALS and implicit's ALS on the same interactions; seconds for each."""
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp
    from implicit.als import AlternatingLeastSquares
    from pyspark.ml.recommendation import ALS

    from batch.recommend import RecParams, als_matrix, interactions
    from storage.lake import last_event_date, read_lake

    p = RecParams(rank=rank, max_iter=max_iter)
    events = read_lake(spark, settings)
    cutoff = last_event_date(settings)
    ratings, users, items = als_matrix(interactions(events, cutoff, p.half_life_days))
    n = ratings.count()
    spark.sparkContext.setCheckpointDir(str((settings.checkpoint_dir / "als-bench").resolve()))
    als = ALS(
        rank=rank,
        maxIter=max_iter,
        regParam=p.reg_param,
        alpha=p.alpha,
        implicitPrefs=True,
        userCol="user",
        itemCol="item",
        ratingCol="weight",
        checkpointInterval=5,
        seed=p.seed,
    )
    t = time.perf_counter()
    model = als.fit(ratings)
    model.userFactors.count()  # force the factors
    spark_s = time.perf_counter() - t

    pdf: pd.DataFrame = ratings.toPandas()
    shape = (int(pdf["user"].max()) + 1, int(pdf["item"].max()) + 1)
    # implicit uses the values as confidence directly; Spark uses 1 + alpha * r
    conf = sp.csr_matrix(
        (1 + p.alpha * pdf["weight"].to_numpy(np.float32), (pdf["user"], pdf["item"])), shape=shape
    )
    model_i = AlternatingLeastSquares(
        factors=rank, iterations=max_iter, regularization=p.reg_param, random_state=p.seed
    )
    t = time.perf_counter()
    model_i.fit(conf, show_progress=False)
    implicit_s = time.perf_counter() - t
    return {
        "interactions": n,
        "users": shape[0],
        "items": shape[1],
        "spark_als_s": spark_s,
        "implicit_s": implicit_s,
        "ratio": spark_s / implicit_s,
    }


def run_bench(settings: Settings, sizes: list[int], rank: int = 32, max_iter: int = 10) -> None:
    """Generate, ingest, retrain (timed, peak memory), report, ALS vs implicit; print figures."""
    from batch.ingest import ingest_source
    from batch.recommend import RecParams
    from batch.report import write_report
    from batch.retrain import RetrainOptions, retrain
    from batch.summary import print_summary
    from producers.adapters import open_source
    from producers.generator import generate
    from runtime.spark import build_spark

    results = []
    for n in sizes:
        root = Path(settings.data_root) / "bench" / f"n={n}"
        s = settings.model_copy(update={"data_root": root})
        gen = root / "generated"
        if not (gen / "_pulse_generated.json").exists():
            generate(
                gen,
                customers=max(100, int(n / TX_PER_CUSTOMER_YEAR)),
                articles=12_000,
                start=date(2019, 9, 1),
                days=365,
                seed=7,
            )
        spark = build_spark(s, "pulse-bench-batch", with_kafka=False)
        t = time.perf_counter()
        ingest = ingest_source(spark, s, open_source(f"synthetic:{gen}"))
        ingest_s = time.perf_counter() - t
        opts = RetrainOptions(rec=RecParams(rank=rank, max_iter=max_iter))
        with PeakMemory() as mem:
            t = time.perf_counter()
            run = retrain(spark, s, opts)
            retrain_s = time.perf_counter() - t
        print_summary(run)
        report = write_report(s)
        als = als_vs_implicit(spark, s, rank, max_iter)
        results.append((n, ingest.appended, ingest_s, retrain_s, mem.peak, als, report))
        # Each size's row as soon as it is measured (a 10M run can take most of an hour).
        _print_table(results[-1:], rank, max_iter)
    if len(results) > 1:
        _print_table(results, rank, max_iter)


def _print_table(results: list[tuple], rank: int, max_iter: int) -> None:
    print("\n## pulse bench batch")
    print(
        "| transactions | ingest s | retrain s | peak RSS (driver+JVM) | ALS interactions | "
        "Spark ALS s | implicit s | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for _n, rows, ing, ret, peak, als, _ in results:
        print(
            f"| {rows:,} | {ing:.1f} | {ret:.1f} | {peak / 2**30:.2f} GiB | "
            f"{als['interactions']:,} | {als['spark_als_s']:.1f} | {als['implicit_s']:.2f} | "
            f"{als['ratio']:.1f}x |"
        )
    print(f"(ALS rank {rank}, {max_iter} iterations; report: {results[-1][6]})", flush=True)

"""Which interactions, rank and iterations should ALS use? MAP@12 and fit time for each.

Usage: ``python scripts/als_signal.py [--holdout-days N] [--vary window|size]`` on the
lake of ``PULSE_DATA_ROOT``. Holds out the last N days (default 30: a month of Online
Retail), then for each variant -- (recency window, minimum buyers per article) with
``--vary window``, (rank, iterations) with ``--vary size`` -- fits ALS on the training
window's interactions and prints a table: interactions kept, fit + scoring seconds, and
MAP@12 of ALS alone and of the blend (repurchase, ALS, popularity) on the hold-out. The
retrain's defaults (``batch.params.RecParams``) were chosen from it.
"""

from __future__ import annotations

import argparse
import time
from datetime import timedelta

from pyspark.sql import functions as F

from batch.als import als_interactions
from batch.candidates import STRATEGIES, assemble, candidate_sources
from batch.evaluate import spark_ranking_metrics
from batch.params import RecParams
from features.time import cutoff_ts
from runtime.settings import Settings
from runtime.spark import build_spark
from storage.lake import last_event_date, read_lake

# (window days, min buyers, rank, iterations)
VARIANTS = {
    "window": [(d, b, 32, 10) for d, b in [(100_000, 1), (365, 1), (180, 1), (90, 1),
                                           (100_000, 3), (180, 3), (180, 10)]],
    "size": [(180, 3, r, i) for r, i in [(32, 10), (16, 10), (8, 10), (32, 5), (16, 5)]],
}  # fmt: skip


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--holdout-days", type=int, default=30)
    parser.add_argument("--vary", choices=sorted(VARIANTS), default="window")
    args = parser.parse_args()
    settings = Settings()
    spark = build_spark(settings, "als-signal", with_kafka=False)
    spark.sparkContext.setCheckpointDir(str((settings.checkpoint_dir / "als-signal").resolve()))
    cutoff = last_event_date(settings) + timedelta(days=1)
    train_end = cutoff - timedelta(days=args.holdout_days)
    events = read_lake(spark, settings, cutoff).cache()
    train = events.where(F.col("event_time") < F.lit(cutoff_ts(train_end)))
    actual = (
        events.where(F.col("event_time") >= F.lit(cutoff_ts(train_end)))
        .where(F.col("quantity") > 0)
        .select("customer_id", "article_id")
        .distinct()
        .cache()
    )
    hold = actual.select("customer_id").distinct().cache()
    catalogue = train.select("article_id").distinct().count()
    print(f"hold-out [{train_end}, {cutoff}): {hold.count():,} buyers\n")
    print(
        "| ALS window (days) | min buyers / article | rank | iterations | interactions | "
        "fit + score s | MAP@12 ALS | MAP@12 blend |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for days, min_buyers, rank, iters in VARIANTS[args.vary]:
        p = RecParams(als_days=days, als_min_buyers=min_buyers, rank=rank, max_iter=iters)
        kept = als_interactions(train, train_end, p).count()
        t = time.perf_counter()
        sources = candidate_sources(train, train_end, p, hold, only_customers=True)
        sources["als"].count()
        seconds = time.perf_counter() - t
        maps = {
            name: spark_ranking_metrics(
                assemble(hold, sources, STRATEGIES[name]), actual, catalogue
            )["map@12"]
            for name in ("als", "blend")
        }
        window = "all" if days >= 100_000 else str(days)
        print(
            f"| {window} | {min_buyers} | {rank} | {iters} | {kept:,} | {seconds:.1f} | "
            f"{maps['als']:.4f} | "
            f"{maps['blend']:.4f} |",
            flush=True,
        )
    spark.stop()


if __name__ == "__main__":
    main()

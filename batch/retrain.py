"""`pulse retrain`: train, evaluate and register the three models in one run.

Read the lake strictly before the cutoff once (the columns the models use, cached),
build the customer-day table once -> per model (``batch.recommend``, ``batch.churn``,
``batch.segments``, each a ``retrain(ctx)``): evaluate on a later, held-out period
against baselines, fit the served model, write its output table and registry version
-> move ``CURRENT`` only when the quality gate passes. The models share the
``batch.context.RetrainContext``: features as of a cutoff are computed once per run
from the customer-day table. Every step is a timed stage (``StageLog``); `pulse
retrain` prints the table.

Besides the output tables, each version directory keeps what serving needs for
customers first seen after the run: ``segments/<v>/model/`` (the fitted
segmentation PipelineModel) with ``names.json`` (segment id -> name), and
``recommendations/<v>/popular.json`` (the run's popularity list, in rank order).

Cutoff C: ``--as-of DATE`` (nothing at or after it is read), else the day after
the last event. Recommendations hold out ``[C - holdout_days, C)``; churn trains
at C - 2H and evaluates at C - H (see ``batch.churn``); segments use all data.
"""

from __future__ import annotations

import sys
import time
from datetime import timedelta

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from batch import churn, recommend, segments
from batch.context import RetrainContext, RetrainOptions, StageLog
from batch.correction import write_state
from features.customer import daily_activity
from runtime.errors import PulseError
from runtime.settings import Settings
from storage import registry
from storage.lake import last_event_date, read_customers, read_lake
from storage.objects import spark_path

__all__ = ["RetrainOptions", "StageLog", "open_context", "retrain"]

USED_COLUMNS = (
    "customer_id",
    "article_id",
    "event_time",
    "quantity",
    "unit_price",
    "sales_channel_id",
)

TRAINERS = {
    "recommendations": recommend.retrain,
    "churn": churn.retrain,
    "segments": segments.retrain,
}


def ensure_checkpoint_dir(spark: SparkSession, settings: Settings) -> None:
    """ALS needs a Spark checkpoint directory: ``settings.checkpoint_dir/retrain`` unless
    the session has one (a directory the caller set is kept)."""
    if spark.sparkContext.getCheckpointDir() is None:
        checkpoints = settings.checkpoint_dir / "retrain"  # RDD checkpoints of the ALS fits
        spark.sparkContext.setCheckpointDir(
            spark_path(checkpoints) if settings.on_object_store else str(checkpoints.resolve())
        )


def open_context(
    spark: SparkSession, settings: Settings, opts: RetrainOptions, log: StageLog
) -> RetrainContext:
    """Read the lake before the cutoff (``opts.as_of``, else the day after the last event)
    and build the customer-day table: what every model of a run shares. ``pulse backtest``
    opens one per cutoff."""
    with log.stage("read the lake") as st:
        cutoff = opts.as_of or last_event_date(settings) + timedelta(days=1)
        # Only the columns the models read are cached: not the ids, the source or
        # produced_at (a third of the bytes of a row at H&M's id lengths).
        events = read_lake(spark, settings, cutoff).select(*USED_COLUMNS).cache()
        stats = events.agg(
            F.count(F.lit(1)).alias("n"), F.min(F.to_date("event_time")).alias("first")
        ).first()
        if not stats or not stats["n"]:
            raise PulseError(f"no events before {cutoff} in the lake")
        st.rows = int(stats["n"])
    with log.stage("customer-day table") as st:
        daily = daily_activity(events).cache()
        st.rows = daily.count()
    return RetrainContext(
        spark=spark,
        settings=settings,
        opts=opts,
        events=events,
        daily=daily,
        customers=read_customers(spark, settings),
        cutoff=cutoff,
        first_day=stats["first"],
        version=registry.new_version(),
        window={
            "first_event_date": str(stats["first"]),
            "cutoff_exclusive": str(cutoff),
            "events": int(stats["n"]),
        },
        log=log,
    )


def retrain(
    spark: SparkSession, settings: Settings, opts: RetrainOptions, log: StageLog | None = None
) -> dict[str, dict]:
    """One retrain run: returns {model name: meta} for the models trained.

    ``log`` collects the stage table (a fresh one when not given); `pulse retrain`
    prints it. The one session setting it makes: ALS needs a Spark checkpoint
    directory, so when recommendations are trained on a session that has none, it gets
    ``settings.checkpoint_dir/retrain``; a directory the caller set is kept.
    """
    log = log if log is not None else StageLog()
    log.progress = opts.progress
    start = time.perf_counter()
    ctx = open_context(spark, settings, opts, log)
    if "recommendations" in opts.models:
        ensure_checkpoint_dir(spark, settings)
    out = {name: TRAINERS[name](ctx) for name in TRAINERS if name in opts.models}
    with log.stage("customer state for the speed layer") as st:
        # Every run: the stream takes it at its next batch (the lambda correction).
        st.rows = write_state(settings, ctx.events, ctx.cutoff, ctx.version, ctx.daily)["customers"]
    ctx.release()
    if opts.progress:
        seconds = time.perf_counter() - start
        print(f"[retrain] version {ctx.version} in {seconds:.1f}s", file=sys.stderr)
    return out

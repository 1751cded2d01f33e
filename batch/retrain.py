"""`pulse retrain`: train, evaluate and register the three models in one run.

Read the lake strictly before the cutoff -> per model: evaluate on a later,
held-out period against baselines, fit the served model, write its output table
and registry version -> move ``CURRENT`` only when the quality gate passes.

Besides the output tables, each version directory keeps what serving needs for
customers first seen after the run: ``segments/<v>/model/`` (the fitted
segmentation PipelineModel) with ``names.json`` (segment id -> name), and
``recommendations/<v>/popular.json`` (the run's popularity list, in rank order).

Cutoff C: ``--as-of DATE`` (nothing at or after it is read), else the day after
the last event. Recommendations hold out ``[C - holdout_days, C)``; churn trains
at C - 2H and evaluates at C - H (see ``batch.churn``); segments use all data.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from typing import Any, cast

import numpy as np
import pandas as pd
from pyspark.ml.classification import GBTClassificationModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from batch import churn as churn_mod
from batch import recommend as rec_mod
from batch import segments as seg_mod
from batch.evaluate import ranking_metrics
from batch.state import write_state
from features.attributes import with_customer_attributes
from features.customer import compute_features
from features.time import as_of_for, cutoff_ts
from runtime.errors import PulseError
from runtime.settings import Settings
from schemas.tables import N_RECOMMENDATIONS
from storage import registry
from storage.lake import last_event_date, read_customers, read_lake

# The recommendations' quality gate: Kaggle MAP@K (a key of ``ranking_metrics``).
MAP_AT_K = f"map@{N_RECOMMENDATIONS}"


@dataclass(frozen=True)
class RetrainOptions:
    """What to train and how; defaults fit a 2-core laptop."""

    as_of: date | None = None
    holdout_days: int = 7
    models: tuple[str, ...] = registry.MODELS
    rec: rec_mod.RecParams = field(default_factory=rec_mod.RecParams)
    churn: churn_mod.ChurnParams = field(default_factory=churn_mod.ChurnParams)
    k_min: int = 3
    k_max: int = 8
    regression_tolerance: float = 0.10  # relative drop vs CURRENT that still passes
    progress: bool = True


@contextmanager
def stage(name: str, progress: bool) -> Iterator[None]:
    """Print a stage's start and its duration to stderr (progress for long runs)."""
    start = time.perf_counter()
    if progress:
        print(f"[retrain] {name} ...", file=sys.stderr, flush=True)
    yield
    if progress:
        print(f"[retrain] {name} done in {time.perf_counter() - start:.1f}s", file=sys.stderr)


def gate(
    settings: Settings, name: str, key: str, value: float, baseline: float | None, tol: float
) -> dict[str, Any]:
    """Pass when ``value`` (higher is better) is >= the baseline and not much below CURRENT."""
    reasons = []
    if value is None or math.isnan(value):
        reasons.append(f"{key} is undefined")
    elif baseline is not None and not math.isnan(baseline) and value < baseline:
        reasons.append(f"{key} {value:.4f} < baseline {baseline:.4f}")
    current = registry.current_version(settings, name)
    current_value = None
    if current is not None:
        current_value = registry.read_meta(settings, name, current).get("gate", {}).get("value")
        if current_value is not None and value is not None and not math.isnan(value):
            floor = current_value * (1 - tol) if current_value > 0 else current_value - tol
            if value < floor:
                reasons.append(
                    f"{key} {value:.4f} < current {current} {current_value:.4f} - {tol:.0%}"
                )
    return {
        "metric": key,
        "value": value,
        "baseline": baseline,
        "current_version": current,
        "current_value": current_value,
        "passed": not reasons,
        "reasons": reasons,
    }


def _finish(settings: Settings, name: str, version: str, meta: dict[str, Any]) -> dict[str, Any]:
    """Write meta.json, then move CURRENT if the gate passed."""
    meta["promoted"] = bool(meta["gate"]["passed"])
    registry.write_meta(settings, name, version, meta)
    if meta["promoted"]:
        registry.promote(settings, name, version)
    return meta


def _write(df: DataFrame, path) -> None:  # noqa: ANN001
    df.coalesce(2).write.mode("overwrite").parquet(str(path))


def retrain_recommendations(
    spark: SparkSession,
    settings: Settings,
    events: DataFrame,
    cutoff: date,
    version: str,
    opts: RetrainOptions,
    window: dict[str, Any],
) -> dict[str, Any]:
    """Evaluate every candidate on the hold-out, serve the best one refit on all data."""
    p = opts.rec
    train_end = cutoff - timedelta(days=opts.holdout_days)
    train = events.where(F.col("event_time") < F.lit(cutoff_ts(train_end)))
    holdout = events.where(F.col("event_time") >= F.lit(cutoff_ts(train_end))).where(
        F.col("quantity") > 0
    )
    with stage("recommendations: hold-out evaluation", opts.progress):
        actual_pd = holdout.groupBy("customer_id").agg(F.collect_set("article_id").alias("a"))
        actual = {r.customer_id: set(r.a) for r in actual_pd.collect()}
        if not actual:
            raise PulseError(f"no purchases in the hold-out [{train_end}, {cutoff})")
        hold_customers = holdout.select("customer_id").distinct().cache()
        catalogue = train.select("article_id").distinct().count()
        sources = rec_mod.candidate_sources(train, train_end, p, hold_customers)
        metrics = {}
        for name, order in rec_mod.STRATEGIES.items():
            recs_df = rec_mod.assemble(hold_customers, sources, order)
            rows = recs_df.select("customer_id", "rank", "article_id").collect()
            recs: dict[str, list[tuple[int, str]]] = {}
            for r in rows:
                recs.setdefault(r.customer_id, []).append((r["rank"], r.article_id))
            ranked = {c: [a for _, a in sorted(v)] for c, v in recs.items()}
            metrics[name] = ranking_metrics(ranked, actual, catalogue)
            if opts.progress:
                print(f"  {name:<11} {MAP_AT_K} {metrics[name][MAP_AT_K]:.4f}", file=sys.stderr)
    best = max(metrics, key=lambda n: metrics[n][MAP_AT_K])
    with stage(
        f"recommendations: refit '{best}' on all data, top {N_RECOMMENDATIONS} for every customer",
        opts.progress,
    ):
        everyone = events.select("customer_id").distinct()
        customers = read_customers(spark, settings)
        if customers is not None:
            everyone = everyone.unionByName(customers.select("customer_id")).distinct()
        everyone = everyone.cache()
        order = rec_mod.STRATEGIES[best]
        full = rec_mod.candidate_sources(events, cutoff, p, everyone, "als" in order)
        _write(
            rec_mod.assemble(everyone, full, order),
            registry.output_path(settings, "recommendations", version),
        )
        # Serving gives this list to customers first seen after this run (not in the table).
        popular = [r.article_id for r in full["popularity"].orderBy("pos").collect()]
        version_dir = registry.model_dir(settings, "recommendations", version)
        popular_path = version_dir / registry.POPULAR_FILE
        popular_path.parent.mkdir(parents=True, exist_ok=True)
        popular_path.write_text(
            json.dumps(
                {"articles": popular, "popular_days": p.popular_days, "cutoff": str(cutoff)},
                indent=2,
            )
        )
    value = metrics[best][MAP_AT_K]
    meta = {
        "model": "recommendations",
        "version": version,
        "params": asdict(p) | {"holdout_days": opts.holdout_days},
        "window": window | {"train_end": str(train_end), "holdout": [str(train_end), str(cutoff)]},
        "metrics": metrics,
        "served": best,
        "output": str(registry.output_path(settings, "recommendations", version)),
        "popular": str(popular_path),
        "gate": gate(
            settings,
            "recommendations",
            MAP_AT_K,
            value,
            metrics["popularity"][MAP_AT_K],
            opts.regression_tolerance,
        ),
    }
    return _finish(settings, "recommendations", version, meta)


def retrain_churn(
    spark: SparkSession,
    settings: Settings,
    events: DataFrame,
    cutoff: date,
    first_day: date,
    version: str,
    opts: RetrainOptions,
    window: dict[str, Any],
) -> dict[str, Any]:
    """Train at C - 2H, evaluate at C - H against recency and BG/NBD, refit at C - H, score at C."""
    h = settings.churn_horizon_days
    f1, f2 = cutoff - timedelta(days=2 * h), cutoff - timedelta(days=h)
    if f1 <= first_day:
        raise PulseError(f"churn needs history before {f1} (2 x {h} days before the cutoff)")
    customers = read_customers(spark, settings)
    with stage(f"churn: train at {f1}, evaluate at {f2} (H = {h} days)", opts.progress):
        train = churn_mod.labelled(
            events.where(F.col("event_time") < F.lit(cutoff_ts(f2))), customers, f1, h
        ).cache()
        test = churn_mod.labelled(events, customers, f2, h).cache()
        model = churn_mod.fit(train, opts.churn)
        cols = [
            "customer_id",
            "label",
            "churn_probability",
            "recency_days",
            "frequency",
            "tenure_days",
        ]
        scored = cast(
            pd.DataFrame, churn_mod.churn_probability(model, test).select(*cols).toPandas()
        )
        train_pd = cast(pd.DataFrame, train.select("label", "recency_days").toPandas())
        y = scored["label"].to_numpy()
        p_gbt = scored["churn_probability"].to_numpy()
        p_rec = churn_mod.recency_baseline(train_pd, scored)
        p_bg = np.exp(-churn_mod.bgnbd_expected(scored, h))  # P(no purchase), Poisson approx.
        metrics = {
            "gbt": churn_mod.binary_metrics(y, p_gbt),
            "recency": churn_mod.binary_metrics(y, p_rec),
            "bgnbd": churn_mod.binary_metrics(y, p_bg),
        }
        roc = {
            n: churn_mod.roc_points(y, s)
            for n, s in (("gbt", p_gbt), ("recency", p_rec), ("bgnbd", p_bg))
        }
        gbt_stage = cast(GBTClassificationModel, model.stages[-1])
        importances = dict(
            zip(
                churn_mod.feature_names(),
                gbt_stage.featureImportances.toArray().tolist(),
                strict=False,
            )
        )
    if opts.progress:
        for n, m in metrics.items():
            print(
                f"  {n:<8} AUC {m['auc_roc']:.4f} PR-AUC {m['pr_auc']:.4f} Brier {m['brier']:.4f}",
                file=sys.stderr,
            )
    with stage(f"churn: refit at {f2}, score every customer as of {cutoff}", opts.progress):
        served = churn_mod.fit(test, opts.churn)
        served.write().overwrite().save(str(registry.model_path(settings, "churn", version)))
        now = compute_features(events, as_of_for(cutoff)).where(
            F.col("last_purchase_date").isNotNull()
        )
        now = with_customer_attributes(now, customers)
        out = churn_mod.churn_probability(served, now).select(
            "customer_id", "as_of", "churn_probability"
        )
        _write(out, registry.output_path(settings, "churn_scores", version))
    meta = {
        "model": "churn",
        "version": version,
        "params": asdict(opts.churn) | {"horizon_days": h},
        "window": window | {"train_cutoff": str(f1), "eval_cutoff": str(f2)},
        "rows": {
            "train": int(len(train_pd)),
            "eval": int(len(scored)),
            "eval_churn_rate": float(y.mean()) if len(y) else None,
        },
        "metrics": metrics,
        "roc": roc,
        "feature_importances": dict(sorted(importances.items(), key=lambda kv: -kv[1])),
        "output": str(registry.output_path(settings, "churn_scores", version)),
        "model_path": str(registry.model_path(settings, "churn", version)),
        "gate": gate(
            settings,
            "churn",
            "auc_roc",
            metrics["gbt"]["auc_roc"],
            metrics["recency"]["auc_roc"],
            opts.regression_tolerance,
        ),
    }
    train.unpersist()
    test.unpersist()
    return _finish(settings, "churn", version, meta)


def retrain_segments(
    spark: SparkSession,
    settings: Settings,
    events: DataFrame,
    cutoff: date,
    version: str,
    opts: RetrainOptions,
    window: dict[str, Any],
) -> dict[str, Any]:
    """K-Means on log RFM as of the cutoff; k by silhouette; named from centroids."""
    with stage("segments: choose k by silhouette", opts.progress):
        feats = (
            compute_features(events, as_of_for(cutoff))
            .where(F.col("last_purchase_date").isNotNull())
            .cache()
        )
        k, scores = seg_mod.choose_k(feats, range(opts.k_min, opts.k_max + 1))
    with stage(f"segments: fit k = {k} on all customers", opts.progress):
        model = seg_mod.build_pipeline(k).fit(feats)
        assigned = model.transform(feats).cache()
        profile = seg_mod.profile(assigned)
        names = seg_mod.name_segments(profile)
        for row in profile:
            row["segment_name"] = names[row["segment_id"]]
        model.write().overwrite().save(str(registry.model_path(settings, "segments", version)))
        names_path = registry.model_dir(settings, "segments", version) / registry.SEGMENT_NAMES_FILE
        names_path.write_text(json.dumps({str(k_): v for k_, v in names.items()}, indent=2))
        mapping = spark.createDataFrame(list(names.items()), "segment_id int, segment_name string")
        out = (
            assigned.select("customer_id", F.col("prediction").cast("int").alias("segment_id"))
            .join(F.broadcast(mapping), "segment_id")
            .select("customer_id", "segment_id", "segment_name")
        )
        _write(out, registry.output_path(settings, "segments", version))
    meta = {
        "model": "segments",
        "version": version,
        "params": {
            "k": k,
            "k_range": [opts.k_min, opts.k_max],
            "features": ["log1p recency", "log1p frequency", "log1p monetary"],
        },
        "window": window,
        "metrics": {
            "silhouette": scores[k],
            "silhouette_by_k": {str(a): b for a, b in scores.items()},
        },
        "profile": profile,
        "names": {str(a): b for a, b in names.items()},
        "output": str(registry.output_path(settings, "segments", version)),
        "model_path": str(registry.model_path(settings, "segments", version)),
        # a clustering no better than random (silhouette <= 0) is not served
        "gate": gate(settings, "segments", "silhouette", scores[k], 0.0, opts.regression_tolerance),
    }
    feats.unpersist()
    assigned.unpersist()
    return _finish(settings, "segments", version, meta)


def retrain(spark: SparkSession, settings: Settings, opts: RetrainOptions) -> dict[str, dict]:
    """One retrain run: returns {model name: meta} for the models trained.

    The one session setting it makes: ALS needs a Spark checkpoint directory, so when
    recommendations are trained on a session that has none, it gets
    ``settings.checkpoint_dir/retrain``; a directory the caller set is kept.
    """
    start = time.perf_counter()
    with stage("reading the lake", opts.progress):
        if opts.as_of is None:
            cutoff = last_event_date(settings) + timedelta(days=1)
        else:
            cutoff = opts.as_of
        events = read_lake(spark, settings, cutoff).cache()
        stats = events.agg(F.count(F.lit(1)).alias("n"), F.min("event_date").alias("first")).first()
        if not stats or not stats["n"]:
            raise PulseError(f"no events before {cutoff} in the lake")
    window = {
        "first_event_date": str(stats["first"]),
        "cutoff_exclusive": str(cutoff),
        "events": int(stats["n"]),
    }
    if opts.progress:
        print(
            f"[retrain] {stats['n']:,} events from {stats['first']} to before {cutoff}",
            file=sys.stderr,
        )
    version = registry.new_version()
    out: dict[str, dict] = {}
    if "recommendations" in opts.models:
        if spark.sparkContext.getCheckpointDir() is None:
            spark.sparkContext.setCheckpointDir(
                str((settings.checkpoint_dir / "retrain").resolve())
            )
        out["recommendations"] = retrain_recommendations(
            spark, settings, events, cutoff, version, opts, window
        )
    if "churn" in opts.models:
        out["churn"] = retrain_churn(
            spark, settings, events, cutoff, stats["first"], version, opts, window
        )
    if "segments" in opts.models:
        out["segments"] = retrain_segments(spark, settings, events, cutoff, version, opts, window)
    with stage("customer state for the speed layer", opts.progress):
        # Every run: the stream takes it at its next batch (the lambda correction).
        write_state(settings, events, cutoff, version)
    events.unpersist()
    if opts.progress:
        print(f"[retrain] version {version} in {time.perf_counter() - start:.1f}s", file=sys.stderr)
    return out

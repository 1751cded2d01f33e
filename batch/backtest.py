"""`pulse backtest`: the retrain judged walk-forward, at every cutoff of a schedule.

At each cutoff C the models are trained exactly as `pulse retrain --as-of C` trains them,
from the lake strictly before C (``batch.retrain.open_context``), and what they would
have served at C is scored against the ``window_days`` after it, which no model saw:

- **recommendations**: ``batch.recommend.select`` chooses the strategy on the retrain's
  own hold-out before C, ``batch.recommend.refit`` refits it on everything before C, and
  the lists are made for the customers who bought in ``[C, C + window)``. Against them,
  the simple baselines from the same refit: popularity, and repurchase then popularity.
  MAP@12 and revenue in lists (what the buyers spent on the articles of their 12) with
  ``batch.evaluate.spark_ranking_metrics_by``, the retrain's own metric.
- **churn**: the served stack as the retrain builds it (BG/NBD and Gamma-Gamma fitted at
  C - H and at C, the stack fitted on the labels of ``[C - H, C)``), scoring everyone with
  a purchase before C; the label is no purchase in ``[C, C + H)`` (H =
  ``settings.churn_horizon_days``). Against BG/NBD's own P(no purchase in H) fitted at C,
  and recency alone (fitted at C - H like the stack). AUC, PR-AUC and Brier with
  ``batch.evaluate.binary_metrics_by``.

Each cutoff's ratio (served MAP@12 over the better baseline's) and AUC gain (served over
BG/NBD) gets a bootstrap interval over customers; the summary gives their mean, their
minimum and the interval of the mean (customers resampled within every cutoff at once).
Nothing is written to the registry: a backtest never changes what is served.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from functools import reduce
from typing import Any

import numpy as np
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from batch import recommend
from batch.candidates import STRATEGIES, assemble
from batch.churn import (
    choose_stack,
    churn_probability,
    fit_btyd,
    fit_stack,
    labels,
    recency_baseline,
    stack_rows,
    with_btyd,
)
from batch.context import RetrainContext, RetrainOptions, StageLog
from batch.evaluate import binary_metrics_by, spark_ranking_metrics_by
from batch.retrain import USED_COLUMNS, ensure_checkpoint_dir, open_context
from features.time import cutoff_ts
from runtime.errors import PulseError
from runtime.settings import Settings
from schemas.tables import N_RECOMMENDATIONS
from storage.lake import last_event_date, read_lake

MODELS = ("recommendations", "churn")
MAP_AT_K = recommend.MAP_AT_K
REVENUE_AT_K = f"revenue@{N_RECOMMENDATIONS}"
#: The simple baselines the served lists must beat (strategy name -> candidate order).
REC_BASELINES = {"popularity": STRATEGIES["popularity"], "repurchase": STRATEGIES["repurchase"]}
#: The churn baselines: BG/NBD's own probability, and recency alone.
CHURN_BASELINES = ("bgnbd", "recency")


@dataclass(frozen=True)
class BacktestOptions:
    """The schedule and what to judge. ``retrain`` carries the models' parameters; its
    ``holdout_days`` is the retrain's own hold-out before each cutoff (the window's length
    unless told otherwise, so the ranker learns the horizon it is judged on)."""

    cutoffs: tuple[date, ...]
    window_days: int = 30
    models: tuple[str, ...] = MODELS
    bootstrap: int = 1000
    seed: int = 42
    retrain: RetrainOptions = field(default_factory=RetrainOptions)
    progress: bool = True


def monthly_cutoffs(first: date, last: date) -> list[date]:
    """The 1st of every month from ``first`` to ``last`` (both must be 1sts), in order."""
    if first.day != 1 or last.day != 1:
        raise PulseError(f"monthly cutoffs start on the 1st: got {first} and {last}")
    if last < first:
        raise PulseError(f"the schedule ends ({last}) before it starts ({first})")
    out, month = [], first
    while month <= last:
        out.append(month)
        month = date(month.year + month.month // 12, month.month % 12 + 1, 1)
    return out


def every_n_days(first: date, last: date, days: int) -> list[date]:
    """``first``, ``first + days``, ... up to ``last``."""
    if days < 1:
        raise PulseError(f"the step must be at least one day, got {days}")
    if last < first:
        raise PulseError(f"the schedule ends ({last}) before it starts ({first})")
    return [first + timedelta(days=i) for i in range(0, (last - first).days + 1, days)]


# --- the bootstrap ------------------------------------------------------------------------


def resample_weights(rng: np.random.Generator, n: int, reps: int) -> np.ndarray:
    """``reps`` x ``n`` bootstrap counts: how often each customer is drawn in a resample."""
    draws = rng.integers(0, n, size=(reps, n))
    return np.stack([np.bincount(row, minlength=n) for row in draws]).astype(np.float64)


def weighted_auc(scores: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC-ROC of ``scores`` for labels ``y`` (0/1), once per row of ``weights`` (a
    customer drawn w times counts w times); ties count one half, as in
    ``batch.evaluate.binary_metrics_by``. O(customers) per row: the order is fixed."""
    order = np.argsort(-scores, kind="stable")
    s, yy, w = scores[order], y[order], weights[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    pos = np.add.reduceat(w * yy, starts, axis=1)
    neg = np.add.reduceat(w * (1.0 - yy), starts, axis=1)
    tp = np.cumsum(pos, axis=1)
    area = np.sum(neg * (tp - pos / 2.0), axis=1)
    total = tp[:, -1] * np.sum(neg, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, area / total, np.nan)


def interval(values: np.ndarray) -> list[float]:
    """The 2.5th and 97.5th percentiles (a 95% bootstrap interval)."""
    lo, hi = np.nanpercentile(values, [2.5, 97.5])
    return [float(lo), float(hi)]


# --- recommendations at one cutoff -----------------------------------------------------------


def per_customer_ap(lists: DataFrame, actual: DataFrame, strategies: list[str]) -> np.ndarray:
    """AP@12 per (strategy, buyer): an array strategies x buyers, buyers in id order.

    Kaggle's AP@K, as ``spark_ranking_metrics_by`` computes it (a repeated article counts
    at its best rank), one value per customer so the bootstrap can resample customers.
    """
    k = N_RECOMMENDATIONS
    size = {
        r["customer_id"]: int(r["n"])
        for r in actual.groupBy("customer_id").agg(F.count(F.lit(1)).alias("n")).collect()
    }
    ids = sorted(size)
    where = {c: i for i, c in enumerate(ids)}
    hits = (
        lists.groupBy("strategy", "customer_id", "article_id")
        .agg(F.min("rank").alias("rank"))
        .where(F.col("rank") <= k)  # lists are K long; a longer one is cut as the metric does
        .join(actual.select("customer_id", "article_id"), ["customer_id", "article_id"])
        .groupBy("strategy", "customer_id")
        .agg(F.sort_array(F.collect_list("rank")).alias("ranks"))
        .collect()
    )
    out = np.zeros((len(strategies), len(ids)))
    for r in hits:
        ranks = np.asarray(r["ranks"], dtype=np.float64)
        ap = np.sum(np.arange(1, len(ranks) + 1) / ranks) / min(k, size[r["customer_id"]])
        out[strategies.index(r["strategy"]), where[r["customer_id"]]] = ap
    return out


def recommendations_at(
    ctx: RetrainContext, after: DataFrame, window_days: int, weights: Any
) -> dict[str, Any]:
    """The served lists at ``ctx.cutoff`` and the baselines, scored on the window after it.

    ``after``: the lake's events from the cutoff on (at least ``window_days`` of them).
    ``weights``: a function n -> bootstrap counts (reps x n).
    """
    cutoff = ctx.cutoff
    end = cutoff + timedelta(days=window_days)
    with ctx.stage(f"backtest: buyers in [{cutoff}, {end})") as st:
        actual = (
            after.where(F.col("event_time") < F.lit(cutoff_ts(end)))
            .where(F.col("quantity") > 0)
            .groupBy("customer_id", "article_id")
            .agg(F.sum(F.col("quantity") * F.col("unit_price")).alias("spend"))
            .cache()
        )
        buyers = actual.select("customer_id").distinct().cache()
        st.rows = buyers.count()
        if not st.rows:
            raise PulseError(f"no purchases in the backtest window [{cutoff}, {end})")
    selection = recommend.select(ctx, buyers)
    with ctx.stage(f"backtest: '{selection.best}' refit at {cutoff}, lists for the buyers"):
        full = recommend.refit(ctx, selection, buyers)
        orders = {"served": STRATEGIES[selection.best]} | REC_BASELINES
        lists = reduce(
            DataFrame.unionByName,
            [
                assemble(buyers, full, order).withColumn("strategy", F.lit(name))
                for name, order in orders.items()
            ],
        ).cache()
        catalogue = ctx.events.select("article_id").distinct().count()
        names = list(orders)
        metrics = spark_ranking_metrics_by(lists, actual, catalogue, names)
        ap = per_customer_ap(lists, actual, names)
    lists.unpersist()
    selection.release()
    actual.unpersist()
    buyers.unpersist()
    base = max(REC_BASELINES, key=lambda n: metrics[n][MAP_AT_K])
    w = weights(ap.shape[1])
    served_b = w @ ap[names.index("served")] / w.sum(axis=1)
    base_b = w @ ap[names.index(base)] / w.sum(axis=1)
    return {
        "cutoff": str(cutoff),
        "window": [str(cutoff), str(end)],
        "buyers": int(ap.shape[1]),
        "served_strategy": selection.best,
        "left_out": selection.left_out,
        "selection": {n: m[MAP_AT_K] for n, m in selection.metrics.items()},
        "strategies": {
            n: {MAP_AT_K: m[MAP_AT_K], REVENUE_AT_K: m.get(REVENUE_AT_K, 0.0)}
            for n, m in metrics.items()
        },
        "best_baseline": base,
        "ratio": _ratio(metrics["served"][MAP_AT_K], metrics[base][MAP_AT_K]),
        "ratio_interval": interval(served_b / base_b),
        "revenue_ratio": _ratio(
            metrics["served"].get(REVENUE_AT_K, 0.0), metrics[base].get(REVENUE_AT_K, 0.0)
        ),
        # for the summary's interval: the resampled means at this cutoff
        "_resampled": (served_b, base_b),
    }


def _money(value: float) -> str:
    """Revenue for the table: whole units, or 3 significant digits below 1,000 (H&M's
    prices are scaled to about 0.03)."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


# --- churn at one cutoff -----------------------------------------------------------------------


def churn_at(ctx: RetrainContext, after: DataFrame, weights: Any) -> dict[str, Any]:
    """The served churn model as of ``ctx.cutoff`` against BG/NBD and recency, on the
    labels of the H days after it."""
    params, h, cutoff = ctx.opts.churn, ctx.settings.churn_horizon_days, ctx.cutoff
    f1, f2 = cutoff - timedelta(days=2 * h), cutoff - timedelta(days=h)
    if f1 <= ctx.first_day:
        raise PulseError(f"churn at {cutoff} needs history before {f1} (2 x {h} days)")
    with ctx.stage(f"backtest: churn stack fitted at {f2}, scored at {cutoff}") as st:
        fitted = {cutoff: fit_btyd(ctx.features_at(cutoff), h, params)}
        train, train_cuts = stack_rows(ctx, f2, fitted, h)
        kind = params.stack
        if kind == "auto":
            older, _ = stack_rows(ctx, f1, fitted, h)
            kind, _ = choose_stack(older, params)
            older.unpersist()
        served = with_btyd(fit_stack(train, kind, params), fitted[cutoff])
        recency = recency_baseline(train)
        now = labels(ctx.features_at(cutoff), after, cutoff, h)
        scored = _with_p_recency(recency, churn_probability(served, now))
        frame = scored.select(
            "customer_id",
            "label",
            F.col("churn_probability").alias("served"),
            F.col("bg_p_no_purchase").alias("bgnbd"),
            "p_recency",
        ).cache()
        st.rows = frame.count()
        columns = {"served": "served", "bgnbd": "bgnbd", "recency": "p_recency"}
        metrics = binary_metrics_by(frame, columns)
        local = frame.orderBy("customer_id").select("label", *columns.values()).collect()
        frame.unpersist()
        train.unpersist()
    values = np.asarray(local, dtype=np.float64).reshape(len(local), 1 + len(columns))
    y = values[:, 0]
    w = weights(len(y))
    auc = {n: weighted_auc(values[:, i + 1], y, w) for i, n in enumerate(columns)}
    return {
        "cutoff": str(cutoff),
        "window": [str(cutoff), str(cutoff + timedelta(days=h))],
        "customers": len(y),
        "churn_rate": float(y.mean()) if len(y) else float("nan"),
        "stack": kind,
        "stack_trained_at": [str(c) for c in train_cuts],
        "models": metrics,
        "auc_gain": metrics["served"]["auc_roc"] - metrics["bgnbd"]["auc_roc"],
        "auc_gain_interval": interval(auc["served"] - auc["bgnbd"]),
        "_resampled": (auc["served"], auc["bgnbd"]),
    }


def _with_p_recency(recency: Any, df: DataFrame) -> DataFrame:
    """``df`` + ``p_recency``, the recency baseline's P(churn)."""
    out = recency.transform(df.drop("probability", "rawPrediction", "prediction"))
    out = out.withColumn("p_recency", vector_to_array(F.col("probability"))[1])
    return out.drop("probability", "rawPrediction", "prediction", "recency_features")


# --- the run -----------------------------------------------------------------------------------


def span_days(settings: Settings, window_days: int, models: Iterable[str]) -> int:
    """The days each cutoff needs after it: the window, or churn's horizon if longer."""
    return max(window_days, settings.churn_horizon_days if "churn" in models else 0)


def check_schedule(settings: Settings, opts: BacktestOptions) -> list[date]:
    """``opts.cutoffs`` sorted, or PulseError: none, an unknown model, or a window that runs
    past the lake's last event. Reads the lake's log only, so `pulse backtest` checks it
    before a Spark session starts."""
    if not opts.cutoffs:
        raise PulseError("no cutoffs to backtest")
    unknown = sorted(set(opts.models) - set(MODELS))
    if unknown:
        raise PulseError(f"unknown model(s) {', '.join(unknown)}: choose from {', '.join(MODELS)}")
    cutoffs = sorted(set(opts.cutoffs))
    span = span_days(settings, opts.window_days, opts.models)
    last = last_event_date(settings)
    if cutoffs[-1] + timedelta(days=span) > last + timedelta(days=1):
        raise PulseError(
            f"the window after {cutoffs[-1]} ({span} days) runs past the lake's last event "
            f"({last}): end the schedule by {last + timedelta(days=1 - span)}"
        )
    return cutoffs


def backtest(spark: SparkSession, settings: Settings, opts: BacktestOptions) -> dict[str, Any]:
    """Every cutoff of ``opts.cutoffs``, every model of ``opts.models``: the figures per
    cutoff and their summary (see the module docstring). Raises PulseError as
    ``check_schedule`` does."""
    cutoffs = check_schedule(settings, opts)
    span = span_days(settings, opts.window_days, opts.models)
    if "recommendations" in opts.models:
        ensure_checkpoint_dir(spark, settings)
    rng = np.random.default_rng(opts.seed)

    def weights(n: int) -> np.ndarray:
        return resample_weights(rng, n, opts.bootstrap)

    started = time.perf_counter()
    per_model: dict[str, list[dict[str, Any]]] = {m: [] for m in opts.models}
    stages: list[dict[str, Any]] = []
    for cutoff in cutoffs:
        log = StageLog(progress=opts.progress)
        ctx = open_context(spark, settings, replace(opts.retrain, as_of=cutoff), log)
        after = (
            read_lake(spark, settings, cutoff + timedelta(days=span))
            .where(F.col("event_time") >= F.lit(cutoff_ts(cutoff)))
            .select(*USED_COLUMNS)
            .cache()
        )
        try:
            if "recommendations" in opts.models:
                per_model["recommendations"].append(
                    recommendations_at(ctx, after, opts.window_days, weights)
                )
            if "churn" in opts.models:
                per_model["churn"].append(churn_at(ctx, after, weights))
        finally:
            after.unpersist()
            ctx.release()
        stages.append({"cutoff": str(cutoff), "seconds": round(log.total(), 1)})
    out: dict[str, Any] = {
        "cutoffs": [str(c) for c in cutoffs],
        "window_days": opts.window_days,
        "churn_horizon_days": settings.churn_horizon_days,
        "holdout_days": opts.retrain.holdout_days,
        "bootstrap": opts.bootstrap,
        "seconds": round(time.perf_counter() - started, 1),
        "per_cutoff_seconds": stages,
    }
    if "recommendations" in per_model:
        rows = per_model["recommendations"]
        mean_ratio_b = np.mean([s / b for s, b in (r.pop("_resampled") for r in rows)], axis=0)
        ratios = [r["ratio"] for r in rows]
        out["recommendations"] = {
            "per_cutoff": rows,
            "summary": {
                "mean_ratio": float(np.mean(ratios)),
                "min_ratio": float(np.min(ratios)),
                "mean_ratio_interval": interval(mean_ratio_b),
                "mean_map": {
                    n: float(np.mean([r["strategies"][n][MAP_AT_K] for r in rows]))
                    for n in rows[0]["strategies"]
                },
                "mean_revenue_ratio": float(np.mean([r["revenue_ratio"] for r in rows])),
            },
        }
    if "churn" in per_model:
        rows = per_model["churn"]
        mean_gain_b = np.mean([s - b for s, b in (r.pop("_resampled") for r in rows)], axis=0)
        gains = [r["auc_gain"] for r in rows]
        out["churn"] = {
            "per_cutoff": rows,
            "summary": {
                "mean_auc_gain": float(np.mean(gains)),
                "min_auc_gain": float(np.min(gains)),
                "mean_auc_gain_interval": interval(mean_gain_b),
                "mean": {
                    n: {
                        m: float(np.mean([r["models"][n][m] for r in rows]))
                        for m in ("auc_roc", "pr_auc", "brier")
                    }
                    for n in rows[0]["models"]
                },
            },
        }
    return out


def _binary(m: dict[str, float]) -> str:
    """A churn model's cell: AUC / PR-AUC / Brier."""
    return f"{m['auc_roc']:.4f} / {m['pr_auc']:.4f} / {m['brier']:.4f}"


def tables(result: dict[str, Any]) -> list[str]:
    """Markdown tables, one per model: each cutoff's figures, then the summary rows."""
    lines: list[str] = []
    if "recommendations" in result:
        rec = result["recommendations"]
        lines += [
            f"recommendations: MAP@12 (revenue in lists) in the {result['window_days']} days "
            "after each cutoff; ratio = served / the better baseline [95% bootstrap interval]",
            "",
            "| cutoff | buyers | served | popularity | repurchase | ratio | revenue ratio |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in rec["per_cutoff"]:
            s = r["strategies"]
            cells = [
                f"{s[n][MAP_AT_K]:.4f} ({_money(s[n][REVENUE_AT_K])})"
                for n in ("served", "popularity", "repurchase")
            ]
            lo, hi = r["ratio_interval"]
            lines.append(
                f"| {r['cutoff']} | {r['buyers']:,} | {cells[0]} {r['served_strategy']} | "
                f"{cells[1]} | {cells[2]} | **{r['ratio']:.2f}x** [{lo:.2f}, {hi:.2f}] | "
                f"{r['revenue_ratio']:.2f}x |"
            )
        sm = rec["summary"]
        lo, hi = sm["mean_ratio_interval"]
        m = sm["mean_map"]
        lines.append(
            f"| mean | | {m['served']:.4f} | {m['popularity']:.4f} | {m['repurchase']:.4f} | "
            f"**{sm['mean_ratio']:.2f}x** [{lo:.2f}, {hi:.2f}] | "
            f"{sm['mean_revenue_ratio']:.2f}x |"
        )
        lines.append(f"| minimum | | | | | {sm['min_ratio']:.2f}x | |")
        lines.append("")
    if "churn" in result:
        ch = result["churn"]
        lines += [
            f"churn: no purchase in the {result['churn_horizon_days']} days after each cutoff; "
            "AUC / PR-AUC / Brier; gain = served AUC - BG/NBD AUC [95% bootstrap interval]",
            "",
            "| cutoff | customers | churn rate | served | BG/NBD | recency | AUC gain |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in ch["per_cutoff"]:
            cells = [_binary(r["models"][n]) for n in ("served", "bgnbd", "recency")]
            lo, hi = r["auc_gain_interval"]
            lines.append(
                f"| {r['cutoff']} | {r['customers']:,} | {r['churn_rate']:.3f} | {cells[0]} | "
                f"{cells[1]} | {cells[2]} | **{r['auc_gain']:+.4f}** [{lo:+.4f}, {hi:+.4f}] |"
            )
        sm = ch["summary"]
        mean = sm["mean"]
        cells = [_binary(mean[n]) for n in ("served", "bgnbd", "recency")]
        lo, hi = sm["mean_auc_gain_interval"]
        lines.append(
            f"| mean | | | {cells[0]} | {cells[1]} | {cells[2]} | "
            f"**{sm['mean_auc_gain']:+.4f}** [{lo:+.4f}, {hi:+.4f}] |"
        )
        lines.append(f"| minimum | | | | | | {sm['min_auc_gain']:+.4f} |")
    return lines

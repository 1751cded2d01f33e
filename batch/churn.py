"""Churn: label, Spark ML GBT pipeline, and the recency and BG/NBD baselines.

Label: a customer (with at least one purchase before the feature cutoff F)
churns when they make no purchase in the H days ``[F, F + H)``. With the run's
cutoff C (nothing at or after C is read) and H = ``settings.churn_horizon_days``:

- train at F1 = C - 2H (labels from [C - 2H, C - H)),
- evaluate at F2 = C - H (labels from [C - H, C)), a later, untouched period,
- the served model is refit at F2 with the same parameters, and scores every
  customer on features as of C.

The pipeline takes the ``features_as_of`` columns plus customer attributes
(nullable: imputed inside the pipeline) and outputs ``probability``, so serving
can apply it to live features with ``PipelineModel.load(path).transform(df)``.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd
from pyspark.ml import Estimator, Pipeline, PipelineModel, Transformer
from pyspark.ml.classification import GBTClassificationModel, GBTClassifier
from pyspark.ml.feature import SQLTransformer, StringIndexer, VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from batch.publish import finish, gate, write_output
from features.attributes import with_customer_attributes
from features.time import cutoff_ts
from runtime.errors import PulseError
from storage import registry

if TYPE_CHECKING:
    from batch.context import RetrainContext

NUMERIC = [
    "recency_days",
    "tenure_days",
    "frequency",
    "n_events",
    "monetary",
    "spend_per_purchase_day",
    "n_events_7d",
    "n_events_30d",
    "n_events_90d",
    "spend_7d",
    "spend_30d",
    "spend_90d",
    "mean_days_between",
    "online_share",
    "days_overdue",
    "activity_trend_30d",
    "at_risk",
    "age",
    "FN",
    "Active",
]
CATEGORICAL = ["club_member_status", "fashion_news_frequency"]


@dataclass(frozen=True)
class ChurnParams:
    """GBT hyper-parameters; ``invert_labels`` is a test hook that sabotages training."""

    max_iter: int = 30
    max_depth: int = 4
    step_size: float = 0.1
    seed: int = 42
    invert_labels: bool = False


def build_pipeline(params: ChurnParams) -> Pipeline:
    """Impute (SQL) -> index categoricals -> assemble -> GBTClassifier."""
    imputed = ", ".join(
        [f"CAST(coalesce(CAST({c} AS DOUBLE), -1.0) AS DOUBLE) AS {c}__x" for c in NUMERIC]
        + [f"coalesce({c}, 'NA') AS {c}__s" for c in CATEGORICAL]
    )
    stages: list[Estimator[Any] | Transformer] = [
        SQLTransformer(statement=f"SELECT *, {imputed} FROM __THIS__")
    ]
    stages += [
        StringIndexer(inputCol=f"{c}__s", outputCol=f"{c}__i", handleInvalid="keep")
        for c in CATEGORICAL
    ]
    inputs = [f"{c}__x" for c in NUMERIC] + [f"{c}__i" for c in CATEGORICAL]
    stages.append(VectorAssembler(inputCols=inputs, outputCol="churn_features"))
    stages.append(
        GBTClassifier(
            featuresCol="churn_features",
            labelCol="label",
            maxIter=params.max_iter,
            maxDepth=params.max_depth,
            stepSize=params.step_size,
            seed=params.seed,
            maxBins=64,
        )
    )
    return Pipeline(stages=stages)


def feature_names() -> list[str]:
    """Names of the assembled inputs, in the order of ``featureImportances``."""
    return NUMERIC + CATEGORICAL


def fit(train: DataFrame, params: ChurnParams) -> PipelineModel:
    """Fit the pipeline (labels inverted when the sabotage hook is on)."""
    if params.invert_labels:
        # Inverted, not random: random labels on a small set can beat the baseline by
        # chance, and which rows get which label depends on the lake's row order.
        train = train.withColumn("label", 1.0 - F.col("label"))
    return build_pipeline(params).fit(train)


def churn_probability(model: PipelineModel, df: DataFrame) -> DataFrame:
    """Apply the pipeline; adds ``churn_probability`` = P(label = 1)."""
    return model.transform(df).withColumn(
        "churn_probability", vector_to_array(F.col("probability"))[1]
    )


def bgnbd_expected(frame: pd.DataFrame, horizon: int, sample: int = 20_000, seed: int = 0):
    """BG/NBD (lifetimes) fitted on a sample, expected purchase days in the next ``horizon``.

    ``frame`` needs frequency, recency_days, tenure_days (features as of a cutoff).
    Returns a numpy array aligned with ``frame`` (vectorised scoring of all rows).
    """
    from lifetimes import BetaGeoFitter
    from lifetimes.utils import ConvergenceError

    # Weeks, not days: the optimiser converges far more reliably on this scale.
    x = (frame["frequency"] - 1).clip(lower=0).to_numpy(float)  # repeat purchase days
    t_age = (frame["tenure_days"].to_numpy(float) + 1.0) / 7
    rec = (frame["tenure_days"] - frame["recency_days"]).to_numpy(float) / 7
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(frame), size=min(sample, len(frame)), replace=False)
    for penalizer in (0.01, 0.1, 1.0):
        try:
            bgf = BetaGeoFitter(penalizer_coef=penalizer)
            bgf.fit(x[idx], rec[idx], t_age[idx])
            break
        except ConvergenceError:
            continue
    else:
        return np.full(len(frame), np.nan)  # reported as an undefined baseline
    with np.errstate(all="ignore"):
        expected = np.asarray(
            bgf.conditional_expected_number_of_purchases_up_to_time(horizon / 7, x, rec, t_age),
            dtype=float,
        )
    # The hypergeometric term overflows for extreme buyers (hundreds of purchase days):
    # for them P(alive) ~ 1, so their own purchase-day rate is the expectation.
    own_rate = np.divide(x, t_age, out=np.zeros_like(x), where=t_age > 0) * (horizon / 7)
    return np.where(np.isfinite(expected), expected, own_rate)


def binary_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """AUC-ROC, PR-AUC (average precision) and Brier score of probabilities ``p``."""
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

    if len(set(y.tolist())) < 2 or np.isnan(p).any():
        return {"auc_roc": float("nan"), "pr_auc": float("nan"), "brier": float("nan")}
    return {
        "auc_roc": float(roc_auc_score(y, p)),
        "pr_auc": float(average_precision_score(y, p)),
        "brier": float(brier_score_loss(y, np.clip(p, 0, 1))),
    }


def roc_points(y: np.ndarray, p: np.ndarray, n: int = 60) -> dict[str, list[float]]:
    """A downsampled ROC curve (for the report)."""
    from sklearn.metrics import roc_curve

    if len(set(y.tolist())) < 2 or np.isnan(p).any():
        return {"fpr": [], "tpr": []}
    fpr, tpr, _ = roc_curve(y, p)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(n, len(fpr))).astype(int))
    return {"fpr": fpr[keep].round(4).tolist(), "tpr": tpr[keep].round(4).tolist()}


def recency_baseline(train: pd.DataFrame, test: pd.DataFrame) -> np.ndarray:
    """Logistic regression on log recency alone, fitted at the training cutoff."""
    from sklearn.linear_model import LogisticRegression

    def x(frame: pd.DataFrame) -> np.ndarray:
        return np.log1p(frame[["recency_days"]].to_numpy(float))

    y = train["label"].to_numpy()
    if len(set(y.tolist())) < 2:
        return np.full(len(test), float(y.mean()) if len(y) else 0.5)
    return LogisticRegression().fit(x(train), y).predict_proba(x(test))[:, 1]


def labels(feats: DataFrame, events: DataFrame, feature_cutoff: date, horizon: int) -> DataFrame:
    """``feats`` (buyers as of ``feature_cutoff``) + ``label``: 1.0 when no purchase in
    ``[F, F + H)``, else 0.0."""
    start, end = cutoff_ts(feature_cutoff), cutoff_ts(feature_cutoff + timedelta(days=horizon))
    buyers = (
        events.where((F.col("event_time") >= start) & (F.col("event_time") < end))
        .where(F.col("quantity") > 0)
        .select("customer_id")
        .distinct()
        .withColumn("_bought", F.lit(1))
    )
    out = feats.join(buyers, "customer_id", "left").withColumn(
        "label", F.when(F.col("_bought").isNull(), 1.0).otherwise(0.0)
    )
    return out.drop("_bought")


def retrain(ctx: RetrainContext) -> dict[str, Any]:
    """Train at C - 2H, evaluate at C - H against recency and BG/NBD, refit at C - H, score at C."""
    settings, opts, events, cutoff = ctx.settings, ctx.opts, ctx.events, ctx.cutoff
    h = settings.churn_horizon_days
    f1, f2 = cutoff - timedelta(days=2 * h), cutoff - timedelta(days=h)
    if f1 <= ctx.first_day:
        raise PulseError(f"churn needs history before {f1} (2 x {h} days before the cutoff)")
    customers = ctx.customers
    with ctx.stage(f"churn: train at {f1}, evaluate at {f2} (H = {h} days)") as st:
        train = with_customer_attributes(
            labels(ctx.features_at(f1), events, f1, h), customers
        ).cache()
        test = with_customer_attributes(
            labels(ctx.features_at(f2), events, f2, h), customers
        ).cache()
        model = fit(train, opts.churn)
        cols = [
            "customer_id",
            "label",
            "churn_probability",
            "recency_days",
            "frequency",
            "tenure_days",
        ]
        scored = cast(pd.DataFrame, churn_probability(model, test).select(*cols).toPandas())
        train_pd = cast(pd.DataFrame, train.select("label", "recency_days").toPandas())
        st.rows = len(train_pd) + len(scored)
        y = scored["label"].to_numpy()
        p_gbt = scored["churn_probability"].to_numpy()
        p_rec = recency_baseline(train_pd, scored)
        p_bg = np.exp(-bgnbd_expected(scored, h))  # P(no purchase), Poisson approx.
        metrics = {
            "gbt": binary_metrics(y, p_gbt),
            "recency": binary_metrics(y, p_rec),
            "bgnbd": binary_metrics(y, p_bg),
        }
        roc = {
            n: roc_points(y, s) for n, s in (("gbt", p_gbt), ("recency", p_rec), ("bgnbd", p_bg))
        }
        gbt_stage = cast(GBTClassificationModel, model.stages[-1])
        importances = dict(
            zip(feature_names(), gbt_stage.featureImportances.toArray().tolist(), strict=False)
        )
    if opts.progress:
        for n, m in metrics.items():
            print(
                f"  {n:<8} AUC {m['auc_roc']:.4f} PR-AUC {m['pr_auc']:.4f} Brier {m['brier']:.4f}",
                file=sys.stderr,
            )
    with ctx.stage(f"churn: refit at {f2}, score every customer as of {cutoff}") as st:
        served = fit(test, opts.churn)
        served.write().overwrite().save(str(registry.model_path(settings, "churn", ctx.version)))
        now = with_customer_attributes(ctx.features_at(cutoff), customers)
        out = churn_probability(served, now).select("customer_id", "as_of", "churn_probability")
        write_output(out, registry.output_path(settings, "churn_scores", ctx.version))
        st.rows = ctx.features_at(cutoff).count()
    meta = {
        "model": "churn",
        "version": ctx.version,
        "params": asdict(opts.churn) | {"horizon_days": h},
        "window": ctx.window | {"train_cutoff": str(f1), "eval_cutoff": str(f2)},
        "rows": {
            "train": int(len(train_pd)),
            "eval": int(len(scored)),
            "eval_churn_rate": float(y.mean()) if len(y) else None,
        },
        "metrics": metrics,
        "roc": roc,
        "feature_importances": dict(sorted(importances.items(), key=lambda kv: -kv[1])),
        "output": str(registry.output_path(settings, "churn_scores", ctx.version)),
        "model_path": str(registry.model_path(settings, "churn", ctx.version)),
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
    return finish(settings, "churn", ctx.version, meta)

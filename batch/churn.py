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

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd
from pyspark.ml import Estimator, Pipeline, PipelineModel, Transformer
from pyspark.ml.classification import GBTClassifier
from pyspark.ml.feature import SQLTransformer, StringIndexer, VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from features.attributes import with_customer_attributes
from features.customer import compute_features
from features.time import as_of_for, cutoff_ts

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


def labelled(
    events: DataFrame, customers: DataFrame | None, feature_cutoff: date, horizon: int
) -> DataFrame:
    """Features as of ``feature_cutoff`` (buyers only) + attributes + ``label`` (1 = churned).

    ``events`` must end before ``feature_cutoff + horizon``; label window [F, F + H).
    """
    feats = compute_features(events, as_of_for(feature_cutoff)).where(
        F.col("last_purchase_date").isNotNull()
    )
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
    return with_customer_attributes(out.drop("_bought"), customers)


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

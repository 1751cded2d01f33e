"""Churn: the label, a regularised stack on BG/NBD (the served model), and its baselines.

Label: a customer (with at least one purchase before the feature cutoff F) churns when
they make no purchase in the H days ``[F, F + H)``. With the run's cutoff C (nothing at or
after C is read) and H = ``settings.churn_horizon_days``:

- train at F1 = C - 2H (labels from [C - 2H, C - H)),
- evaluate at F2 = C - H (labels from [C - H, C)), a later, untouched period,
- the served model is refit at F2 with the same parameters, and scores every customer
  on features as of C.

The served model builds on what BG/NBD knows (``scoring.btyd``): at each cutoff BG/NBD is
fitted on the customers' purchase history before it (no labels needed), and a
regularised classifier is stacked on its P(no purchase in H) and E[purchases in H], plus
the customer's own rhythm (recency / mean gap between purchase days), recency, frequency
and recent spend. The classifier is a logistic regression (``ChurnParams.stack``; "auto"
chooses between it and a depth-2 GBT by AUC on a fifth of the training customers held
out from the training cutoff, never on the evaluation period).

The saved model is a Spark ``PipelineModel`` from the ``features_as_of`` columns to
``probability`` (serving applies it to live features with
``PipelineModel.load(path).transform(df)``). Its first stage is a ``SQLTransformer`` with
the BG/NBD and Gamma-Gamma parameters fitted at the scoring cutoff as literals; it also
outputs ``bg_expected_purchases`` and ``expected_spend`` (expected purchase days and
spend in the next H days), which serving stores as the customer's expected value.

Baselines, on the same evaluation customers: BG/NBD's own P(no purchase in H); recency
alone (logistic on log recency, fitted at F1); and the free GBT on every RFM feature and
the customer attributes (the model served before, which overfits). The gate: the stack's
AUC may be at most ``BGNBD_TOLERANCE`` below BG/NBD's. Metrics are computed in Spark:
only the BG/NBD fitting sample and a few hundred curve points reach the driver.

Value: ``outputs/value/<version>`` (customer_id, as_of, expected_purchases,
expected_spend over H, p_alive), registered with the churn version.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from functools import reduce
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd
from pyspark.ml import Estimator, Pipeline, PipelineModel, Transformer
from pyspark.ml.classification import (
    GBTClassificationModel,
    GBTClassifier,
    LogisticRegression,
    LogisticRegressionModel,
)
from pyspark.ml.feature import SQLTransformer, StringIndexer, VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from batch.evaluate import binary_curves_by, binary_metrics_by
from batch.frames import id_sample, in_fixed_order
from batch.params import ChurnParams
from batch.publish import finish, gate, write_output
from features.attributes import with_customer_attributes
from features.time import cutoff_ts
from runtime.errors import PulseError
from scoring import btyd
from scoring.churn import STACK_FEATURES, STACK_SQL, ChurnScorer, Trees, btyd_statement
from storage import registry
from storage.objects import spark_path

if TYPE_CHECKING:
    from batch.context import RetrainContext

BGNBD_TOLERANCE = 0.005  # AUC the stack may lose to BG/NBD and still be served
VALUE_TABLE = "value"

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


# --- BG/NBD and Gamma-Gamma at a cutoff ---------------------------------------------------


@dataclass(frozen=True)
class Btyd:
    """BG/NBD and Gamma-Gamma fitted on the customers as of one cutoff."""

    bgnbd: btyd.BGNBD
    gamma_gamma: btyd.GammaGamma
    horizon: int

    def statement(self) -> str:
        """The SQLTransformer statement: the feature columns + the BTYD scores."""
        return btyd_statement(self.bgnbd, self.gamma_gamma, self.horizon)

    def stage(self) -> SQLTransformer:
        """The BTYD scores as a pipeline stage (parameters as literals)."""
        return SQLTransformer(statement=self.statement())

    def as_dict(self) -> dict[str, Any]:
        """Plain values for meta.json."""
        return {"bgnbd": self.bgnbd.as_dict(), "gamma_gamma": self.gamma_gamma.as_dict(),
                "unit": "days", "horizon_days": self.horizon}  # fmt: skip


def significant(values: np.ndarray, digits: int) -> np.ndarray:
    """``values`` rounded to ``digits`` significant digits (zeros and NaN kept)."""
    magnitude = np.floor(np.log10(np.abs(values), where=values != 0, out=np.zeros_like(values)))
    scale = 10.0 ** (digits - 1 - magnitude)
    return np.round(values * scale) / scale


def fit_btyd(feats: DataFrame, horizon: int, params: ChurnParams) -> Btyd:
    """Fit BG/NBD and Gamma-Gamma on a bounded sample of ``feats`` (at the driver).

    The sample is chosen by a hash of the customer id and collected in customer order,
    so the fit sees the same rows in the same order whatever the lake's files and
    partitions: its likelihood is a float sum, and summed in another order (a cluster,
    a lake in an object store) the optimiser stopped elsewhere, moving the served
    expected value by 1e-6 (`pulse chaos` case 8). For the same reason the spend is
    rounded to 9 significant digits: Spark sums a customer's spend in the order of the
    lake's rows, so it differs in its 16th digit between two layouts, which moved
    Gamma-Gamma's fit by 3e-7.
    """
    n = feats.count()
    if n == 0:
        raise PulseError("no customers to fit BG/NBD on")
    sample = cast(
        pd.DataFrame,
        id_sample(feats, n, int(1.2 * params.bgnbd_sample), seed=params.seed)
        .select("customer_id", "frequency", "recency_days", "tenure_days", "monetary")
        .orderBy("customer_id")
        .limit(params.bgnbd_sample)
        .toPandas(),
    )
    freq = sample["frequency"].to_numpy(float)
    x, t_x, T = btyd.summary(freq, sample["recency_days"], sample["tenure_days"])
    bg = btyd.fit_bgnbd(x, t_x, T, penalizer=params.penalizer, seed=params.seed)
    zbar = significant(sample["monetary"].to_numpy(float), 9) / np.maximum(freq, 1)
    try:
        gg = btyd.fit_gamma_gamma(freq, zbar, penalizer=params.penalizer, seed=params.seed)
    except ValueError:  # too few repeat buyers: a flat prior around the mean spend
        mean = float(np.nanmean(np.clip(zbar, 0, None))) if len(zbar) else 0.0
        gg = btyd.GammaGamma(p=1.0, q=2.0, gamma=max(mean, 1e-9), customers=0)
    return Btyd(bg, gg, horizon)


# --- The stack ---------------------------------------------------------------------------


def stack_pipeline(kind: str, params: ChurnParams) -> Pipeline:
    """Stack features (SQL) -> assemble -> logistic regression or a shallow GBT.

    The BTYD stage is not part of it: it is fitted per cutoff (``Btyd.stage``) and put in
    front when a model is evaluated or saved (``with_btyd``).
    """
    cols = ", ".join(f"CAST({expr} AS DOUBLE) AS s_{name}" for name, expr in STACK_SQL.items())
    stages: list[Estimator[Any] | Transformer] = [
        SQLTransformer(statement=f"SELECT *, {cols} FROM __THIS__"),
        VectorAssembler(
            inputCols=[f"s_{c}" for c in STACK_FEATURES], outputCol="stack_features",
            handleInvalid="keep",
        ),
    ]  # fmt: skip
    if kind == "logistic":
        stages.append(
            LogisticRegression(
                featuresCol="stack_features", labelCol="label", regParam=params.reg_param,
                elasticNetParam=0.0, standardization=True, maxIter=200,
            )
        )  # fmt: skip
    elif kind == "gbt":
        stages.append(
            GBTClassifier(
                featuresCol="stack_features", labelCol="label", maxDepth=params.stack_depth,
                maxIter=params.stack_iter, stepSize=0.1, seed=params.seed, maxBins=64,
                minInstancesPerNode=20, subsamplingRate=0.8,
            )
        )  # fmt: skip
    else:
        raise ValueError(f"unknown stack {kind!r}")
    return Pipeline(stages=stages)


def with_btyd(fitted: PipelineModel, scores: Btyd) -> PipelineModel:
    """The servable model: the BTYD stage of ``scores`` + the fitted stack."""
    return PipelineModel(stages=[scores.stage(), *fitted.stages])


def export(served: PipelineModel, scores: Btyd, version: str) -> dict[str, Any]:
    """The servable model's numbers for ``scoring.churn.ChurnScorer`` (``scorer.json``)."""
    last = served.stages[-1]
    if isinstance(last, LogisticRegressionModel):
        coefficients = [float(c) for c in last.coefficients.toArray()]
        scorer = ChurnScorer(
            version, scores.horizon, scores.bgnbd, scores.gamma_gamma, "logistic",
            coefficients=coefficients, intercept=float(last.intercept),
        )  # fmt: skip
    else:
        gbt = cast(GBTClassificationModel, last)
        roots = [cast(Any, t)._java_obj.rootNode() for t in gbt.trees]
        scorer = ChurnScorer(
            version, scores.horizon, scores.bgnbd, scores.gamma_gamma, "gbt",
            trees=_trees(roots, gbt.treeWeights),
        )  # fmt: skip
    return scorer.as_dict()


def _trees(roots: list[Any], weights: list[float]) -> Trees:
    """Spark's tree nodes (JVM objects) -> ``Trees`` arrays, nodes numbered depth first."""
    keys = ("feature", "threshold", "left", "right", "value")
    out: dict[str, list[list[Any]]] = {k: [] for k in keys}
    for root in roots:
        nodes = _flatten(root, [])
        for key in keys:
            out[key].append([n[key] for n in nodes])
    return Trees(**out, weights=[float(w) for w in weights])


def _flatten(node: Any, nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Append ``node`` and its subtree to ``nodes`` (a node before its children)."""
    i = len(nodes)
    nodes.append({"feature": -1, "threshold": 0.0, "left": -1, "right": -1,
                  "value": float(node.prediction())})  # fmt: skip
    if node.getClass().getSimpleName() == "InternalNode":
        split = node.split()
        nodes[i] |= {"feature": int(split.featureIndex()), "threshold": float(split.threshold())}
        nodes[i]["left"] = len(nodes)
        _flatten(node.leftChild(), nodes)
        nodes[i]["right"] = len(nodes)
        _flatten(node.rightChild(), nodes)
    return nodes


def fit_stack(train: DataFrame, kind: str, params: ChurnParams) -> PipelineModel:
    """Fit the stack on BTYD-scored, labelled rows (labels inverted by the sabotage hook)."""
    if params.invert_labels:
        # Inverted, not random: random labels on a small set can beat the baseline by
        # chance, and which rows get which label depends on the lake's row order.
        train = train.withColumn("label", 1.0 - F.col("label"))
    return stack_pipeline(kind, params).fit(train)


def choose_stack(train: DataFrame, params: ChurnParams) -> tuple[str, dict[str, float]]:
    """Logistic or GBT by AUC on a fifth of the training customers (by id hash)."""
    if params.stack != "auto":
        return params.stack, {}
    part = F.abs(F.hash("customer_id")) % 5
    fit_rows, val_rows = train.where(part != 0), train.where(part == 0)
    labels_seen = {r[0] for r in val_rows.select("label").distinct().collect()}
    if len(labels_seen) < 2:
        return "logistic", {}
    frame = val_rows
    for kind in ("logistic", "gbt"):
        frame = _apply(fit_stack(fit_rows, kind, params), frame, f"p_{kind}").drop(
            *[f"s_{c}" for c in STACK_FEATURES], "stack_features"
        )
    auc = binary_metrics_by(frame, {k: f"p_{k}" for k in ("logistic", "gbt")})
    scores = {kind: m["auc_roc"] for kind, m in auc.items()}
    # the simpler model unless the trees are clearly better
    kind = "gbt" if scores["gbt"] > scores["logistic"] + 0.002 else "logistic"
    return kind, scores


def stack_weights(model: PipelineModel) -> dict[str, float]:
    """Logistic coefficients (per unit of each input) or GBT importances, by input name."""
    last = model.stages[-1]
    if isinstance(last, LogisticRegressionModel):
        values = last.coefficients.toArray().tolist()
    else:
        values = cast(GBTClassificationModel, last).featureImportances.toArray().tolist()
    return dict(zip(STACK_FEATURES, values, strict=True))


# --- The free GBT baseline (the model served before) -----------------------------------------


def build_pipeline(params: ChurnParams) -> Pipeline:
    """The free-GBT baseline: impute and round (SQL) -> index categoricals -> assemble -> GBT.

    Numbers are rounded to 6 decimals: spend features are float sums that Spark adds up in
    partition-arrival order, so the same customer's spend can differ in its last bit
    between a cluster and local mode, and a tree's candidate splits come from the
    distinct values (chaos case 6 found the baseline's AUC 0.5098 locally, 0.4914 on
    the cluster, with every input equal to 1e-15)."""
    imputed = ", ".join(
        [f"round(coalesce(CAST({c} AS DOUBLE), -1.0), 6) AS {c}__x" for c in NUMERIC]
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


def churn_probability(model: PipelineModel, df: DataFrame) -> DataFrame:
    """Apply a pipeline; adds ``churn_probability`` = P(label = 1)."""
    return model.transform(df).withColumn(
        "churn_probability", vector_to_array(F.col("probability"))[1]
    )


def _apply(model: PipelineModel, df: DataFrame, name: str) -> DataFrame:
    """``df`` + ``name`` = the model's P(label = 1), without its prediction columns (so the
    next model's can be added)."""
    out = model.transform(df).withColumn(name, vector_to_array(F.col("probability"))[1])
    return out.drop("probability", "rawPrediction", "prediction")


def recency_baseline(train: DataFrame) -> PipelineModel:
    """Logistic regression on log recency alone."""
    return Pipeline(
        stages=[
            SQLTransformer(
                statement="SELECT *, ln(1.0 + CAST(coalesce(recency_days, 0) AS DOUBLE)) "
                "AS r_log_recency FROM __THIS__"
            ),
            VectorAssembler(inputCols=["r_log_recency"], outputCol="recency_features"),
            LogisticRegression(featuresCol="recency_features", labelCol="label", maxIter=100),
        ]
    ).fit(train)


# --- Labels and the run ------------------------------------------------------------------


def labels(feats: DataFrame, events: DataFrame, feature_cutoff: date, horizon: int) -> DataFrame:
    """``feats`` (buyers as of ``feature_cutoff``) + ``label``: 1.0 when no purchase in
    ``[F, F + H)``, else 0.0; + ``future_spend``, their spend in that window."""
    start, end = cutoff_ts(feature_cutoff), cutoff_ts(feature_cutoff + timedelta(days=horizon))
    window = events.where((F.col("event_time") >= start) & (F.col("event_time") < end))
    future = window.groupBy("customer_id").agg(
        F.max(F.when(F.col("quantity") > 0, 1)).alias("_bought"),
        F.sum(F.col("quantity") * F.col("unit_price")).alias("future_spend"),
    )
    out = feats.join(future, "customer_id", "left").withColumn(
        "label", F.when(F.col("_bought").isNull(), 1.0).otherwise(0.0)
    )
    return out.drop("_bought").withColumn("future_spend", F.coalesce("future_spend", F.lit(0.0)))


def value_check(scored: DataFrame) -> dict[str, float]:
    """Expected vs actual spend in the evaluation window: totals, and the share of the
    actual spend made by the top decile of customers by expected spend."""
    totals = scored.agg(
        F.sum("expected_spend").alias("expected"), F.sum("future_spend").alias("actual"),
        F.corr("expected_spend", "future_spend").alias("corr"),
        F.percentile_approx("expected_spend", 0.9, 10_000).alias("p90"),
    ).first()  # fmt: skip
    if totals is None or not totals["actual"]:
        return {}
    top = scored.where(F.col("expected_spend") >= totals["p90"]).agg(F.sum("future_spend")).first()
    return {
        "expected_spend_total": float(totals["expected"] or 0.0),
        "actual_spend_total": float(totals["actual"]),
        "pearson_expected_vs_actual": float(totals["corr"] or 0.0),
        "top_decile_share_of_actual": float((top[0] if top else 0.0) or 0.0) / totals["actual"],
    }


def stack_rows(
    ctx: RetrainContext, newest: date, fitted: dict[date, Btyd], horizon: int
) -> tuple[DataFrame, list[date]]:
    """The stack's training rows: the customers as of ``newest`` and of the
    ``train_cutoffs - 1`` cutoffs before it, ``horizon`` days apart, each scored by BG/NBD
    fitted at its own cutoff (``fitted``, filled in as needed) and labelled by the
    ``horizon`` days after it. A cutoff within ``horizon`` days of the first event is
    left out (no history to learn from). Returns the rows, cached, and the cutoffs used."""
    params = ctx.opts.churn
    frames, used = [], []
    for i in range(max(params.train_cutoffs, 1)):
        cut = newest - timedelta(days=i * horizon)
        if i and cut - timedelta(days=horizon) <= ctx.first_day:
            break
        if cut not in fitted:
            fitted[cut] = fit_btyd(ctx.features_at(cut), horizon, params)
        frames.append(
            fitted[cut].stage().transform(labels(ctx.features_at(cut), ctx.events, cut, horizon))
        )
        used.append(cut)
    return reduce(DataFrame.unionByName, frames).cache(), used


def retrain(ctx: RetrainContext) -> dict[str, Any]:
    """Train at C - 2H, evaluate at C - H against BG/NBD, recency and the free GBT; refit at
    C - H, score (churn and value) every customer as of C."""
    settings, opts, events, cutoff = ctx.settings, ctx.opts, ctx.events, ctx.cutoff
    params = opts.churn
    h = settings.churn_horizon_days
    f1, f2 = cutoff - timedelta(days=2 * h), cutoff - timedelta(days=h)
    if f1 <= ctx.first_day:
        raise PulseError(f"churn needs history before {f1} (2 x {h} days before the cutoff)")
    with ctx.stage(f"churn: BG/NBD + Gamma-Gamma at {f1}, {f2}, {cutoff}") as st:
        fitted = {c: fit_btyd(ctx.features_at(c), h, params) for c in (f1, f2, cutoff)}
        st.rows = sum(b.bgnbd.customers for b in fitted.values())
    with ctx.stage(f"churn: stack trained at {f1}, evaluated at {f2} (H = {h} days)") as st:
        train, train_cuts = stack_rows(ctx, f1, fitted, h)
        test = fitted[f2].stage().transform(labels(ctx.features_at(f2), events, f2, h)).cache()
        n_train, n_test = train.count(), test.count()
        st.rows = n_train + n_test
        kind, selection = choose_stack(train, params)
        stack = fit_stack(train, kind, params)
        rec = recency_baseline(train)
        # One partition, in a fixed order: GBT bins its features from a sample that
        # follows the partitions, and sums its tree statistics across partitions in
        # arrival order; on a Spark cluster either made its baseline metrics drift from
        # local mode's (AUC 0.5098 locally; 0.5092, then 0.4911, on the cluster).
        free_rows = in_fixed_order(
            with_customer_attributes(
                id_sample(train, n_train, params.gbt_max_customers), ctx.customers
            ),
            1,
        )
        free = build_pipeline(params).fit(free_rows)
        free_rows.unpersist()
        frame = with_customer_attributes(test, ctx.customers)
        for model, name in ((stack, "p_stack"), (rec, "p_recency"), (free, "p_gbt")):
            frame = _apply(model, frame, name)
        scored = frame.select(
            "customer_id", "label", "future_spend", "expected_spend", "p_stack",
            F.col("bg_p_no_purchase").alias("p_bgnbd"), "p_recency", "p_gbt",
        ).cache()  # fmt: skip
        columns = {"stack": "p_stack", "bgnbd": "p_bgnbd", "recency": "p_recency", "gbt": "p_gbt"}
        metrics = binary_metrics_by(scored, columns)
        plots = binary_curves_by(scored, columns)
        churn_rate = scored.agg(F.avg("label")).first()
        value = value_check(scored)
        weights = stack_weights(stack)
    if opts.progress:
        for n, m in metrics.items():
            print(
                f"  {n:<8} AUC {m['auc_roc']:.4f} PR-AUC {m['pr_auc']:.4f} Brier {m['brier']:.4f}",
                file=sys.stderr,
            )
    with ctx.stage(f"churn: refit at {f2}, score churn and value as of {cutoff}") as st:
        refit, refit_cuts = stack_rows(ctx, f2, fitted, h)
        served = with_btyd(fit_stack(refit, kind, params), fitted[cutoff])
        refit.unpersist()
        served.write().overwrite().save(
            spark_path(registry.model_path(settings, "churn", ctx.version))
        )
        scorer = export(served, fitted[cutoff], ctx.version)
        registry.write_scorer(settings, "churn", ctx.version, scorer)
        now = churn_probability(served, ctx.features_at(cutoff)).select(
            "customer_id", "as_of", "churn_probability",
            F.col("bg_expected_purchases").alias("expected_purchases"), "expected_spend",
            F.col("bg_p_alive").alias("p_alive"),
        ).cache()  # fmt: skip
        write_output(now.select("customer_id", "as_of", "churn_probability"), settings,
                     "churn_scores", ctx.version)  # fmt: skip
        write_output(
            now.select("customer_id", "as_of", "expected_purchases", "expected_spend", "p_alive"),
            settings, VALUE_TABLE, ctx.version,
        )  # fmt: skip
        at_risk = now.agg(
            F.count(F.lit(1)).alias("customers"),
            F.sum("expected_spend").alias("expected_spend"),
            F.sum(F.col("churn_probability") * F.col("expected_spend")).alias("value_at_risk"),
        ).first()
        scored_now = int(at_risk["customers"]) if at_risk else 0
        st.rows = scored_now
        now.unpersist()
    bg_auc = metrics["bgnbd"]["auc_roc"]
    meta = {
        "model": "churn",
        "version": ctx.version,
        "params": asdict(params) | {"horizon_days": h, "stack": kind},
        "window": ctx.window
        | {
            "train_cutoff": str(f1),
            "eval_cutoff": str(f2),
            "train_cutoffs": [str(c) for c in train_cuts],
            "refit_cutoffs": [str(c) for c in refit_cuts],
        },
        "rows": {
            "train": int(n_train),
            "eval": int(n_test),
            "eval_churn_rate": float(churn_rate[0]) if churn_rate and n_test else None,
        },
        "metrics": metrics,
        "roc": {n: p["roc"] for n, p in plots.items()},
        "reliability": {n: p["reliability"] for n, p in plots.items()},
        "stack": {
            "kind": kind,
            "selection_auc": selection,
            "features": STACK_FEATURES,
            "weights": weights,
        },
        "btyd": {str(c): b.as_dict() for c, b in sorted(fitted.items())},
        "value": {
            "horizon_days": h,
            "customers": scored_now,
            "expected_spend_total": float(at_risk["expected_spend"] or 0.0) if at_risk else 0.0,
            "value_at_risk_total": float(at_risk["value_at_risk"] or 0.0) if at_risk else 0.0,
            "eval": value,
            "output": str(registry.output_path(settings, VALUE_TABLE, ctx.version)),
        },
        "output": str(registry.output_path(settings, "churn_scores", ctx.version)),
        "model_path": str(registry.model_path(settings, "churn", ctx.version)),
        "gate": gate(
            settings,
            "churn",
            "auc_roc",
            metrics["stack"]["auc_roc"],
            None if math.isnan(bg_auc) else bg_auc - BGNBD_TOLERANCE,
            opts.regression_tolerance,
        )
        | {"baseline_is": f"bgnbd AUC - {BGNBD_TOLERANCE}"},
    }
    for frame in (train, test, scored):
        frame.unpersist()
    return finish(settings, "churn", ctx.version, meta)

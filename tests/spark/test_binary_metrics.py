"""Churn's one-pass binary metrics agree with Spark's BinaryClassificationEvaluator and
with a hand-computed case."""

from __future__ import annotations

import math
import random

import pytest
from pyspark.ml.evaluation import BinaryClassificationEvaluator

from batch.evaluate import binary_curves_by, binary_metrics_by


def test_hand_case(spark) -> None:  # type: ignore[no-untyped-def]
    # scores 0.9 (pos), 0.8 (neg), 0.8 (pos), 0.2 (neg)
    # ROC: of the 2 x 2 (pos, neg) pairs, 0.9 > 0.8 and 0.9 > 0.2 and 0.8 > 0.2 win,
    # 0.8 = 0.8 ties (half): AUC = 3.5 / 4.
    # PR points (recall, precision): (0, 1), (0.5, 1) at 0.9, (1, 2/3) at 0.8, (1, 1/2):
    # area = 0.5 * 1 + 0.5 * (1 + 2/3) / 2 + 0 = 0.9167.
    # Brier: (0.1^2 + 0.8^2 + 0.2^2 + 0.2^2) / 4 = 0.1825.
    df = spark.createDataFrame(
        [(1.0, 0.9), (0.0, 0.8), (1.0, 0.8), (0.0, 0.2)], "label double, p double"
    )
    m = binary_metrics_by(df, {"m": "p"})["m"]
    assert m["auc_roc"] == pytest.approx(3.5 / 4)
    assert m["pr_auc"] == pytest.approx(0.5 + 0.5 * (1 + 2 / 3) / 2)
    assert m["brier"] == pytest.approx(0.1825)
    c = binary_curves_by(df, {"m": "p"}, bins=2)["m"]
    assert c["roc"] == {"fpr": [0.0, 0.0, 0.5, 1.0], "tpr": [0.0, 0.5, 1.0, 1.0]}
    # bins [0, 0.5): 0.2 (neg); [0.5, 1]: 0.9, 0.8, 0.8 (2 pos)
    assert c["reliability"] == {
        "predicted": [0.2, round((0.9 + 0.8 + 0.8) / 3, 4)],
        "observed": [0.0, round(2 / 3, 4)],
        "customers": [1, 3],
    }


def test_several_models_match_spark_evaluator(spark) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(11)
    rows = []
    for _ in range(3000):
        y = float(rng.random() < 0.3)
        good = min(1.0, max(0.0, 0.5 * y + rng.random() * 0.6))  # informative
        coarse = round(good, 1)  # many ties
        noise = rng.random()  # uninformative
        rows.append((y, good, coarse, noise))
    df = spark.createDataFrame(rows, "label double, good double, coarse double, noise double")
    cols = {"good": "good", "coarse": "coarse", "noise": "noise"}
    got = binary_metrics_by(df, cols)
    for name, col in cols.items():
        for metric, key in (("areaUnderROC", "auc_roc"), ("areaUnderPR", "pr_auc")):
            want = BinaryClassificationEvaluator(
                rawPredictionCol=col, labelCol="label", metricName=metric, numBins=0
            ).evaluate(df)
            assert got[name][key] == pytest.approx(want, abs=1e-12), (name, metric)
        brier = sum((r[list(cols).index(name) + 1] - r[0]) ** 2 for r in rows) / len(rows)
        assert got[name]["brier"] == pytest.approx(brier)
    assert got["good"]["auc_roc"] > 0.85 and abs(got["noise"]["auc_roc"] - 0.5) < 0.05
    curves = binary_curves_by(df, cols)
    assert sum(curves["good"]["reliability"]["customers"]) == 3000
    assert curves["good"]["roc"]["fpr"][0] == 0.0 and curves["good"]["roc"]["tpr"][-1] == 1.0


def test_undefined_scores_and_one_class(spark) -> None:  # type: ignore[no-untyped-def]
    df = spark.createDataFrame(
        [(1.0, 0.9, None), (0.0, 0.1, 0.5), (1.0, 0.7, float("nan"))],
        "label double, ok double, bad double",
    )
    got = binary_metrics_by(df, {"ok": "ok", "bad": "bad"})
    assert got["ok"]["auc_roc"] == 1.0
    assert all(math.isnan(v) for v in got["bad"].values())
    one_class = df.where("label = 1.0")
    assert all(math.isnan(v) for v in binary_metrics_by(one_class, {"ok": "ok"})["ok"].values())

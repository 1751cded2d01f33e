"""Ranking metrics at K (``schemas.tables.N_RECOMMENDATIONS``, 12): in plain Python, so a
reader can check them by hand, and the same definitions in Spark (``spark_ranking_metrics``,
what a retrain uses: it collects nothing per customer).

``recs``: customer -> ordered list of recommended article ids (best first).
``actual``: customer -> set of articles the customer bought in the hold-out.
Every metric averages over the customers in ``actual`` (those who bought in the
hold-out); a customer with no list scores 0.

- MAP@K as Kaggle defines it: AP@K = sum_k P(k) * rel(k) / min(K, |actual|).
- precision@K = hits / K; recall@K = hits / |actual|.
- NDCG@K with binary relevance: DCG / ideal DCG of min(K, |actual|) hits.
- coverage = distinct recommended articles / catalogue size.

Binary classifiers (churn): ``binary_metrics_by`` gives AUC-ROC, PR-AUC and the Brier
score of several models' probabilities in one pass, equal to Spark's
``BinaryClassificationEvaluator``; ``binary_curves_by`` their ROC and reliability points.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from schemas.tables import N_RECOMMENDATIONS


def average_precision(rec: Sequence[str], actual: set[str], k: int = N_RECOMMENDATIONS) -> float:
    """Kaggle AP@k of one ranked list against the set of relevant items."""
    if not actual:
        return 0.0
    hits, score, seen = 0, 0.0, set()
    for i, item in enumerate(rec[:k], start=1):
        if item in actual and item not in seen:
            hits += 1
            score += hits / i
        seen.add(item)
    return score / min(k, len(actual))


def ndcg(rec: Sequence[str], actual: set[str], k: int = N_RECOMMENDATIONS) -> float:
    """Binary-relevance NDCG@k."""
    if not actual:
        return 0.0
    dcg = sum(1 / math.log2(i + 1) for i, item in enumerate(rec[:k], 1) if item in actual)
    ideal = sum(1 / math.log2(i + 1) for i in range(1, min(k, len(actual)) + 1))
    return dcg / ideal


def ranking_metrics(
    recs: Mapping[str, Sequence[str]],
    actual: Mapping[str, set[str]],
    catalogue: Iterable[str] | int,
    k: int = N_RECOMMENDATIONS,
) -> dict[str, float]:
    """MAP@k, precision@k, recall@k, NDCG@k over ``actual``'s customers, and coverage."""
    n = len(actual)
    ap = prec = rec_ = nd = 0.0
    recommended: set[str] = set()
    for customer, bought in actual.items():
        ranked = list(recs.get(customer, ()))[:k]
        recommended.update(ranked)
        hits = len(set(ranked) & bought)
        ap += average_precision(ranked, bought, k)
        prec += hits / k
        rec_ += hits / len(bought)
        nd += ndcg(ranked, bought, k)
    size = catalogue if isinstance(catalogue, int) else len(set(catalogue))
    return {
        f"map@{k}": ap / n if n else 0.0,
        f"precision@{k}": prec / n if n else 0.0,
        f"recall@{k}": rec_ / n if n else 0.0,
        f"ndcg@{k}": nd / n if n else 0.0,
        "coverage": len(recommended) / size if size else 0.0,
        "customers": n,
    }


def spark_ranking_metrics(
    recs: DataFrame, actual: DataFrame, catalogue: int, k: int = N_RECOMMENDATIONS
) -> dict[str, float]:
    """``ranking_metrics`` computed in Spark: nothing per customer reaches the driver.

    ``recs``: customer_id, rank, article_id (best first, rank 1..). ``actual``: the
    distinct (customer_id, article_id) purchases of the hold-out. Same definitions as
    ``ranking_metrics``; a repeated article counts at its best rank only.
    """
    one = recs.withColumn("strategy", F.lit("-"))
    return spark_ranking_metrics_by(one, actual, catalogue, ["-"], k)["-"]


def spark_ranking_metrics_by(
    recs: DataFrame,
    actual: DataFrame,
    catalogue: int,
    strategies: list[str],
    k: int = N_RECOMMENDATIONS,
) -> dict[str, dict[str, float]]:
    """``spark_ranking_metrics`` of several strategies at once (two Spark jobs in all).

    ``recs`` has a ``strategy`` column besides customer_id, rank, article_id; a strategy
    of ``strategies`` with no rows scores 0 for every buyer. When ``actual`` has a
    ``spend`` column (what the customer spent on the article in the hold-out),
    ``revenue@K`` is the spend on the articles that were in the customers' lists.
    """
    key = ["strategy", "customer_id"]
    by_rank = Window.partitionBy(*key).orderBy("rank", "article_id")
    top = (
        recs.join(actual.select("customer_id").distinct(), "customer_id", "left_semi")
        .groupBy(*key, "article_id")
        .agg(F.min("rank").alias("rank"))
        .withColumn("pos", F.row_number().over(by_rank))
        .where(F.col("pos") <= k)
    )
    hit = F.col("_hit") == 1
    scored = (
        top.join(actual.withColumn("_hit", F.lit(1)), ["customer_id", "article_id"], "left")
        .fillna(0, ["_hit"])
        .withColumn("_cum", F.sum("_hit").over(by_rank.rowsBetween(Window.unboundedPreceding, 0)))
    )
    spend = "spend" in actual.columns
    per_customer = scored.groupBy(*key).agg(
        F.sum(F.when(hit, F.col("_cum") / F.col("pos"))).alias("ap_sum"),
        F.sum("_hit").alias("hits"),
        F.sum(F.when(hit, 1 / F.log2(F.col("pos") + 1))).alias("dcg"),
        (F.sum(F.when(hit, F.col("spend"))) if spend else F.lit(0.0)).alias("revenue"),
    )
    # ideal DCG of m hits, m = 1..k, as an array literal indexed by min(k, |actual|)
    ideal = F.array(
        *[F.lit(sum(1 / math.log2(i + 1) for i in range(1, m + 1))) for m in range(1, k + 1)]
    )
    names = actual.sparkSession.createDataFrame([(s,) for s in strategies], "strategy string")
    n_actual = (
        actual.groupBy("customer_id")
        .agg(F.count(F.lit(1)).alias("n_actual"))
        .crossJoin(F.broadcast(names))
    )
    m = F.least(F.col("n_actual"), F.lit(k))
    rows = (
        n_actual.join(per_customer, key, "left")
        .fillna(0.0, ["ap_sum", "hits", "dcg", "revenue"])
        .groupBy("strategy")
        .agg(
            F.avg(F.col("ap_sum") / m).alias("map"),
            F.avg(F.col("hits") / k).alias("precision"),
            F.avg(F.col("hits") / F.col("n_actual")).alias("recall"),
            F.avg(F.col("dcg") / F.element_at(ideal, m.cast("int"))).alias("ndcg"),
            F.count(F.lit(1)).alias("customers"),
            F.sum("revenue").alias("revenue"),
        )
        .collect()
    )
    recommended = {
        r["strategy"]: r["n"]
        for r in top.groupBy("strategy").agg(F.countDistinct("article_id").alias("n")).collect()
    }
    out: dict[str, dict[str, float]] = {}
    metric_names = ("map", "precision", "recall", "ndcg")
    by_name = {r["strategy"]: r for r in rows}
    for name in strategies:
        coverage = recommended.get(name, 0) / catalogue if catalogue else 0.0
        row = by_name.get(name)
        if row is None or not row["customers"]:
            out[name] = {f"{n}@{k}": 0.0 for n in metric_names} | {"coverage": coverage}
            out[name]["customers"] = 0
            if spend:
                out[name][f"revenue@{k}"] = 0.0
            continue
        out[name] = {f"{n}@{k}": float(row[n]) for n in metric_names} | {
            "coverage": coverage,
            "customers": int(row["customers"]),
        }
        if spend:
            out[name][f"revenue@{k}"] = float(row["revenue"])
    return out


# --- Binary classifiers (churn) ----------------------------------------------------------


def _long_scores(df: DataFrame, scores: Mapping[str, str], label: str) -> DataFrame:
    """One row per (input row, model): y, model, p (every model's score side by side)."""
    pairs = [F.struct(F.lit(n).alias("model"), F.col(c).cast("double").alias("p"))
             for n, c in scores.items()]  # fmt: skip
    return df.select(F.col(label).cast("double").alias("y"), F.explode(F.array(*pairs)).alias("m"))


def binary_metrics_by(
    df: DataFrame, scores: Mapping[str, str], label: str = "label"
) -> dict[str, dict[str, float]]:
    """AUC-ROC, PR-AUC and Brier score of several probability columns, in two Spark jobs.

    ``scores``: model name -> column of P(label = 1); ``label`` is 0/1. The AUCs are
    exact and equal to ``BinaryClassificationEvaluator(numBins=0)``'s: the trapezoids of
    the ROC and PR curves over the distinct scores (best first), the PR curve starting at
    (recall 0, the first precision). For a group of g rows with score s, pos of them
    positive, after tp and fp rows with scores >= s:

    - ROC area += (g - pos) * (tp - pos / 2) / (P * N),
    - PR area += pos * (precision + previous precision) / 2 / P.

    A model with a null or NaN score, or a label with one class, gets NaN for all three.
    """
    defined = {n: F.col(c).isNotNull() & ~F.isnan(F.col(c)) for n, c in scores.items()}
    check = df.agg(
        F.countDistinct(label).alias("classes"),
        *[F.count(F.when(~ok, True)).alias(n) for n, ok in defined.items()],
    ).first()
    nan = {"auc_roc": float("nan"), "pr_auc": float("nan"), "brier": float("nan")}
    if check is None or check["classes"] < 2:
        return {n: dict(nan) for n in scores}
    valid = {n: c for n, c in scores.items() if not check[n]}
    out = {n: dict(nan) for n in scores if n not in valid}
    if not valid:
        return out
    groups = (
        _long_scores(df, valid, label)
        .groupBy(F.col("m.model").alias("model"), F.col("m.p").alias("p"))
        .agg(
            F.sum("y").alias("pos"),
            F.count(F.lit(1)).alias("g"),
            F.sum((F.col("m.p") - F.col("y")) ** 2).alias("sq"),
        )
    )
    best_first = Window.partitionBy("model").orderBy(F.desc("p"))
    running = best_first.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    curve = (
        groups.withColumn("tp", F.sum("pos").over(running))
        .withColumn("fp", F.sum(F.col("g") - F.col("pos")).over(running))
        .withColumn("precision", F.col("tp") / (F.col("tp") + F.col("fp")))
        .withColumn("prev", F.coalesce(F.lag("precision").over(best_first), F.col("precision")))
    )
    rows = curve.groupBy("model").agg(
        F.sum("pos").alias("P"),
        F.sum(F.col("g") - F.col("pos")).alias("N"),
        F.sum((F.col("g") - F.col("pos")) * (F.col("tp") - F.col("pos") / 2)).alias("roc"),
        F.sum(F.col("pos") * (F.col("precision") + F.col("prev")) / 2).alias("pr"),
        F.sum("sq").alias("sq"),
    )
    for r in rows.collect():
        pos, neg = float(r["P"]), float(r["N"])
        out[r["model"]] = {
            "auc_roc": float(r["roc"]) / (pos * neg),
            "pr_auc": float(r["pr"]) / pos,
            "brier": float(r["sq"]) / (pos + neg),
        }
    return {n: out[n] for n in scores}


def binary_curves_by(
    df: DataFrame, scores: Mapping[str, str], label: str = "label", bins: int = 10,
    points: int = 80,
) -> dict[str, dict[str, dict[str, list[float]]]]:  # fmt: skip
    """Per model: ROC points (scores rounded to 3 decimals, at most ``points`` of them) and
    reliability points (``bins`` equal-width bins of predicted probability: mean
    prediction, observed rate, rows). One Spark job; at most ~1,000 rows per model reach
    the driver. Rows with a null or NaN score are left out."""
    p = F.col("m.p")
    hist = (
        _long_scores(df, scores, label)
        .where(p.isNotNull() & ~F.isnan(p))
        .groupBy(
            F.col("m.model").alias("model"),
            F.round(p, 3).alias("s"),
            F.least(F.floor(p * bins), F.lit(bins - 1)).alias("bin"),
        )
        .agg(F.sum("y").alias("pos"), F.count(F.lit(1)).alias("n"), F.sum(p).alias("sum_p"))
        .collect()
    )
    out: dict[str, dict[str, dict[str, list[float]]]] = {}
    for name in scores:
        mine = [r for r in hist if r["model"] == name]
        roc: dict[float, list[float]] = {}
        rel: dict[int, list[float]] = {}
        for r in mine:
            acc = roc.setdefault(float(r["s"]), [0.0, 0.0])
            acc[0] += float(r["pos"])
            acc[1] += float(r["n"]) - float(r["pos"])
            b = rel.setdefault(int(r["bin"]), [0.0, 0.0, 0.0])
            b[0] += float(r["sum_p"])
            b[1] += float(r["pos"])
            b[2] += float(r["n"])
        ordered = [roc[s] for s in sorted(roc, reverse=True)]
        tp = np.concatenate(([0.0], np.cumsum([a[0] for a in ordered])))
        fp = np.concatenate(([0.0], np.cumsum([a[1] for a in ordered])))
        tpr, fpr = tp / max(tp[-1], 1.0), fp / max(fp[-1], 1.0)
        keep = np.unique(np.linspace(0, len(fpr) - 1, min(points, len(fpr))).astype(int))
        out[name] = {
            "roc": {"fpr": fpr[keep].round(4).tolist(), "tpr": tpr[keep].round(4).tolist()},
            "reliability": {
                "predicted": [round(rel[b][0] / rel[b][2], 4) for b in sorted(rel)],
                "observed": [round(rel[b][1] / rel[b][2], 4) for b in sorted(rel)],
                "customers": [int(rel[b][2]) for b in sorted(rel)],
            },
        }
    return out

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
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

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
    of ``strategies`` with no rows scores 0 for every buyer.
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
    per_customer = scored.groupBy(*key).agg(
        F.sum(F.when(hit, F.col("_cum") / F.col("pos"))).alias("ap_sum"),
        F.sum("_hit").alias("hits"),
        F.sum(F.when(hit, 1 / F.log2(F.col("pos") + 1))).alias("dcg"),
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
        .fillna(0.0, ["ap_sum", "hits", "dcg"])
        .groupBy("strategy")
        .agg(
            F.avg(F.col("ap_sum") / m).alias("map"),
            F.avg(F.col("hits") / k).alias("precision"),
            F.avg(F.col("hits") / F.col("n_actual")).alias("recall"),
            F.avg(F.col("dcg") / F.element_at(ideal, m.cast("int"))).alias("ndcg"),
            F.count(F.lit(1)).alias("customers"),
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
            continue
        out[name] = {f"{n}@{k}": float(row[n]) for n in metric_names} | {
            "coverage": coverage,
            "customers": int(row["customers"]),
        }
    return out

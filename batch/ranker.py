"""Recommendations by a learned ranker over candidates (the H&M Kaggle recipe, in Spark).

At a cutoff t (only purchases strictly before t are read) each customer in scope gets
candidates from three sources:

- **repurchase**: their own articles, the ``repurchase_k`` with the highest
  recency-weighted count;
- **popularity**: the ``popular_k`` most bought articles of the ``popular_days`` before t;
- **co-purchase**: articles bought in the same baskets (customer and day, in the
  ``copurchase_days`` before t) as the customer's ``seed_articles`` most recent ones.

Each candidate (customer, article) gets features (``FEATURES``):

- customer x article: times bought, on how many days, recency-weighted count, days since
  last bought, that divided by the customer's own gap between buying it (the strongest
  signal in the issue's prototype), the article's share of the customer's purchases,
  co-purchase strength, which sources proposed it;
- customer: purchase days, days since the last, mean gap between purchase days, purchases;
- article: purchases in the last 7 and 30 days, the trend between them, buyers in 30
  days, mean price, popularity rank.

Label: the customer bought the article in ``[t, t + H)``, H the hold-out length. A
Spark ML GBT classifier (pointwise: P(bought), which orders each customer's candidates)
is trained on the candidates at ``train_cutoffs`` cutoffs before the scoring one, H
apart, of the customers who bought in the window after each (the others have no
positive to learn from). Lists are each customer's candidates by that probability
(``ranked``), filled from popularity to K by ``batch.recommend.assemble``.

Pointwise GBT rather than LambdaMART: it is Spark ML's own (no extra native library on
the executors), and it orders each customer's candidates by P(bought), which is what
MAP rewards when most customers buy one or two of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, timedelta
from functools import reduce

from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import GBTClassifier
from pyspark.ml.feature import VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from features.time import cutoff_ts
from runtime.errors import PulseError
from schemas.tables import N_RECOMMENDATIONS


@dataclass(frozen=True)
class RankerParams:
    """Candidates per customer and the GBT's size (sized for 2 cores)."""

    repurchase_k: int = 24
    popular_k: int = 24
    popular_days: int = 7
    copurchase_k: int = 12
    copurchase_days: int = 90
    seed_articles: int = 5
    neighbours: int = 12
    max_basket: int = 40  # larger baskets add pairs quadratically and little signal
    half_life_days: float = 30.0
    train_cutoffs: int = 3
    max_iter: int = 40
    max_depth: int = 5
    seed: int = 42


FEATURES = [
    "ca_n", "ca_days", "ca_weight", "ca_days_since", "ca_since_over_gap", "ca_share",
    "co_score", "from_repurchase", "from_popular", "from_copurchase",
    "c_days", "c_recency", "c_mean_gap", "c_n",
    "a_n7", "a_n30", "a_trend", "a_buyers30", "a_price", "a_pop_rank",
]  # fmt: skip

MISSING = -1.0  # what a feature is when it does not apply (never bought, no gap yet)


def _purchases(events: DataFrame, cutoff: date) -> DataFrame:
    """Purchases strictly before ``cutoff``, with their UTC day."""
    return events.where(
        (F.col("quantity") > 0) & (F.col("event_time") < F.lit(cutoff_ts(cutoff)))
    ).select("customer_id", "article_id", "unit_price", F.to_date("event_time").alias("day"))


def _days_before(cutoff: date, col: str = "day") -> Column:
    return F.datediff(F.lit(cutoff), F.col(col))


def candidates(
    events: DataFrame, cutoff: date, customers: DataFrame, params: RankerParams
) -> DataFrame:
    """Candidates with their features for ``customers`` (a customer_id frame) at ``cutoff``.

    Columns: customer_id, article_id, ``FEATURES`` (doubles, ``MISSING`` where they do
    not apply). A customer with no purchase gets the popular articles only.
    """
    bought = _purchases(events, cutoff)
    own = bought.join(customers, "customer_id", "left_semi")
    decay = F.exp(-math.log(2) * _days_before(cutoff) / F.lit(params.half_life_days))
    pairs = own.groupBy("customer_id", "article_id").agg(
        F.count(F.lit(1)).cast("double").alias("ca_n"),
        F.countDistinct("day").cast("double").alias("ca_days"),
        F.sum(decay).alias("ca_weight"),
        F.min("day").alias("_first"),
        F.max("day").alias("_last"),
    )
    cust = own.groupBy("customer_id").agg(
        F.countDistinct("day").cast("double").alias("c_days"),
        F.max("day").alias("_cl"),
        F.min("day").alias("_cf"),
        F.count(F.lit(1)).cast("double").alias("c_n"),
    )
    cust = cust.select(
        "customer_id", "c_days", "c_n",
        F.datediff(F.lit(cutoff), F.col("_cl")).cast("double").alias("c_recency"),
        F.when(F.col("c_days") > 1, F.datediff("_cl", "_cf") / (F.col("c_days") - 1))
        .alias("c_mean_gap"),
    )  # fmt: skip
    recent = bought.where(_days_before(cutoff) <= 30)
    arts = recent.groupBy("article_id").agg(
        F.count(F.when(_days_before(cutoff) <= params.popular_days, True))
        .cast("double")
        .alias("a_n7"),
        F.count(F.lit(1)).cast("double").alias("a_n30"),
        F.countDistinct("customer_id").cast("double").alias("a_buyers30"),
        F.avg("unit_price").alias("a_price"),
    )
    by_pop = Window.orderBy(F.desc("a_n7"), F.desc("a_n30"), "article_id")
    arts = arts.withColumn("a_pop_rank", F.row_number().over(by_pop).cast("double"))
    # not cached: nothing would unpersist it (one per cutoff), and it is per article, small
    arts = arts.withColumn(
        "a_trend", (F.col("a_n7") / params.popular_days) / (F.col("a_n30") / 30.0 + 1e-9)
    )
    popular = arts.where(F.col("a_pop_rank") <= params.popular_k).select("article_id")

    by_weight = Window.partitionBy("customer_id").orderBy(F.desc("ca_weight"), "article_id")
    rep = (
        pairs.withColumn("_r", F.row_number().over(by_weight))
        .where(F.col("_r") <= params.repurchase_k)
        .select("customer_id", "article_id", F.lit(1.0).alias("from_repurchase"))
    )
    co = _copurchase(bought, own, pairs, cutoff, params)
    keys = (
        rep.select("customer_id", "article_id")
        .unionByName(customers.select("customer_id").crossJoin(F.broadcast(popular)))
        .unionByName(co.select("customer_id", "article_id"))
        .distinct()
    )
    out = (
        keys.join(rep, ["customer_id", "article_id"], "left")
        .join(F.broadcast(popular.withColumn("from_popular", F.lit(1.0))), "article_id", "left")
        .join(co, ["customer_id", "article_id"], "left")
        .join(pairs, ["customer_id", "article_id"], "left")
        .join(cust, "customer_id", "left")
        .join(arts, "article_id", "left")
    )
    since = F.datediff(F.lit(cutoff), F.col("_last")).cast("double")
    gap = F.when(F.col("ca_days") > 1, F.datediff("_last", "_first") / (F.col("ca_days") - 1))
    derived = {
        "ca_days_since": since,
        "ca_since_over_gap": since / gap,
        "ca_share": F.col("ca_n") / F.col("c_n"),
        "from_copurchase": F.when(F.col("co_score").isNotNull(), 1.0),
    }
    cols = [
        F.coalesce(derived.get(f, F.col(f)).cast("double"), F.lit(MISSING)).alias(f)
        for f in FEATURES
    ]
    return out.select("customer_id", "article_id", *cols)


def _copurchase(
    bought: DataFrame, own: DataFrame, pairs: DataFrame, cutoff: date, params: RankerParams
) -> DataFrame:
    """customer_id, article_id, co_score: articles bought in the same baskets as the
    customer's most recent ones (sum of pair counts over those seeds), the top
    ``copurchase_k`` per customer, excluding what they bought already."""
    baskets = (
        bought.where(_days_before(cutoff) <= params.copurchase_days)
        .select("customer_id", "day", "article_id")
        .distinct()
    )
    size = Window.partitionBy("customer_id", "day")
    baskets = baskets.withColumn("_size", F.count(F.lit(1)).over(size)).where(
        (F.col("_size") > 1) & (F.col("_size") <= params.max_basket)
    )
    a, b = baskets.alias("a"), baskets.alias("b")
    together = (
        a.join(b, ["customer_id", "day"])
        .where(F.col("a.article_id") != F.col("b.article_id"))
        .groupBy(F.col("a.article_id").alias("seed"), F.col("b.article_id").alias("article_id"))
        .agg(F.count(F.lit(1)).alias("n"))
    )
    top = Window.partitionBy("seed").orderBy(F.desc("n"), "article_id")
    neighbours = together.withColumn("_r", F.row_number().over(top)).where(
        F.col("_r") <= params.neighbours
    )
    latest = Window.partitionBy("customer_id").orderBy(F.desc("_last"), F.desc("ca_weight"))
    seeds = (
        pairs.withColumn("_r", F.row_number().over(latest))
        .where(F.col("_r") <= params.seed_articles)
        .select("customer_id", F.col("article_id").alias("seed"))
    )
    scored = (
        seeds.join(neighbours.drop("_r"), "seed")
        .groupBy("customer_id", "article_id")
        .agg(F.sum("n").cast("double").alias("co_score"))
        .join(own.select("customer_id", "article_id"), ["customer_id", "article_id"], "left_anti")
    )
    best = Window.partitionBy("customer_id").orderBy(F.desc("co_score"), "article_id")
    return (
        scored.withColumn("_r", F.row_number().over(best))
        .where(F.col("_r") <= params.copurchase_k)
        .drop("_r")
    )


def labelled(events: DataFrame, cutoff: date, horizon: int, params: RankerParams) -> DataFrame:
    """Candidates at ``cutoff`` of the customers who bought in ``[cutoff, cutoff + H)``,
    with ``label`` 1.0 for the articles they bought there."""
    end = cutoff + timedelta(days=horizon)
    window = events.where(
        (F.col("quantity") > 0)
        & (F.col("event_time") >= F.lit(cutoff_ts(cutoff)))
        & (F.col("event_time") < F.lit(cutoff_ts(end)))
    )
    truth = window.select("customer_id", "article_id").distinct().withColumn("label", F.lit(1.0))
    buyers = truth.select("customer_id").distinct()
    return (
        candidates(events, cutoff, buyers, params)
        .join(truth, ["customer_id", "article_id"], "left")
        .fillna(0.0, ["label"])
    )


def fit(events: DataFrame, cutoff: date, horizon: int, params: RankerParams) -> PipelineModel:
    """The GBT trained on the labelled candidates at cutoff - i * H, i = 1..train_cutoffs
    (every label window ends by ``cutoff``)."""
    cutoffs = [cutoff - timedelta(days=i * horizon) for i in range(1, params.train_cutoffs + 1)]
    rows = reduce(DataFrame.unionByName, [labelled(events, c, horizon, params) for c in cutoffs])
    rows = rows.cache()
    stats = rows.agg(F.count(F.lit(1)).alias("n"), F.sum("label").alias("pos")).first()
    if stats is None or not stats["pos"] or stats["pos"] == stats["n"]:
        rows.unpersist()
        raise PulseError(f"ranker: no purchases to learn from in the {horizon} days windows "
                         f"before {cutoff}")  # fmt: skip
    model = Pipeline(
        stages=[
            VectorAssembler(inputCols=FEATURES, outputCol="rank_features"),
            GBTClassifier(
                featuresCol="rank_features", labelCol="label", maxIter=params.max_iter,
                maxDepth=params.max_depth, stepSize=0.1, subsamplingRate=0.8,
                seed=params.seed, maxBins=64,
            ),
        ]
    ).fit(rows)  # fmt: skip
    rows.unpersist()
    return model


def ranked(
    model: PipelineModel,
    events: DataFrame,
    cutoff: date,
    customers: DataFrame,
    params: RankerParams,
    k: int = N_RECOMMENDATIONS,
) -> DataFrame:
    """Each customer's top ``k`` candidates by the model's P(bought), as a candidate source
    for ``batch.recommend.assemble`` (which fills short lists from popularity): customer_id,
    article_id, score, pos."""
    scored = model.transform(candidates(events, cutoff, customers, params)).select(
        "customer_id", "article_id",
        vector_to_array(F.col("probability"))[1].alias("score"), "a_pop_rank",
    )  # fmt: skip
    order = Window.partitionBy("customer_id").orderBy(F.desc("score"), "a_pop_rank", "article_id")
    return (
        scored.withColumn("pos", F.row_number().over(order))
        .where(F.col("pos") <= k)
        .select("customer_id", "article_id", "score", "pos")
    )

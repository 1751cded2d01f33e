"""Recommendation candidates and the strategies that merge them into the served top-K
lists (K = ``schemas.tables.N_RECOMMENDATIONS``, 12).

Time semantics: every function takes events already restricted to the training
window (``event_time < cutoff``); recency weights are ages in days relative to
``cutoff``. Purchases are events with quantity > 0.

Candidates (each filled up to K from popularity, so cold-start customers get a list):

- ``popularity``: the most bought articles in the last ``popular_days`` days;
- ``repurchase``: the customer's own articles, most recency-weighted first; articles bought
  on the same days tie, and go to the one most bought by everyone in the ``TIE_DAYS``
  before ``cutoff`` (then the smaller id);
- ``als``: implicit-feedback ALS (``batch.als``; confidence = recency-decayed purchase counts);
- ``blend``: repurchase first, then ALS, then popularity;
- ``ranker``: a GBT over repurchase, popularity and co-purchase candidates, trained on
  the windows before the cutoff (``batch.ranker``), then popularity.
"""

from __future__ import annotations

from datetime import date

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from batch.als import als_candidates, als_interactions, fit_als, interactions
from batch.params import RecParams
from schemas.tables import N_RECOMMENDATIONS

# Repurchase ties are common: a wholesaler who orders the same 30 articles twice has 30
# equal weights. They go to the article everyone bought most in these days before the
# cutoff. By article id, the repurchase baseline scored 0.1557 MAP@12 on Online Retail's
# six backtest cutoffs (2011-06..11); by purchases in 30 days 0.1718 (7: 0.1686, 90:
# 0.1705, all time: 0.1691). The baseline is what a retailer does today, so it gets the
# strongest of these, and every customer the ranker does not score gets it too.
TIE_DAYS = 30

STRATEGIES = {
    "popularity": ("popularity",),
    "repurchase": ("repurchase", "popularity"),
    "als": ("als", "popularity"),
    "blend": ("repurchase", "als", "popularity"),
    # the customers the ranker does not score (``RankerParams.score_customers``) get the
    # repurchase baseline; the ranker's own lists are K long whenever K articles sold in
    # the popular window (it proposes ``popular_k`` of them), so repurchase reaches no one else
    "ranker": ("ranker", "repurchase", "popularity"),
}


def purchases_per_article(events: DataFrame, cutoff: date, days: int | None) -> DataFrame:
    """Purchases per article in the ``days`` days before ``cutoff`` (None: all of
    ``events``): article_id, n."""
    bought = events.where(F.col("quantity") > 0)
    if days is not None:
        bought = bought.where(F.to_date("event_time") >= F.date_sub(F.lit(cutoff), days))
    return bought.groupBy("article_id").agg(F.count(F.lit(1)).alias("n"))


def popular(events: DataFrame, cutoff: date, days: int, k: int = N_RECOMMENDATIONS) -> DataFrame:
    """The top ``k`` articles by purchases in the ``days`` days before ``cutoff``.

    Falls back to all-time counts when that window is empty. Columns: article_id, score, pos.
    """
    for window in (days, None):
        counts = purchases_per_article(events, cutoff, window)
        top = counts.orderBy(F.desc("n"), "article_id").limit(k).collect()
        if top:
            break
    rows = [(r["article_id"], float(r["n"]), i) for i, r in enumerate(top, 1)]
    schema = "article_id string, score double, pos int"
    return events.sparkSession.createDataFrame(rows, schema)


def repurchase_candidates(
    inter: DataFrame, recent: DataFrame, k: int = N_RECOMMENDATIONS
) -> DataFrame:
    """Each customer's own articles ranked by recency-weighted count, ties by ``recent``'s
    purchases (``purchases_per_article`` over ``TIE_DAYS``), then by article id:
    customer_id, article_id, score, pos.

    The weights are compared rounded to 9 decimals: a float sum's last bits depend on the
    order its terms arrive in, and two articles bought on the same days must tie.
    """
    ranked = inter.join(F.broadcast(recent.select("article_id", F.col("n").alias("_recent"))),
                        "article_id", "left")  # fmt: skip
    w = Window.partitionBy("customer_id").orderBy(
        F.desc(F.round("weight", 9)), F.desc_nulls_last("_recent"), "article_id"
    )
    return (
        ranked.withColumn("pos", F.row_number().over(w))
        .where(F.col("pos") <= k)
        .select("customer_id", "article_id", F.col("weight").alias("score"), "pos")
    )


def assemble(
    customers: DataFrame,
    sources: dict[str, DataFrame],
    order: tuple[str, ...],
    k: int = N_RECOMMENDATIONS,
) -> DataFrame:
    """Merge candidate sources in priority ``order`` into one top-``k`` list per customer.

    ``sources["popularity"]`` has no customer column (same list for everyone); the
    others are per customer. An article appears once, from its highest-priority
    source. Output: customer_id, rank (1..k), article_id, score, source.
    """
    parts = []
    for prio, name in enumerate(order):
        cand = sources[name]
        if name == "popularity":
            cand = customers.crossJoin(F.broadcast(cand))
        else:
            cand = cand.join(customers, "customer_id")
        parts.append(
            cand.select(
                "customer_id",
                "article_id",
                "score",
                "pos",
                F.lit(prio).alias("prio"),
                F.lit(name).alias("source"),
            )
        )
    union = parts[0]
    for p in parts[1:]:
        union = union.unionByName(p)
    best = Window.partitionBy("customer_id", "article_id").orderBy("prio", "pos")
    rank = Window.partitionBy("customer_id").orderBy("prio", "pos", "article_id")
    return (
        union.withColumn("_first", F.row_number().over(best))
        .where(F.col("_first") == 1)
        .withColumn("rank", F.row_number().over(rank))
        .where(F.col("rank") <= k)
        .select("customer_id", F.col("rank").cast("int"), "article_id", "score", "source")
    )


def candidate_sources(
    events: DataFrame,
    cutoff: date,
    params: RecParams,
    customers: DataFrame,
    als_for: str | None = "all",
    only_customers: bool = False,
) -> dict[str, DataFrame]:
    """Every candidate source over ``events`` (all before ``cutoff``), for ``customers``.

    ``only_customers``: compute the repurchase lists of ``customers`` only (worth it when
    they are few, as in a hold-out week; for everyone it would be an extra join).

    ``als_for``: None fits no ALS; "all" scores every customer ALS knows; "uncovered"
    only those whose repurchase list is shorter than K: in an order that puts
    repurchase before ALS (``blend``), ALS never reaches the others' lists, so
    scoring them (every customer against every article) is wasted.
    """
    own = events.join(customers, "customer_id", "left_semi") if only_customers else events
    # Partitioned by customer before the (customer, article) sums, which that satisfies,
    # so the per-customer ranking needs no second shuffle: for everyone at H&M scale
    # (32M purchases, 28.6M pairs: the sums barely aggregate) 56-66 s against 76-79 s.
    own = own.repartition("customer_id")
    sources = {
        "popularity": popular(events, cutoff, params.popular_days),
        "repurchase": repurchase_candidates(
            interactions(own, cutoff, params.half_life_days),
            purchases_per_article(events, cutoff, TIE_DAYS),
        ).cache(),
    }
    if als_for is not None:
        fit = fit_als(als_interactions(events, cutoff, params), params)
        who = customers
        if als_for == "uncovered":
            full = sources["repurchase"].where(F.col("pos") == N_RECOMMENDATIONS)
            who = customers.join(full, "customer_id", "left_anti")
        sources["als"] = als_candidates(fit, who).cache()
    return sources


def als_scope(order: tuple[str, ...]) -> str | None:
    """Which customers ALS must score for a strategy's ``order`` (see ``candidate_sources``)."""
    if "als" not in order:
        return None
    if "repurchase" in order and order.index("repurchase") < order.index("als"):
        return "uncovered"
    return "all"

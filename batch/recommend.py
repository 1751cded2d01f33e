"""Recommendations: candidate generators, Spark MLlib ALS, and the served top-K lists
(K = ``schemas.tables.N_RECOMMENDATIONS``, 12).

Time semantics: every function takes events already restricted to the training
window (``event_time < cutoff``); recency weights are ages in days relative to
``cutoff``. Purchases are events with quantity > 0.

Candidates (each filled up to K from popularity, so cold-start customers get a list):

- ``popularity``: the most bought articles in the last ``popular_days`` days;
- ``repurchase``: the customer's own articles, most recency-weighted first;
- ``als``: implicit-feedback ALS (confidence = recency-decayed purchase counts);
- ``blend``: repurchase first, then ALS, then popularity;
- ``ranker``: a GBT over repurchase, popularity and co-purchase candidates, trained on
  the windows before the cutoff (``batch.ranker``), then popularity.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from functools import reduce
from typing import TYPE_CHECKING, Any

import numpy as np
from pyspark.ml.recommendation import ALS, ALSModel
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from batch import ranker as ranking
from batch.evaluate import spark_ranking_metrics_by
from batch.frames import index_ids
from batch.params import RecParams
from batch.publish import finish, gate, write_output
from features.time import cutoff_ts
from runtime.errors import PulseError
from schemas.tables import N_RECOMMENDATIONS
from storage import registry

if TYPE_CHECKING:
    from batch.context import RetrainContext

# The recommendations' quality gate: Kaggle MAP@K (a key of ``ranking_metrics``).
MAP_AT_K = f"map@{N_RECOMMENDATIONS}"

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


def interactions(events: DataFrame, cutoff: date, half_life_days: float) -> DataFrame:
    """Purchases -> (customer_id, article_id, n, weight), weight = sum of 2^(-age/half_life)."""
    age = F.datediff(F.lit(cutoff), F.to_date("event_time"))
    decay = F.exp(-math.log(2) * age / F.lit(half_life_days))
    return (
        events.where(F.col("quantity") > 0)
        .groupBy("customer_id", "article_id")
        .agg(F.count(F.lit(1)).alias("n"), F.sum(decay).alias("weight"))
    )


def popular(events: DataFrame, cutoff: date, days: int, k: int = N_RECOMMENDATIONS) -> DataFrame:
    """The top ``k`` articles by purchases in the ``days`` days before ``cutoff``.

    Falls back to all-time counts when that window is empty. Columns: article_id, score, pos.
    """
    bought = events.where(F.col("quantity") > 0)
    recent = bought.where(F.to_date("event_time") >= F.date_sub(F.lit(cutoff), days))
    for frame in (recent, bought):
        top = (
            frame.groupBy("article_id")
            .agg(F.count(F.lit(1)).cast("double").alias("score"))
            .orderBy(F.desc("score"), "article_id")
            .limit(k)
            .collect()
        )
        if top:
            break
    rows = [(r["article_id"], float(r["score"]), i) for i, r in enumerate(top, 1)]
    schema = "article_id string, score double, pos int"
    return events.sparkSession.createDataFrame(rows, schema)


def als_interactions(events: DataFrame, cutoff: date, params: RecParams) -> DataFrame:
    """The interactions ALS is trained on (see ``RecParams.als_days``, ``als_min_buyers``)."""
    since = cutoff_ts(cutoff - timedelta(days=params.als_days))
    inter = interactions(
        events.where(F.col("event_time") >= F.lit(since)), cutoff, params.half_life_days
    )
    supported = (
        inter.groupBy("article_id")
        .agg(F.count(F.lit(1)).alias("buyers"))
        .where(F.col("buyers") >= params.als_min_buyers)
    )
    return inter.join(supported, "article_id", "left_semi")


def repurchase_candidates(inter: DataFrame, k: int = N_RECOMMENDATIONS) -> DataFrame:
    """Each customer's own articles ranked by recency-weighted count: customer_id, article_id,
    score, pos."""
    w = Window.partitionBy("customer_id").orderBy(F.desc("weight"), "article_id")
    return (
        inter.withColumn("pos", F.row_number().over(w))
        .where(F.col("pos") <= k)
        .select("customer_id", "article_id", F.col("weight").alias("score"), "pos")
    )


@dataclass
class AlsFit:
    """A fitted ALS model with its id mappings."""

    model: ALSModel
    users: DataFrame  # customer_id, user
    items: DataFrame  # article_id, item


def als_matrix(inter: DataFrame) -> tuple[DataFrame, DataFrame, DataFrame]:
    """Interactions -> (ratings user,item,weight; user index; item index), all materialised.

    ``inter`` is computed once and cached while the three are built from it (each would
    otherwise aggregate the events again: 40-60 s apiece at H&M scale). The three are
    local checkpoints, so ALS's many jobs do not carry their lineage.
    """
    inter = inter.select("customer_id", "article_id", "weight").cache()
    users = index_ids(inter, "customer_id", "user").localCheckpoint()
    items = index_ids(inter, "article_id", "item").localCheckpoint()
    ratings = (
        inter.join(users, "customer_id").join(items, "article_id").select("user", "item", "weight")
    ).localCheckpoint()
    inter.unpersist()
    return ratings, users, items


def als_estimator(params: RecParams) -> ALS:
    """Spark's implicit-feedback ALS with ``params``, on als_matrix's user, item, weight."""
    return ALS(
        rank=params.rank,
        maxIter=params.max_iter,
        regParam=params.reg_param,
        alpha=params.alpha,
        implicitPrefs=True,
        userCol="user",
        itemCol="item",
        ratingCol="weight",
        coldStartStrategy="drop",
        checkpointInterval=5,
        numUserBlocks=params.als_blocks,
        numItemBlocks=params.als_blocks,
        seed=params.seed,
    )


def fit_als(inter: DataFrame, params: RecParams) -> AlsFit:
    """Fit implicit ALS on the interactions.

    Uses the session's checkpoint directory, which whoever owns the session sets
    (``batch.retrain.retrain`` does for a run): ALS checkpoints its factors every 5
    iterations, without which the lineage grows until the JVM dies with
    ``StackOverflowError`` after ~15 iterations. PulseError when the session has none.
    """
    if inter.sparkSession.sparkContext.getCheckpointDir() is None:
        raise PulseError(
            "ALS needs a Spark checkpoint directory: call "
            "spark.sparkContext.setCheckpointDir(...) where the session is built"
        )
    ratings, users, items = als_matrix(inter)
    als = als_estimator(params)
    return AlsFit(model=als.fit(ratings), users=users, items=items)


#: Customers scored per matrix product in ``als_candidates`` (x articles x 4 bytes of scores).
SCORE_CHUNK = 512
#: Column blocks ``top_k`` takes the maxima of (at most; never fewer than k).
TOP_K_BLOCKS = 256


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """The column indices of each row's ``k`` highest ``scores`` (rows x k), highest first,
    ties to the smaller index; ``k`` <= the column count.

    Exact, and about 6x faster than ``np.argpartition`` on rows as wide as a catalogue
    (0.12 s against 0.75 s for 512 x 60,000): the k-th highest of the maxima of
    ``TOP_K_BLOCKS`` column blocks is a floor that at least k scores of the row reach
    (each of those k blocks holds one), so only the few scores at or above it are sorted.
    """
    n_rows, n = scores.shape
    blocks = min(n, max(TOP_K_BLOCKS, k))
    starts = (np.arange(blocks) * n) // blocks  # distinct, as blocks <= n
    maxima = np.maximum.reduceat(scores, starts, axis=1)
    floor = np.partition(maxima, blocks - k, axis=1)[:, blocks - k]
    rows, cols = np.nonzero(scores >= floor[:, None])
    order = np.lexsort((cols, -scores[rows, cols], rows))  # by row, score desc, index
    rows, cols = rows[order], cols[order]
    first = np.searchsorted(rows, np.arange(n_rows))
    return cols[np.arange(len(rows)) - first[rows] < k].reshape(n_rows, k)


def als_candidates(fit: AlsFit, customers: DataFrame, k: int = N_RECOMMENDATIONS) -> DataFrame:
    """ALS top ``k`` for the given customers (those ALS knows): customer_id, article_id, score,
    pos.

    Not ``recommendForUserSubset``: it offers every (customer, article) score to a bounded
    priority queue one at a time, which at 84k hold-out customers x 77k articles took most
    of the hold-out stage. Here each task multiplies a block of customer factors by the
    article factors (NumPy, float32 like Spark's ALS) and keeps the top ``k`` per row with
    ``top_k``, whose scores are then recomputed per row in float64; ties go to the
    smaller article index, so the lists do not depend on how the customers are partitioned.
    The article factors (one row per article) are collected once and shipped to the tasks.
    """
    import pyarrow as pa

    items = (
        fit.model.itemFactors.join(fit.items, F.col("id") == F.col("item"))
        .select("article_id", "features")
        .orderBy("article_id")
        .toArrow()
    )
    articles = items.column("article_id").combine_chunks()
    rank = fit.model.rank
    factors = (
        np.asarray(items.column("features").combine_chunks().flatten(), np.float32)
        .reshape(-1, rank)
        .T.copy()
    )
    top = min(k, len(articles))
    schema = "customer_id string, article_id string, score double, pos int"

    def score(batches):  # type: ignore[no-untyped-def]  # noqa: ANN001, ANN202
        for batch in batches:
            if not batch.num_rows or not top:
                continue
            users = np.asarray(batch.column(1).flatten(), np.float32).reshape(-1, rank)
            for lo in range(0, len(users), SCORE_CHUNK):
                best = top_k(users[lo : lo + SCORE_CHUNK] @ factors, top)
                # the kept scores again, row by row in float64: a matrix product's last
                # bits may depend on how many rows it had, i.e. on the partitioning
                chosen = factors.T[best].astype(np.float64)
                block = users[lo : lo + SCORE_CHUNK, None, :].astype(np.float64)
                picked = (chosen * block).sum(axis=2)
                # by score descending, then article index ascending
                order = np.lexsort((best, -picked), axis=1)
                best = np.take_along_axis(best, order, axis=1)
                picked = np.take_along_axis(picked, order, axis=1)
                n = len(best)
                who = batch.column(0).slice(lo, n).take(pa.array(np.repeat(np.arange(n), top)))
                yield pa.RecordBatch.from_pydict(
                    {
                        "customer_id": who,
                        "article_id": articles.take(pa.array(best.ravel())),
                        "score": pa.array(picked.ravel().astype(np.float64)),
                        "pos": pa.array(np.tile(np.arange(1, top + 1, dtype=np.int32), n)),
                    }
                )

    known = customers.join(fit.users, "customer_id").join(
        fit.model.userFactors, F.col("user") == F.col("id")
    )
    return known.select("customer_id", "features").mapInArrow(score, schema)


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
    sources = {
        "popularity": popular(events, cutoff, params.popular_days),
        "repurchase": repurchase_candidates(
            interactions(own, cutoff, params.half_life_days)
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


def _everyone(ctx: RetrainContext) -> DataFrame:
    """Every customer the lists are for (cached): those in the run's events and in the
    customer table."""
    everyone = ctx.events.select("customer_id").distinct()
    if ctx.customers is not None:
        everyone = everyone.unionByName(ctx.customers.select("customer_id")).distinct()
    return everyone.cache()


def _ranker_rows(
    ctx: RetrainContext, cuts: list[date], held: DataFrame, everyone: DataFrame
) -> tuple[DataFrame, int]:
    """The ranker's candidates for the whole run, built in one pass (``ranking.candidates``)
    and labelled by what each customer bought in the ``holdout_days`` after each cutoff:

    - at each training cutoff (``cuts`` but the last): at most ``train_customers`` of the
      buyers in the window after it (``ranking.sample``);
    - at train_end (``cuts[-1]``): the hold-out buyers ``held`` whom the ranker would
      score there (``ranking.most_recent``), as it does everyone at the cutoff; trained
      on by the refit only, never for the hold-out's own figures;
    - at the run's cutoff: the customers the served lists are ranked for (label 0.0,
      their window is still to come).

    One pass, not one for evaluation and one for the refit: the two share the costs that
    do not grow with the customers (co-purchase pairs, article statistics; 169 s of the
    refit's 464 s at H&M scale). Cached and counted (eager): returns the rows and their
    count.
    """
    params, horizon, train_end = ctx.opts.rec.ranker, ctx.opts.holdout_days, cuts[-1]
    assert params is not None
    truth = ranking.bought_after(ctx.events, cuts, horizon).cache()
    buyers = truth.select("cutoff", "customer_id").distinct()
    scope = ranking.sample(buyers.where(F.col("cutoff") < F.lit(train_end)), params.train_customers)
    scored = ranking.most_recent(ctx.daily, train_end, params.score_customers)
    if scored is not None:
        held = held.join(scored, "customer_id", "left_semi")
    served = ranking.most_recent(ctx.daily, ctx.cutoff, params.score_customers)
    scope = scope.unionByName(ranking.at(held, train_end)).unionByName(
        ranking.at(everyone if served is None else served, ctx.cutoff)
    )
    cands = ranking.candidates(ctx.events, scope.localCheckpoint(), params)
    rows = ranking.with_labels(cands, truth).cache()
    n = rows.count()
    truth.unpersist()
    return rows, n


def retrain(ctx: RetrainContext) -> dict[str, Any]:
    """Evaluate every strategy on the hold-out, serve the best one refit on all data."""
    p, opts, settings, events, cutoff = ctx.opts.rec, ctx.opts, ctx.settings, ctx.events, ctx.cutoff
    train_end = cutoff - timedelta(days=opts.holdout_days)
    train = events.where(F.col("event_time") < F.lit(cutoff_ts(train_end)))
    holdout = events.where(F.col("event_time") >= F.lit(cutoff_ts(train_end))).where(
        F.col("quantity") > 0
    )
    with ctx.stage("recommendations: hold-out buyers") as st:
        # spend per purchased article: the revenue the lists would have caught (revenue@12)
        actual = (
            holdout.groupBy("customer_id", "article_id")
            .agg(F.sum(F.col("quantity") * F.col("unit_price")).alias("spend"))
            .cache()
        )
        hold_customers = actual.select("customer_id").distinct().cache()
        st.rows = hold_customers.count()
        if not st.rows:
            raise PulseError(f"no purchases in the hold-out [{train_end}, {cutoff})")
        catalogue = train.select("article_id").distinct().count()
    with ctx.stage("recommendations: hold-out candidates (ALS fit on the training window)"):
        sources = candidate_sources(train, train_end, p, hold_customers, only_customers=True)
        sources["als"].count()
    left_out: dict[str, str] = {}
    everyone = _everyone(ctx)
    rows = None  # the ranker's candidates at its training cutoffs, train_end and the cutoff
    if p.ranker is not None:
        n, horizon = p.ranker.train_cutoffs, opts.holdout_days
        cuts = ranking.training_cutoffs(train_end, horizon, n) + [train_end]
        with ctx.stage(f"recommendations: ranker candidates at {n + 2} cutoffs") as st:
            rows, st.rows = _ranker_rows(ctx, cuts, hold_customers, everyone)
        with ctx.stage(f"recommendations: ranker trained on {n} windows before {train_end}"):
            try:
                model = ranking.fit(rows.where(F.col("cutoff") < F.lit(train_end)), p.ranker)
            except PulseError as exc:  # too little history: the other strategies still run
                left_out["ranker"] = f"{exc} ({n} windows of {horizon} days before {train_end})"
                print(f"  ranker left out: {left_out['ranker']}", file=sys.stderr)
            else:
                held = rows.where(F.col("cutoff") == F.lit(train_end))
                sources["ranker"] = ranking.ranked(model, held).cache()
    strategies = {n: o for n, o in STRATEGIES.items() if all(s in sources for s in o)}
    with ctx.stage(f"recommendations: {MAP_AT_K} of {len(strategies)} strategies") as st:
        st.rows = hold_customers.count()
        every = [
            assemble(hold_customers, sources, order).withColumn("strategy", F.lit(name))
            for name, order in strategies.items()
        ]
        recs = reduce(DataFrame.unionByName, every)
        metrics = spark_ranking_metrics_by(recs, actual, catalogue, list(strategies))
        if opts.progress:
            for name, m in metrics.items():
                print(f"  {name:<11} {MAP_AT_K} {m[MAP_AT_K]:.4f}", file=sys.stderr)
        actual.unpersist()
        hold_customers.unpersist()
    best = max(metrics, key=lambda n: metrics[n][MAP_AT_K])
    with ctx.stage(f"recommendations: refit '{best}', top {N_RECOMMENDATIONS} for everyone") as st:
        order = STRATEGIES[best]
        full = candidate_sources(events, cutoff, p, everyone, als_scope(order))
        if "ranker" in order and p.ranker is not None and rows is not None:
            # refit on the newest windows: the hold-out's labels included, the oldest dropped
            newest = rows.where(F.col("cutoff").between(cuts[1], train_end))
            model = ranking.fit(ranking.sample(newest, p.ranker.train_customers), p.ranker)
            full["ranker"] = ranking.ranked(model, rows.where(F.col("cutoff") == F.lit(cutoff)))
        write_output(assemble(everyone, full, order), settings, "recommendations", ctx.version)
        st.rows = everyone.count()
        everyone.unpersist()
        if rows is not None:
            rows.unpersist()
        # Serving gives this list to customers first seen after this run (not in the table).
        popular_ids = [r.article_id for r in full["popularity"].orderBy("pos").collect()]
        version_dir = registry.model_dir(settings, "recommendations", ctx.version)
        popular_path = version_dir / registry.POPULAR_FILE
        popular_path.parent.mkdir(parents=True, exist_ok=True)
        popular_path.write_text(
            json.dumps(
                {"articles": popular_ids, "popular_days": p.popular_days, "cutoff": str(cutoff)},
                indent=2,
            )
        )
    value = metrics[best][MAP_AT_K]
    meta = {
        "model": "recommendations",
        "version": ctx.version,
        "params": asdict(p) | {"holdout_days": opts.holdout_days},
        "window": ctx.window
        | {"train_end": str(train_end), "holdout": [str(train_end), str(cutoff)]},
        "metrics": metrics,
        "left_out": left_out,
        "served": best,
        "output": str(registry.output_path(settings, "recommendations", ctx.version)),
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
    return finish(settings, "recommendations", ctx.version, meta)

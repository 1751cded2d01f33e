"""ALS top-k lists from ``batch.als.als_candidates`` equal Spark's own
``ALSModel.recommendForUserSubset`` on the same fitted model."""

from __future__ import annotations

import random

import numpy as np
import pytest
from pyspark.sql import functions as F

from batch.als import als_candidates, als_matrix, fit_als, top_k
from batch.params import RecParams


def test_als_top_k_equals_spark_recommend_for_user_subset(spark, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(3)
    rows = {
        (f"c{c:03d}", f"a{rng.randrange(60):02d}"): 1.0 + rng.random()
        for c in range(200)
        for _ in range(6)
    }
    inter = spark.createDataFrame(
        [(c, a, 1, w) for (c, a), w in rows.items()],
        "customer_id string, article_id string, n int, weight double",
    )
    spark.sparkContext.setCheckpointDir(str(tmp_path / "ckpt"))
    fit = fit_als(inter, RecParams(rank=8, max_iter=5))
    who = spark.createDataFrame(
        [(f"c{c:03d}",) for c in range(0, 200, 3)] + [("nobody",)], "customer_id string"
    )

    ours = {
        (r.customer_id, r.pos): (r.article_id, r.score)
        for r in als_candidates(fit, who, k=10).collect()
    }
    subset = who.join(fit.users, "customer_id").select("user")
    theirs = (
        fit.model.recommendForUserSubset(subset, 10)
        .select("user", F.posexplode("recommendations").alias("p", "r"))
        .join(fit.users, "user")
        .join(fit.items, F.col("r.item") == F.col("item"))
        .select(
            "customer_id",
            (F.col("p") + 1).alias("pos"),
            "article_id",
            F.col("r.rating").alias("score"),
        )
        .collect()
    )
    assert len(ours) == len(theirs) == 67 * 10  # every known customer, not "nobody"
    for r in theirs:
        article, score = ours[(r.customer_id, r.pos)]
        assert score == pytest.approx(r.score, rel=1e-5, abs=1e-6)
        assert article == r.article_id  # float factors: no exact ties to order differently
    by_customer = {}
    for (c, pos), (_, score) in ours.items():
        by_customer.setdefault(c, []).append((pos, score))
    for lists in by_customer.values():
        scores = [s for _, s in sorted(lists)]
        assert scores == sorted(scores, reverse=True)
    # the same lists, to the last bit, however the customers are partitioned
    again = als_candidates(fit, who.repartition(5), k=10).collect()
    assert sorted(again) == sorted(als_candidates(fit, who.coalesce(1), k=10).collect())
    assert {(r.customer_id, r.pos): (r.article_id, r.score) for r in again} == ours


@pytest.mark.parametrize(("width", "k"), [(60_000, 12), (300, 12), (12, 12), (5, 1), (700, 300)])
def test_top_k_is_the_full_sort_s_head(width: int, k: int) -> None:
    rng = np.random.default_rng(width)
    scores = rng.standard_normal((64, width)).astype(np.float32)
    scores[1] = 0.0  # one row all tied: the smallest indices win
    scores[2, ::7] = 5.0  # ties at the top, across blocks
    scores[3] = np.round(scores[3])  # many ties at the floor
    full = np.lexsort((np.broadcast_to(np.arange(width), scores.shape), -scores), axis=1)
    got = top_k(scores, k)
    assert got.shape == (64, k)
    assert (got == full[:, :k]).all()
    assert list(got[1]) == list(range(k))


def test_als_matrix_numbers_ids_densely_in_id_order(spark) -> None:  # type: ignore[no-untyped-def]
    inter = spark.createDataFrame(
        [("c2", "a9", 1, 1.0), ("c10", "a1", 2, 2.0), ("c2", "a1", 1, 0.5), ("c1", "a5", 1, 3.0)],
        "customer_id string, article_id string, n int, weight double",
    )
    ratings, users, items = als_matrix(inter)
    # string order: c1 < c10 < c2
    assert sorted(users.collect()) == [("c1", 0), ("c10", 1), ("c2", 2)]
    assert sorted(items.collect()) == [("a1", 0), ("a5", 1), ("a9", 2)]
    assert sorted(ratings.collect()) == [(0, 1, 3.0), (1, 0, 2.0), (2, 0, 0.5), (2, 2, 1.0)]

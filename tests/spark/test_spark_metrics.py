"""The retrain's ranking metrics in Spark agree with the plain-Python reference."""

from __future__ import annotations

import random

import pytest

from batch.evaluate import ranking_metrics, spark_ranking_metrics

pytestmark = pytest.mark.spark


def _frames(spark, recs: dict[str, list[str]], actual: dict[str, set[str]]):  # type: ignore[no-untyped-def]
    rec_rows = [(c, r, a) for c, items in recs.items() for r, a in enumerate(items, 1)]
    act_rows = [(c, a) for c, items in actual.items() for a in items]
    return (
        spark.createDataFrame(rec_rows, "customer_id string, rank int, article_id string"),
        spark.createDataFrame(act_rows, "customer_id string, article_id string"),
    )


def test_hand_case(spark) -> None:  # type: ignore[no-untyped-def]
    # u1: one relevant article at rank 1 -> AP 1; u2 bought but has no list -> 0;
    # u3 has a list but bought nothing -> not averaged.
    recs = {"u1": ["a", "b"] + [f"z{i}" for i in range(11)], "u3": ["q"]}
    actual = {"u1": {"a"}, "u2": {"b"}}
    m = spark_ranking_metrics(*_frames(spark, recs, actual), catalogue=20)
    assert m["map@12"] == pytest.approx(0.5)
    assert m["precision@12"] == pytest.approx((1 / 12) / 2)
    assert m["recall@12"] == pytest.approx(0.5)
    assert m["ndcg@12"] == pytest.approx(0.5)
    assert m["coverage"] == pytest.approx(12 / 20)  # only u1's first 12 count
    assert m["customers"] == 2


def test_random_lists_match_python(spark) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(3)
    items = [f"i{j}" for j in range(40)]
    recs = {f"c{c}": rng.sample(items, rng.randint(0, 20)) for c in range(300)}
    actual = {f"c{c}": set(rng.sample(items, rng.randint(1, 15))) for c in range(0, 400, 2)}
    want = ranking_metrics(recs, actual, catalogue=len(items))
    got = spark_ranking_metrics(*_frames(spark, recs, actual), catalogue=len(items))
    assert want["map@12"] > 0.05  # the case is not degenerate
    assert got == pytest.approx(want)

"""The retrain's ranking metrics in Spark agree with the plain-Python reference."""

from __future__ import annotations

import random

import pytest
from pyspark.sql import functions as F

from batch.evaluate import ranking_metrics, spark_ranking_metrics, spark_ranking_metrics_by


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


def test_several_strategies_at_once_match_each_alone(spark) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(5)
    items = [f"i{j}" for j in range(30)]
    actual = {f"c{c}": set(rng.sample(items, rng.randint(1, 8))) for c in range(60)}
    lists = {
        # the hits first, then five misses (no article twice: the Python reference would
        # count a repeat twice in its DCG)
        "good": {
            c: sorted(bought) + [i for i in items if i not in bought][:5]
            for c, bought in actual.items()
        },
        "random": {f"c{c}": rng.sample(items, 12) for c in range(80)},
    }
    frames = []
    for name, recs in lists.items():
        rec_df, act_df = _frames(spark, recs, actual)
        frames.append(rec_df.withColumn("strategy", F.lit(name)))
    got = spark_ranking_metrics_by(
        frames[0].unionByName(frames[1]), act_df, len(items), ["good", "random", "none"]
    )
    for name, recs in lists.items():
        assert got[name] == pytest.approx(ranking_metrics(recs, actual, catalogue=len(items)))
    assert got["good"]["map@12"] > got["random"]["map@12"]
    # a strategy without a single list still averages over every buyer, each scoring 0
    assert got["none"]["map@12"] == 0.0 and got["none"]["coverage"] == 0.0
    assert got["none"]["customers"] == len(actual) == 60


def test_revenue_in_lists_by_hand(spark) -> None:  # type: ignore[no-untyped-def]
    """u1 spent 10 on a (in both lists, once at rank 13: beyond K) and 5 on b (only in
    "own"'s 12); u2 spent 7 on c, in no list. "own" caught 10 + 5, "pop" only 10."""
    pad = [f"z{i}" for i in range(10)]
    rows = [("own", "u1", ["a", "b", *pad]), ("pop", "u1", ["a", *pad, "x", "b"])]
    recs = spark.createDataFrame(
        [(s, c, r, a) for s, c, items in rows for r, a in enumerate(items, 1)],
        "strategy string, customer_id string, rank int, article_id string",
    )
    actual = spark.createDataFrame(
        [("u1", "a", 10.0), ("u1", "b", 5.0), ("u2", "c", 7.0)],
        "customer_id string, article_id string, spend double",
    )
    got = spark_ranking_metrics_by(recs, actual, 20, ["own", "pop", "none"])
    assert (got["own"]["revenue@12"], got["pop"]["revenue@12"]) == (15.0, 10.0)
    assert got["none"]["revenue@12"] == 0.0
    # without a spend column there is no revenue figure, and the others are unchanged
    plain = spark_ranking_metrics_by(recs, actual.drop("spend"), 20, ["own", "pop"])
    assert "revenue@12" not in plain["own"]
    assert plain["own"]["map@12"] == got["own"]["map@12"]

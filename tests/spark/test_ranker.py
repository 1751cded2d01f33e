"""The learned ranker beats its own candidate sources on a shop where the answer is known.

Every customer has six staple articles, each re-bought on its own fixed rhythm (every
14, 21, 28, 35, 42 or 56 days, at a random phase), and now and then a popular article.
In any week a customer is due for one or two staples. Recency-weighted repurchase puts
all six staples first but in the wrong order (the most often bought first, not the one
that is due); popularity knows nothing of staples. Only the days since a staple was
last bought, divided by the customer's gap between buying it, tells which is due, and
the ranker is given exactly that feature: it must find it.
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta

import pytest
from batch_shop import TableSource, events_table
from pyspark.sql import functions as F

from batch import ranker
from batch.candidates import assemble, candidate_sources
from batch.evaluate import spark_ranking_metrics_by
from batch.ingest import ingest_source
from batch.params import RankerParams, RecParams
from batch.retrain import RetrainOptions, retrain
from features.customer import daily_activity

START = date(2020, 1, 1)
DAYS = 200
HOLDOUT = 7
PERIODS = [14, 21, 28, 35, 42, 56]


def staple_shop(customers: int = 300, seed: int = 5) -> list[tuple]:
    """(customer_id, article_id, event_time, quantity, unit_price, sales_channel_id) rows."""
    rng = random.Random(seed)
    popular = [f"pop{i:02d}" for i in range(40)]
    weights = [1 / (i + 1) for i in range(len(popular))]  # Zipf-like
    rows = []
    for c in range(customers):
        cid = f"c{c:04d}"
        for j, period in enumerate(PERIODS):
            article = f"s{c:04d}-{j}"  # the customer's own staple
            for day in range(rng.randrange(period), DAYS, period):
                rows.append((cid, article, day))
        for day in range(DAYS):
            if rng.random() < 0.08:
                rows.append((cid, rng.choices(popular, weights)[0], day))
    return [
        (cid, art, datetime.combine(START + timedelta(days=d), datetime.min.time(), UTC)
         + timedelta(hours=12), 1, 1.0, 2)
        for cid, art, d in rows
    ]  # fmt: skip


def test_ranker_beats_repurchase_and_popularity_on_staples(spark) -> None:  # type: ignore[no-untyped-def]
    events = spark.createDataFrame(
        staple_shop(),
        "customer_id string, article_id string, event_time timestamp, quantity int, "
        "unit_price double, sales_channel_id int",
    ).cache()
    train_end = START + timedelta(days=DAYS - HOLDOUT)
    train = events.where(
        F.col("event_time") < F.lit(datetime.combine(train_end, datetime.min.time(), UTC))
    )
    actual = (
        events.where(
            F.col("event_time") >= F.lit(datetime.combine(train_end, datetime.min.time(), UTC))
        )
        .select("customer_id", "article_id")
        .distinct()
        .cache()
    )
    buyers = actual.select("customer_id").distinct().cache()
    params = RankerParams(max_iter=20, max_depth=4)
    cutoffs = ranker.training_cutoffs(train_end, HOLDOUT, params.train_cutoffs)
    model = ranker.fit(ranker.labelled(train, cutoffs, HOLDOUT, params), params)
    sources = candidate_sources(train, train_end, RecParams(), buyers, als_for=None)
    cands = ranker.candidates(train, ranker.at(buyers, train_end), params)
    sources["ranker"] = ranker.ranked(model, cands)
    orders = {
        "popularity": ("popularity",),
        "repurchase": ("repurchase", "popularity"),
        "ranker": ("ranker", "popularity"),
    }
    recs = None
    for name, order in orders.items():
        part = assemble(buyers, sources, order).withColumn("strategy", F.lit(name))
        recs = part if recs is None else recs.unionByName(part)
    catalogue = train.select("article_id").distinct().count()
    m = spark_ranking_metrics_by(recs, actual, catalogue, list(orders))
    got = {name: m[name]["map@12"] for name in orders}
    # repurchase finds the staples, popularity the popular ones: both real baselines...
    assert got["repurchase"] > 0.2 and got["popularity"] > 0.01, got
    # ...and knowing which staple is due is worth far more than either
    assert got["ranker"] > 1.3 * max(got["repurchase"], got["popularity"]), got
    # every buyer has a full list, and no article twice in one
    lists = assemble(buyers, sources, orders["ranker"])
    per = lists.groupBy("customer_id").agg(
        F.count("*").alias("n"), F.countDistinct("article_id").alias("d")
    )
    assert per.where((F.col("n") != 12) | (F.col("d") != 12)).count() == 0
    assert per.count() == buyers.count()


def test_candidates_features_by_hand(spark) -> None:  # type: ignore[no-untyped-def]
    # one customer: article A on days 0, 10, 20; B on day 20 with A (a basket); cutoff day 30
    t = lambda d: datetime.combine(START + timedelta(days=d), datetime.min.time(), UTC)  # noqa: E731
    rows = [("u", "A", t(0)), ("u", "A", t(10)), ("u", "A", t(20)), ("u", "B", t(20)),
            ("v", "B", t(25)), ("v", "C", t(25))]  # fmt: skip
    events = spark.createDataFrame(
        [(c, a, ts, 1, 2.0, 1) for c, a, ts in rows],
        "customer_id string, article_id string, event_time timestamp, quantity int, "
        "unit_price double, sales_channel_id int",
    )
    who = spark.createDataFrame([("u",)], "customer_id string")
    cands = {
        r["article_id"]: r.asDict()
        for r in ranker.candidates(
            events, ranker.at(who, START + timedelta(days=30)), RankerParams()
        ).collect()
    }
    assert set(cands) == {"A", "B", "C"}  # own A, B; C co-bought with B by v (and popular)
    a = cands["A"]
    assert (a["ca_n"], a["ca_days"], a["ca_days_since"]) == (3.0, 3.0, 10.0)
    assert a["ca_since_over_gap"] == pytest.approx(10.0 / 10.0)  # gap (20 - 0) / 2
    assert a["ca_share"] == pytest.approx(3 / 4)
    assert (a["c_days"], a["c_recency"], a["c_mean_gap"], a["c_n"]) == (3.0, 10.0, 10.0, 4.0)
    assert cands["B"]["ca_since_over_gap"] == ranker.MISSING  # bought once: no gap yet
    assert cands["C"]["ca_n"] == ranker.MISSING and cands["C"]["co_score"] == 1.0
    assert cands["C"]["from_copurchase"] == 1.0 and cands["C"]["from_repurchase"] == ranker.MISSING
    # article B: 2 purchases in the last 30 days, 1 in the last 7 (v's, day 25)
    assert (cands["B"]["a_n30"], cands["B"]["a_n7"], cands["B"]["a_buyers30"]) == (2.0, 1.0, 2.0)


def test_a_ranker_with_nothing_to_learn_from_is_left_out_not_fatal(spark, settings) -> None:  # type: ignore[no-untyped-def]
    """Purchases in days 0-9 and in the hold-out week only: the ranker's three training
    windows before the hold-out hold no purchase, so it cannot be fitted. The retrain
    still evaluates and serves the other strategies, and says why the ranker is missing."""
    rows = [(d % 10, f"c{c:02d}", f"a{(c + d) % 4}") for c in range(12) for d in range(c, c + 3)]
    rows += [(61 + c % 5, f"c{c:02d}", f"a{c % 4}") for c in range(12)]
    ingest_source(spark, settings, TableSource([events_table(rows)]), progress=False)
    rec = RecParams(rank=4, max_iter=2, ranker=RankerParams(max_iter=3))
    opts = RetrainOptions(
        as_of=date(2020, 3, 8), models=("recommendations",), rec=rec, progress=False
    )  # day 67: hold-out [60, 67), ranker windows [39, 60) hold nothing
    meta = retrain(spark, settings, opts)["recommendations"]

    assert "no purchases to learn from" in meta["left_out"]["ranker"]
    assert "ranker" not in meta["metrics"]
    assert {"repurchase", "popularity"} <= set(meta["metrics"])


def test_each_cutoff_sees_only_its_past(spark) -> None:  # type: ignore[no-untyped-def]
    """Two cutoffs built in one pass: w buys X on day 2 and Y on day 8. At day 5 only X
    exists (Y is neither a candidate nor counted); at day 10 Y is in the last basket and X
    was bought 6 days before it."""
    t = lambda d: datetime.combine(START + timedelta(days=d), datetime.min.time(), UTC)  # noqa: E731
    events = spark.createDataFrame(
        [("w", "X", t(2), 1, 2.0, 1), ("w", "Y", t(8), 1, 4.0, 1)],
        "customer_id string, article_id string, event_time timestamp, quantity int, "
        "unit_price double, sales_channel_id int",
    )
    who = spark.createDataFrame([("w",)], "customer_id string")
    day5, day10 = START + timedelta(days=5), START + timedelta(days=10)
    scope = ranker.at(who, day5).unionByName(ranker.at(who, day10))
    got = {
        (r["cutoff"], r["article_id"]): r.asDict()
        for r in ranker.candidates(events, scope, RankerParams()).collect()
    }
    assert set(got) == {(day5, "X"), (day10, "X"), (day10, "Y")}
    x5, x10, y10 = got[(day5, "X")], got[(day10, "X")], got[(day10, "Y")]
    assert (x5["ca_days_since"], x5["ca_before_last"], x5["c_n"], x5["a_n30"]) == (
        3.0,
        0.0,
        1.0,
        1.0,
    )
    assert (x10["ca_days_since"], x10["ca_before_last"], x10["c_n"]) == (8.0, 6.0, 2.0)
    assert (y10["ca_days_since"], y10["ca_before_last"], y10["a_price"]) == (2.0, 0.0, 4.0)


def _events(spark, rows):  # type: ignore[no-untyped-def]  # noqa: ANN001, ANN202
    """(customer, article, day) -> an events frame, each a purchase at noon of START + day."""
    t = lambda d: datetime.combine(START + timedelta(days=d), datetime.min.time(), UTC)  # noqa: E731
    return spark.createDataFrame(
        [(c, a, t(d) + timedelta(hours=12), 1, 1.0, 1) for c, a, d in rows],
        "customer_id string, article_id string, event_time timestamp, quantity int, "
        "unit_price double, sales_channel_id int",
    )


def test_copurchase_counts_each_cutoffs_own_window(spark) -> None:  # type: ignore[no-untyped-def]
    """v buys {P, Q} on day 2, u buys {P, Q} on day 7; w's only article is P (day 1). With
    a 4-day co-purchase window, at day 5 one basket counts (v's, 3 days old), at day 10
    one (u's: v's is 8 days old); with 90 days, 1 at day 5 and 2 at day 10."""
    events = _events(
        spark, [("v", "P", 2), ("v", "Q", 2), ("u", "P", 7), ("u", "Q", 7), ("w", "P", 1)]
    )
    who = spark.createDataFrame([("w",)], "customer_id string")
    day5, day10 = START + timedelta(days=5), START + timedelta(days=10)
    scope = ranker.at(who, day5).unionByName(ranker.at(who, day10))
    for days, want in ((4, {day5: 1.0, day10: 1.0}), (90, {day5: 1.0, day10: 2.0})):
        params = RankerParams(copurchase_days=days)
        got = {
            r["cutoff"]: r["co_score"]
            for r in ranker.candidates(events, scope, params).collect()
            if r["article_id"] == "Q"
        }
        assert got == want, days


def _copurchase_by_hand(rows, cutoff, who, params):  # type: ignore[no-untyped-def]  # noqa: ANN001, ANN202
    """The co-purchase rule of ``ranker.candidates`` written out in Python, for customer
    ``who`` at ``cutoff`` (a day number): {article: co_score}."""
    before = [(c, a, d) for c, a, d in rows if d < cutoff]
    last: dict[str, int] = {}
    weight: dict[str, float] = {}
    for c, a, d in before:
        if c == who:
            last[a] = max(last.get(a, d), d)
            weight[a] = weight.get(a, 0.0) + 2 ** (-(cutoff - d) / params.half_life_days)
    mine = sorted(last, key=lambda a: (-last[a], -round(weight[a], 9), a))
    seeds = mine[: params.seed_articles]
    baskets: dict[tuple[str, int], set[str]] = {}
    for c, a, d in before:
        if cutoff - d <= params.copurchase_days:
            baskets.setdefault((c, d), set()).add(a)
    n: dict[tuple[str, str], int] = {}
    for basket in baskets.values():
        if 2 <= len(basket) <= params.max_basket:
            for s in basket:
                for a in basket - {s}:
                    n[(s, a)] = n.get((s, a), 0) + 1
    score: dict[str, int] = {}
    for s in seeds:
        near = sorted((a for t, a in n if t == s), key=lambda a: (-n[(s, a)], a))
        for a in near[: params.neighbours]:
            score[a] = score.get(a, 0) + n[(s, a)]
    kept = sorted((a for a in score if a not in last), key=lambda a: (-score[a], a))
    return {a: float(score[a]) for a in kept[: params.copurchase_k]}


def test_copurchase_candidates_match_the_rule_by_hand(spark) -> None:  # type: ignore[no-untyped-def]
    """Random baskets of 12 articles among 40 customers over 60 days, small limits so that
    every rule binds (2 seeds, 3 neighbours, 4 candidates, 20-day window, baskets of at
    most 4): each scoped customer's co-purchase candidates and scores at two cutoffs are
    those of the rule written out in Python, ties included; and every candidate is
    labelled by whether its customer bought it in the 10 days from the cutoff."""
    rng = random.Random(7)
    rows = sorted({
        (f"c{c:02d}", f"a{rng.randrange(12):02d}", day)
        for c in range(40) for day in rng.sample(range(60), 6) for _ in range(rng.randint(1, 5))
    })  # fmt: skip
    params = RankerParams(seed_articles=2, neighbours=3, copurchase_k=4, copurchase_days=20,
                          max_basket=4)  # fmt: skip
    cutoffs = (45, 58)
    who = spark.createDataFrame([(f"c{c:02d}",) for c in range(0, 40, 3)], "customer_id string")
    scope = ranker.at(who, START + timedelta(days=cutoffs[0])).unionByName(
        ranker.at(who, START + timedelta(days=cutoffs[1]))
    )
    events = _events(spark, rows)
    truth = ranker.bought_after(events, [START + timedelta(days=c) for c in cutoffs], 10)
    got: dict[tuple[int, str], dict[str, float]] = {}
    every, labels = set(), set()
    for r in ranker.candidates(events, scope, params, truth).collect():
        day = (r["cutoff"] - START).days
        got.setdefault((day, r["customer_id"]), {})
        every.add((day, r["customer_id"], r["article_id"]))
        if r["from_copurchase"] == 1.0:
            got[(day, r["customer_id"])][r["article_id"]] = r["co_score"]
        if r["label"] == 1.0:
            labels.add((day, r["customer_id"], r["article_id"]))
        else:
            assert r["label"] == 0.0
    # labelled: the candidates (of every source) the customer bought in the 10 days from
    # the cutoff
    bought = {(d, c, a) for c, a, day in rows for d in cutoffs if d <= day < d + 10}
    assert labels == bought & every and len(labels) > 10
    want = {
        (cut, f"c{c:02d}"): _copurchase_by_hand(rows, cut, f"c{c:02d}", params)
        for cut in cutoffs for c in range(0, 40, 3)
    }  # fmt: skip
    assert got == want
    assert sum(len(v) for v in want.values()) > 40  # the rule proposes, and limits bind
    assert any(len(v) == params.copurchase_k for v in want.values())


def test_sample_keeps_whole_customers_up_to_the_limit_per_cutoff(spark) -> None:  # type: ignore[no-untyped-def]
    """Five customers at one cutoff, two at another, limit 3: three and two customers, with
    all their rows, the same ones however the rows are partitioned."""
    a, b = START, START + timedelta(days=7)
    rows = [(a, f"c{i}", art) for i in range(5) for art in ("X", "Y")] + [
        (b, "c0", "X"),
        (b, "c9", "X"),
    ]
    df = spark.createDataFrame(rows, "cutoff date, customer_id string, article_id string")
    kept = ranker.sample(df, 3).collect()
    again = ranker.sample(df.repartition(4, "article_id"), 3).collect()
    assert sorted(kept) == sorted(again)
    per_cutoff: dict[date, set[str]] = {}
    for r in kept:
        per_cutoff.setdefault(r["cutoff"], set()).add(r["customer_id"])
    assert len(per_cutoff[a]) == 3 and per_cutoff[b] == {"c0", "c9"}
    assert len(kept) == 3 * 2 + 2  # every kept customer keeps both rows


def test_most_recent_cuts_at_whole_days(spark) -> None:  # type: ignore[no-untyped-def]
    """Last purchases before day 10: a and b day 9, c day 8, d day 5; e only on day 12
    (after the cutoff) and f never bought (a return). Within 3: a, b, c; within 2: a, b;
    within 1: nobody (day 9 alone holds two); within 4 (all four who bought before day
    10): no limit needed."""
    events = _events(spark, [("a", "X", 9), ("b", "X", 9), ("c", "X", 8), ("d", "X", 5),
                             ("d", "X", 1), ("e", "X", 12)])  # fmt: skip
    returned = events.where(F.col("customer_id") == "a").withColumn("customer_id", F.lit("f"))
    daily = daily_activity(events.unionByName(returned.withColumn("quantity", F.lit(-1))))
    day10 = START + timedelta(days=10)
    assert ranker.most_recent(daily, [day10], 4) == [None]
    got = {}
    for limit in (3, 2, 1):
        (scored,) = ranker.most_recent(daily, [day10], limit)
        assert scored is not None
        got[limit] = {r["customer_id"] for r in scored.collect()}
    assert got == {3: {"a", "b", "c"}, 2: {"a", "b"}, 1: set()}
    # two cutoffs in one pass: before day 9 only c (day 8) and d (day 5) had bought
    at9, at10 = ranker.most_recent(daily, [START + timedelta(days=9), day10], 1)
    assert at9 is not None and at10 is not None
    assert {r["customer_id"] for r in at9.collect()} == {"c"} and at10.count() == 0


def test_fit_is_the_same_from_any_partitioning(spark) -> None:  # type: ignore[no-untyped-def]
    # fit re-partitions its rows by key (FIT_PARTITIONS of them, sorted): the trees must
    # not depend on how the rows arrived (fitting them as they come fails this)
    events = spark.createDataFrame(
        staple_shop(customers=120),
        "customer_id string, article_id string, event_time timestamp, quantity int, "
        "unit_price double, sales_channel_id int",
    )
    train_end = START + timedelta(days=DAYS - HOLDOUT)
    params = RankerParams(max_iter=8, max_depth=4)
    cutoffs = ranker.training_cutoffs(train_end, HOLDOUT, params.train_cutoffs)
    rows = ranker.labelled(events, cutoffs, HOLDOUT, params).localCheckpoint()
    assert rows.where(F.col("label") == 1.0).count() > 50  # something to learn
    scores = []
    for frame in (rows.coalesce(1), rows.repartition(7).orderBy(F.rand(4))):
        model = ranker.fit(frame, params)
        p = model.transform(rows).select(
            "cutoff", "customer_id", "article_id", F.col("probability").cast("string")
        )
        scores.append(sorted(p.collect()))
    assert len({r[3] for r in scores[0]}) > 10  # the trees split: not one score for all
    assert scores[0] == scores[1]

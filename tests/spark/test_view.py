"""The customer view on hand-built features and hand-built model outputs: scoring (the
exported scorers), assembly (Arrow), and the live view's pick-up of new registry versions
through the online store and the read path."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet
import pytest

from batch.segments import build_pipeline, export
from features.customer import compute_features
from runtime.errors import PulseError
from schemas.tables import LIVE_FEATURE_COLUMNS, VIEW_EXTRA_COLUMNS
from schemas.transaction import spark_schema
from scoring.btyd import BGNBD, GammaGamma
from scoring.churn import STACK_FEATURES, ChurnScorer
from scoring.segments import SegmentScorer
from serving.view import ModelOutputs, assemble, recommendation_lists, score

AS_OF = datetime(2020, 3, 31, 23, 59, 59, tzinfo=UTC)


def ev(i, day, customer):
    when = datetime.fromisoformat(day).replace(tzinfo=UTC)
    return (f"e{i}", when, customer, "0001", 1, 10.0, 2, "synthetic", when)


@pytest.fixture(scope="module")
def events(spark):
    return spark.createDataFrame(
        [
            ev(1, "2020-03-01", "a"),
            ev(2, "2020-03-20", "a"),
            ev(3, "2020-03-30", "a"),  # a: recency 1, frequency 3
            ev(4, "2019-12-22", "b"),  # b: recency 100, frequency 1
            ev(5, "2020-02-20", "c"),
            ev(6, "2020-02-21", "c"),  # c: recency 39, frequency 2
            ev(7, "2020-03-31", "d"),  # d: new today, unknown to segments and recs
        ],
        spark_schema(),
    )


@pytest.fixture(scope="module")
def features(events):
    return compute_features(events, AS_OF).toArrow()


def churn_scorer(version: str, sign: float = 1.0) -> ChurnScorer:
    """A logistic stack that reads log recency only: P = sigmoid(sign (3 ln(1 + recency) - 6)),
    so churn follows a long silence (sign 1) or, flipped, a recent purchase (sign -1)."""
    coefficients = [0.0] * len(STACK_FEATURES)
    coefficients[STACK_FEATURES.index("log_recency")] = 3.0 * sign
    return ChurnScorer(
        version, 30, BGNBD(r=0.5, alpha=10.0, a=0.7, b=2.0), GammaGamma(p=2.0, q=3.0, gamma=5.0),
        "logistic", coefficients=coefficients, intercept=-6.0 * sign,
    )  # fmt: skip


def by_hand(recency: int, sign: float = 1.0) -> float:
    return 1.0 / (1.0 + math.exp(-sign * (3.0 * math.log(1.0 + recency) - 6.0)))


# Three obvious RFM clusters (recency_days, frequency, monetary), far apart in log space.
SEGMENT_TRAINING = {
    "new": [(0, 1, 8.0), (1, 1, 10.0), (2, 1, 12.0), (0, 1, 9.0), (1, 1, 11.0)],
    "lapsed": [(150, 1, 8.0), (170, 1, 10.0), (190, 1, 12.0), (160, 1, 9.0), (200, 1, 11.0)],
    "champions": [(1, 20, 400.0), (2, 25, 500.0), (3, 30, 600.0), (1, 22, 450.0), (2, 28, 550.0)],
}
POPULAR = tuple(f"pop{i:02d}" for i in range(1, 13))


@pytest.fixture(scope="module")
def segmentation(spark):
    """The real segmentation pipeline (batch.segments) fitted on three obvious clusters, as
    the scorer a retrain exports.

    Returns (scorer, names, cluster id of each training group); names are deliberately
    unlike the segments-table names, so a test can tell a table value from a model one.
    """
    rows = [
        (f"{group}{i}", r, f, m)
        for group, points in SEGMENT_TRAINING.items()
        for i, (r, f, m) in enumerate(points)
    ]
    train = spark.createDataFrame(
        rows, "customer_id string, recency_days int, frequency long, monetary double"
    )
    model = build_pipeline(3).fit(train)
    assigned: dict[str, set[int]] = {}
    for r in model.transform(train).collect():
        assigned.setdefault(r["customer_id"].rstrip("0123456789"), set()).add(r["prediction"])
    # each group is one cluster, and the three differ: the clusters really are obvious
    assert all(len(ids) == 1 for ids in assigned.values())
    cluster = {group: ids.pop() for group, ids in assigned.items()}
    assert len(set(cluster.values())) == 3
    names = {cid: f"model {group}" for group, cid in cluster.items()}
    return SegmentScorer.from_dict(export(model, names, "s")), names, cluster


SEGMENTS = pa.table(
    {"customer_id": ["a", "b", "c"], "segment_id": pa.array([0, 1, 1], pa.int32()),
     "segment_name": ["Champions", "Hibernating", "Hibernating"]}
)  # fmt: skip


def recs_table(rows):
    names = ["customer_id", "rank", "article_id", "score", "source"]
    return recommendation_lists(
        pa.Table.from_pylist([dict(zip(names, r, strict=True)) for r in rows])
    )


def view_of(features, models):
    return assemble(features, score(features, models), models)


def by_id(view):
    return {r["customer_id"]: r for r in view.to_pylist()}


def test_view_joins_current_outputs(features):
    """Table-only outputs (a registry version with no segmentation model or popularity
    list): customers absent from a table get nulls there."""
    # a has 13 ranked rows (given out of order): the view keeps ranks 1..12 in order.
    recs_rows = [("a", r, f"art{r:02d}", 1.0 / r, "als") for r in [13, 2, 1, *range(3, 13)]]
    recs_rows += [("b", 2, "pop2", 0.5, "popularity"), ("b", 1, "pop1", 0.9, "popularity")]
    models = ModelOutputs(
        segments=SEGMENTS,
        segments_version="s1",
        churn=churn_scorer("c1"),
        churn_version="c1",
        recommendations=recs_table(recs_rows),
        recs_version="r1",
    )
    view = view_of(features, models)

    # exactly the table contract: live feature columns, then the view's, in order
    assert view.column_names == [*LIVE_FEATURE_COLUMNS, *VIEW_EXTRA_COLUMNS]
    a_recs = [f"art{r:02d}" for r in range(1, 13)]
    expected = {
        "a": (1, 3, "Champions", "s1", a_recs, "r1", "c1"),
        "b": (100, 1, "Hibernating", "s1", ["pop1", "pop2"], "r1", "c1"),
        "c": (39, 2, "Hibernating", "s1", None, "r1", "c1"),
        "d": (0, 1, None, "s1", None, "r1", "c1"),
    }
    keys = ["recency_days", "frequency", "segment_name", "segments_model_version",
            "recommendations", "recs_model_version", "churn_model_version"]  # fmt: skip
    rows = by_id(view)
    assert {c: tuple(r[k] for k in keys) for c, r in rows.items()} == expected
    assert {r["churn_as_of"] for r in rows.values()} == {AS_OF}

    # churn_probability is the stack's P(churn) for the live feature row, by hand
    for cid, recency in {"a": 1, "b": 100, "c": 39, "d": 0}.items():
        assert rows[cid]["churn_probability"] == pytest.approx(by_hand(recency), rel=1e-12)
    assert rows["b"]["churn_probability"] > 0.5 > rows["a"]["churn_probability"]


def test_unseen_customers_get_model_segment_and_popular_list(features, segmentation):
    """d is in neither table: the segmentation model assigns it from its live features
    (recency 0, frequency 1, monetary 10: the "new" cluster), and it gets exactly the
    popularity list. Customers in the tables keep their table rows."""
    model, names, cluster = segmentation
    a_recs = [f"art{r:02d}" for r in range(1, 13)]
    recs = recs_table(
        [("a", r, a, 1.0, "als") for r, a in enumerate(a_recs, 1)]
        + [("b", 1, "pop1", 0.9, "popularity"), ("b", 2, "pop2", 0.5, "popularity")]
    )
    models = ModelOutputs(
        segments=SEGMENTS,
        segmenter=model,
        segments_version="s1",
        recommendations=recs,
        popular=POPULAR,
        recs_version="r1",
    )
    rows = by_id(view_of(features, models))
    d = rows["d"]
    assert (d["recency_days"], d["frequency"], d["monetary"]) == (0, 1, 10.0)
    new = cluster["new"]
    got = {c: (r["segment_id"], r["segment_name"], r["recommendations"]) for c, r in rows.items()}
    assert got == {
        "a": (0, "Champions", a_recs),
        "b": (1, "Hibernating", ["pop1", "pop2"]),
        "c": (1, "Hibernating", list(POPULAR)),  # segmented, but not in the recs table
        "d": (new, "model new", list(POPULAR)),
    }
    assert {(r["segments_model_version"], r["recs_model_version"]) for r in rows.values()} == {
        ("s1", "r1")
    }

    # The model alone (no table read): every live customer is assigned by the model.
    alone = view_of(features, ModelOutputs(segmenter=model))
    by_model = {c: r["segment_id"] for c, r in by_id(alone).items()}
    assert by_model["d"] == new and None not in by_model.values()


def test_missing_models_give_nulls(features):
    view = view_of(features, ModelOutputs())
    assert view.num_rows == 4
    for row in view.to_pylist():
        assert all(row[c] is None for c in VIEW_EXTRA_COLUMNS), row


def _write_churn(settings, scorer: ChurnScorer) -> None:
    from storage import registry

    registry.write_scorer(settings, "churn", scorer.version, scorer.as_dict())


def _register(settings, name, version, write):
    """Hand-build one accepted registry version (meta.json, artefact, CURRENT)."""
    from storage import registry

    registry.write_meta(settings, name, version, {"gate": "passed"})
    write()
    registry.promote(settings, name, version)


@pytest.fixture(scope="module")
def state(spark, events):
    """The same customers' absolute state, as the stream's store holds it (Arrow)."""
    from pyspark.sql import functions as F

    from features.customer import customer_state, daily_activity

    latest = events.groupBy("customer_id").agg(F.max("event_time").alias("max_event_time"))
    rows = customer_state(daily_activity(events), AS_OF).join(latest, "customer_id")
    return rows.toArrow().sort_by("customer_id")


def test_publish_picks_up_new_versions_and_reads_back(spark, settings, state, segmentation):
    """The live view (one object, as one stream run keeps it) picks up each promoted
    version without a restart; the online store and the read path serve it."""
    from features.customer import features_table
    from serving import read
    from serving.live import LiveView
    from storage import registry, snapshots

    logs: list[str] = []
    live = LiveView(settings, log=logs.append)
    features = features_table(state, AS_OF)

    def publish() -> None:
        live.snapshot(state, features, AS_OF)

    # No model yet: the view is published with nulls.
    publish()
    assert read.lookup(settings, "a")["churn_probability"] is None
    # A churn version trained before scorers were exported (no scorer.json): still nulls,
    # never another version's scores, and no version claimed.
    _register(settings, "churn", "c0", lambda: None)
    publish()
    a = read.lookup(settings, "a", with_value=True)
    assert (a["churn_probability"], a["expected_value"], a["churn_model_version"]) == (None,) * 3

    segs = spark.createDataFrame(
        [("a", 0, "Champions")], "customer_id string, segment_id int, segment_name string"
    )
    _register(
        settings,
        "segments",
        "s1",
        lambda: segs.write.parquet(str(registry.output_path(settings, "segments", "s1"))),
    )
    _register(settings, "churn", "c1", lambda: _write_churn(settings, churn_scorer("c1")))
    publish()
    assert any("model picked up: segments s1, churn c1" in line for line in logs), logs
    row = read.lookup(settings, "b")
    assert (row["churn_model_version"], row["recency_days"]) == ("c1", 100)
    assert row["churn_probability"] == pytest.approx(by_hand(100)) and row["churn_as_of"] == AS_OF
    assert read.lookup(settings, "a")["segment_name"] == "Champions"
    # s1 is a version with the table only (as written before retrain kept the model):
    # served from the table alone, so d (not in it) has no segment.
    assert read.lookup(settings, "d")["segment_name"] is None
    # The Parquet snapshot holds the same rows the look-ups return.
    snapshot = pa.parquet.read_table(snapshots.current(settings.serving_dir))
    assert by_id(snapshot)["b"] == read.lookup(settings, "b")

    # A retrain promotes c2 (flipped): the next publish uses it, same process.
    _register(settings, "churn", "c2", lambda: _write_churn(settings, churn_scorer("c2", -1.0)))
    publish()
    row = read.lookup(settings, "b")
    assert row["churn_model_version"] == "c2"
    assert row["churn_probability"] == pytest.approx(by_hand(100, -1.0))
    top = read.at_risk(settings, 2, by_probability=True)
    assert [r["customer_id"] for r in top] == ["d", "a"]  # now the recent buyers "churn"

    with pytest.raises(PulseError, match="unknown customer"):
        read.lookup(settings, "nobody")

    # Versions laid out as `pulse retrain` writes them: the segmentation model with its
    # names next to the segments table, the popularity list next to the recommendations.
    model, names, cluster = segmentation

    def write_segments_v2() -> None:
        segs.write.parquet(str(registry.output_path(settings, "segments", "s2")))
        registry.write_scorer(settings, "segments", "s2", model.as_dict())

    def write_recs_r1() -> None:
        spark.createDataFrame(
            [("a", 1, "art01", 1.0, "als")],
            "customer_id string, rank int, article_id string, score double, source string",
        ).write.parquet(str(registry.output_path(settings, "recommendations", "r1")))
        popular_file = registry.model_dir(settings, "recommendations", "r1") / registry.POPULAR_FILE
        popular_file.write_text(json.dumps({"articles": list(POPULAR)}))

    _register(settings, "segments", "s2", write_segments_v2)
    _register(settings, "recommendations", "r1", write_recs_r1)
    publish()
    a, d = read.lookup(settings, "a"), read.lookup(settings, "d")
    assert (a["segment_name"], a["recommendations"]) == ("Champions", ["art01"])
    assert (d["segment_id"], d["segment_name"]) == (cluster["new"], "model new")
    assert d["recommendations"] == list(POPULAR)
    assert (d["segments_model_version"], d["recs_model_version"]) == ("s2", "r1")


def test_sqlite_and_redis_serve_identical_views(spark, settings, state, segmentation, redis_url):
    """The same snapshot through each backend: every look-up and the at-risk list agree,
    and equal the Parquet snapshot's rows."""
    import redis

    from features.customer import features_table
    from serving import read
    from serving.live import LiveView
    from storage import registry, snapshots

    redis.Redis.from_url(redis_url).flushdb()
    model, names, _ = segmentation

    def write_segments() -> None:
        registry.write_scorer(settings, "segments", "s1", model.as_dict())
        spark.createDataFrame(
            [("a", 0, "Champions")], "customer_id string, segment_id int, segment_name string"
        ).write.parquet(str(registry.output_path(settings, "segments", "s1")))

    _register(settings, "segments", "s1", write_segments)
    _register(settings, "churn", "c1", lambda: _write_churn(settings, churn_scorer("c1")))
    features = features_table(state, AS_OF)
    on_redis = settings.model_copy(update={"online_store": "redis", "redis_url": redis_url})
    for s in (settings, on_redis):
        live = LiveView(s, log=lambda _: None)
        live.snapshot(state, features, AS_OF)
        live.close()
    snapshot = by_id(pa.parquet.read_table(snapshots.current(settings.serving_dir)))
    for cid in ("a", "b", "c", "d"):
        assert read.lookup(settings, cid) == read.lookup(on_redis, cid) == snapshot[cid]
    assert read.at_risk(settings, 3) == read.at_risk(on_redis, 3)
    by_p = read.at_risk(settings, 4, by_probability=True)
    assert [r["customer_id"] for r in by_p][0] == "b"  # 100 days quiet

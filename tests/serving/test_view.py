"""The customer view on hand-built features and a hand-built registry output."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pyspark.ml import Pipeline
from pyspark.ml.classification import GBTClassifier
from pyspark.ml.feature import Imputer, VectorAssembler
from pyspark.ml.linalg import Vectors
from pyspark.testing import assertDataFrameEqual

from features.customer import compute_features
from pulse.errors import PulseError
from schemas.transaction import spark_schema
from serving.view import VIEW_COLUMNS, ModelOutputs, build_view

pytestmark = pytest.mark.spark
AS_OF = datetime(2020, 3, 31, 23, 59, 59, tzinfo=UTC)


def ev(i, day, customer):
    when = datetime.fromisoformat(day).replace(tzinfo=UTC)
    return (f"e{i}", when, customer, "0001", 1, 10.0, 2, "synthetic", when)


@pytest.fixture(scope="module")
def features(spark):
    events = spark.createDataFrame(
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
    return compute_features(events, AS_OF)


@pytest.fixture(scope="module")
def churn_model(spark):
    """A tiny real GBT pipeline: churn = long recency; age imputed inside the pipeline."""
    rows = [(r, 3, 30.0, 0.0) for r in (0, 1, 2, 3, 5)] + [
        (r, 1, 50.0, 1.0) for r in (60, 70, 80, 90, 100)
    ]
    train = spark.createDataFrame(
        rows, "recency_days int, frequency long, age double, label double"
    )
    pipeline = Pipeline(
        stages=[
            Imputer(inputCols=["age"], outputCols=["age_imputed"]),
            VectorAssembler(
                inputCols=["recency_days", "frequency", "age_imputed"],
                outputCol="features",
                handleInvalid="keep",
            ),
            GBTClassifier(maxIter=5, maxDepth=2, seed=7),
        ]
    )
    return pipeline.fit(train)


def test_view_joins_current_outputs(spark, features, churn_model):
    segments = spark.createDataFrame(
        [("a", 0, "Champions"), ("b", 1, "Hibernating"), ("c", 1, "Hibernating")],
        "customer_id string, segment_id int, segment_name string",
    )
    # a has 13 ranked rows (given out of order): the view keeps ranks 1..12 in order.
    recs_rows = [("a", r, f"art{r:02d}", 1.0 / r, "als") for r in [13, 2, 1, *range(3, 13)]]
    recs_rows += [("b", 2, "pop2", 0.5, "popularity"), ("b", 1, "pop1", 0.9, "popularity")]
    recs = spark.createDataFrame(
        recs_rows, "customer_id string, rank int, article_id string, score double, source string"
    )
    customers = spark.createDataFrame(
        [("a", 20), ("b", 60), ("zz", 33)], "customer_id string, age int"
    )
    models = ModelOutputs(
        segments=segments,
        segments_version="s1",
        churn_model=churn_model,
        churn_version="c1",
        recommendations=recs,
        recs_version="r1",
        customers=customers,
    )
    view = build_view(features, models)

    assert view.columns == features.columns + list(VIEW_COLUMNS)
    a_recs = [f"art{r:02d}" for r in range(1, 13)]
    expected = spark.createDataFrame(
        [
            ("a", 1, 3, "Champions", "s1", a_recs, "r1", "c1"),
            ("b", 100, 1, "Hibernating", "s1", ["pop1", "pop2"], "r1", "c1"),
            ("c", 39, 2, "Hibernating", "s1", None, "r1", "c1"),
            ("d", 0, 1, None, "s1", None, "r1", "c1"),
        ],
        "customer_id string, recency_days int, frequency long, segment_name string, "
        "segments_model_version string, recommendations array<string>, "
        "recs_model_version string, churn_model_version string",
    )
    got = view.select(*expected.columns)
    assertDataFrameEqual(got, expected)

    # churn_probability is the GBT's P(churn) for the live feature row; checked against the
    # model's own single-vector API (no DataFrame path). c and d have no age: imputed with
    # the training mean (40).
    gbt = churn_model.stages[-1]
    inputs = {"a": (1, 3, 20.0), "b": (100, 1, 60.0), "c": (39, 2, 40.0), "d": (0, 1, 40.0)}
    probs = {r["customer_id"]: r["churn_probability"] for r in view.collect()}
    for cid, vec in inputs.items():
        assert probs[cid] == pytest.approx(gbt.predictProbability(Vectors.dense(vec))[1])
    assert probs["b"] > 0.5 > probs["a"]


def test_missing_models_give_nulls(spark, features):
    view = build_view(features, ModelOutputs())
    assert view.count() == 4
    nulls = view.where(" AND ".join(f"{c} IS NULL" for c in VIEW_COLUMNS)).select("customer_id")
    assertDataFrameEqual(
        nulls, spark.createDataFrame([("a",), ("b",), ("c",), ("d",)], "customer_id string")
    )


def _register(settings, name, version, write):
    """Hand-build one accepted registry version (meta.json, artefact, CURRENT)."""
    from pulse import registry

    registry.write_meta(settings, name, version, {"gate": "passed"})
    write()
    registry.promote(settings, name, version)


def test_publish_picks_up_new_versions_and_reads_back(spark, settings, features, churn_model):
    from pulse import registry, snapshots
    from serving import read
    from serving.view import publish_view

    # No model yet: the view is published with nulls.
    publish_view(spark, settings, features)
    assert read.customer(settings, "a")["churn_probability"] is None

    segs = spark.createDataFrame(
        [("a", 0, "Champions")], "customer_id string, segment_id int, segment_name string"
    )
    _register(
        settings,
        "segments",
        "s1",
        lambda: segs.write.parquet(str(registry.output_path(settings, "segments", "s1"))),
    )
    _register(
        settings,
        "churn",
        "c1",
        lambda: churn_model.save(str(registry.model_path(settings, "churn", "c1"))),
    )
    first = publish_view(spark, settings, features)
    assert snapshots.current(settings.serving_dir) == first
    row = read.customer(settings, "b")
    assert (row["churn_model_version"], row["recency_days"]) == ("c1", 100)
    assert row["churn_probability"] > 0.5
    assert read.customer(settings, "a")["segment_name"] == "Champions"

    # A retrain promotes c2 (labels flipped): the next publish uses it, same process.
    flipped = spark.createDataFrame(
        [(r, 3, 30.0, 1.0) for r in (0, 1, 2)] + [(r, 1, 50.0, 0.0) for r in (60, 80, 100)],
        "recency_days int, frequency long, age double, label double",
    )

    c2 = Pipeline(stages=[*churn_model.stages[:2], GBTClassifier(maxIter=3, maxDepth=2)]).fit(
        flipped
    )
    _register(
        settings, "churn", "c2", lambda: c2.save(str(registry.model_path(settings, "churn", "c2")))
    )
    publish_view(spark, settings, features)
    row = read.customer(settings, "b")
    assert row["churn_model_version"] == "c2"
    assert row["churn_probability"] < 0.5
    top = read.at_risk(settings, 2)
    assert [r["customer_id"] for r in top][0] in {"a", "d"}  # now the recent buyers "churn"

    with pytest.raises(PulseError, match="unknown customer"):
        read.customer(settings, "nobody")

"""One definition: a version's exported scorer (``scorer.json``, evaluated in NumPy by
``scoring``) equals Spark ML's ``transform`` of the same saved model, on every customer.

A real retrain on generated data writes the churn model (the logistic stack, and in a
second run the GBT stack) and the segmentation model; both are applied with Spark ML to
the features of every customer of the lake, plus customers at the edges (only returns, a
first purchase on the clock's day, nothing for a year), and compared with the scorers
customer by customer, by id.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import numpy as np
import pyarrow as pa
import pytest
from pyspark.ml import PipelineModel
from pyspark.ml.functions import vector_to_array
from pyspark.sql import functions as F

from batch.params import ChurnParams, RecParams
from batch.retrain import RetrainOptions, retrain
from features.customer import compute_features
from pulse.cli import main as pulse_main
from schemas.transaction import FIELD_NAMES, make_event_id, spark_schema
from scoring.churn import ChurnScorer
from scoring.segments import SegmentScorer
from storage import registry
from storage.lake import read_lake

CUTOFF = date(2020, 8, 1)
AS_OF = datetime(2020, 8, 20, 12, 0, tzinfo=UTC)  # the clock: 19 days after the cutoff


def _edge_events(spark):  # type: ignore[no-untyped-def]
    """Customers the models never saw, at the edges."""

    def ev(customer: str, day: str, quantity: int, price: float) -> tuple:
        when = datetime.fromisoformat(day).replace(tzinfo=UTC)
        eid = make_event_id("synthetic", customer, day, quantity)
        return (eid, when, customer, "0001", quantity, price, 2, "synthetic", when)

    rows = [
        ev("edge-returns-only", "2020-08-10", -1, 20.0),
        ev("edge-first-today", "2020-08-20", 1, 5.0),
        ev("edge-long-gone", "2019-01-02", 1, 9.0),
        ev("edge-many-days", "2020-08-01", 1, 1.0),
        *[ev("edge-many-days", f"2020-07-{d:02d}", 2, 3.5) for d in range(1, 31)],
        ev("edge-free", "2020-08-05", 1, 0.0),
    ]
    return spark.createDataFrame(rows, spark_schema())


@pytest.fixture(scope="module")
def retrained(spark, base_settings, tmp_path_factory):  # type: ignore[no-untyped-def]
    """A lake of generated data and two churn versions (logistic, GBT) + segments."""
    from producers.generator import generate

    root = tmp_path_factory.mktemp("parity")
    settings = base_settings.model_copy(update={"data_root": root / "root"})
    generate(root / "gen", customers=400, articles=60, start=date(2019, 9, 1), days=335,
             seed=11, progress=False)  # fmt: skip
    assert pulse_main(["--data-root", str(settings.data_root), "ingest",
                       f"synthetic:{root / 'gen'}"]) == 0  # fmt: skip
    small = dict(rec=RecParams(rank=4, max_iter=3), k_min=3, k_max=4, progress=False, as_of=CUTOFF)
    logistic = retrain(
        spark,
        settings,
        RetrainOptions(
            models=("churn", "segments"), churn=ChurnParams(max_iter=3, max_depth=3), **small
        ),
    )
    gbt = retrain(
        spark,
        settings,
        RetrainOptions(
            models=("churn",), churn=ChurnParams(max_iter=3, max_depth=3, stack="gbt"), **small
        ),
    )
    # fmt: skip
    lake = read_lake(spark, settings).select(*FIELD_NAMES)
    events = lake.unionByName(_edge_events(spark))
    features = compute_features(events, AS_OF).cache()
    return settings, features, logistic, gbt


def _by_id(ids: list[str], values: np.ndarray) -> dict[str, float]:
    return dict(zip(ids, values.tolist(), strict=True))


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(1.0, abs(b))


@pytest.mark.parametrize("run", ["logistic", "gbt"])
def test_churn_scorer_equals_spark_transform_on_every_customer(retrained, run) -> None:  # type: ignore[no-untyped-def]
    settings, features, logistic, gbt = retrained
    version = (logistic if run == "logistic" else gbt)["churn"]["version"]
    data = registry.read_scorer(settings, "churn", version)
    assert data is not None and data["kind"] == run
    scorer = ChurnScorer.from_dict(data)

    model = PipelineModel.load(str(registry.model_path(settings, "churn", version)))
    spark_rows = (
        model.transform(features)
        .select("customer_id", vector_to_array("probability")[1].alias("p"), "expected_spend")
        .collect()
    )
    expected_p = {r["customer_id"]: r["p"] for r in spark_rows}
    expected_value = {r["customer_id"]: r["expected_spend"] for r in spark_rows}

    table = features.toArrow()
    p, value = scorer.score(table)
    ids = table["customer_id"].to_pylist()
    got_p, got_value = _by_id(ids, p), _by_id(ids, value)
    assert set(got_p) == set(expected_p) and len(ids) > 400
    assert {"edge-returns-only", "edge-first-today", "edge-long-gone"} <= set(ids)
    wrong = [c for c in ids if not _close(got_p[c], expected_p[c])]
    assert not wrong, [(c, got_p[c], expected_p[c]) for c in wrong[:5]]
    wrong = [c for c in ids if not _close(got_value[c], expected_value[c])]
    assert not wrong, [(c, got_value[c], expected_value[c]) for c in wrong[:5]]
    # not a constant: the scores really separate customers
    assert np.std(p) > 0.01 and len({round(v, 6) for v in got_p.values()}) > 50


def test_segment_scorer_equals_spark_transform_on_every_customer(retrained) -> None:  # type: ignore[no-untyped-def]
    settings, features, logistic, _ = retrained
    version = logistic["segments"]["version"]
    data = registry.read_scorer(settings, "segments", version)
    assert data is not None
    scorer = SegmentScorer.from_dict(data)
    model = PipelineModel.load(str(registry.model_path(settings, "segments", version)))
    expected = {
        r["customer_id"]: r["prediction"]
        for r in model.transform(features).select("customer_id", "prediction").collect()
    }
    table = features.toArrow()
    ids, names = scorer.assign(table)
    got = dict(zip(table["customer_id"].to_pylist(), ids.tolist(), strict=True))
    assert got == expected
    assert len(set(got.values())) == len(scorer.centers) >= 3
    meta_names = {int(k): v for k, v in logistic["segments"]["names"].items()}
    assert scorer.names == meta_names
    assert names == [meta_names[i] for i in ids.tolist()]


def test_scorer_reads_nulls_as_the_sql_does(retrained) -> None:  # type: ignore[no-untyped-def]
    """A feature row with every nullable column null scores like Spark scores it."""
    settings, features, logistic, _ = retrained
    version = logistic["churn"]["version"]
    scorer = ChurnScorer.from_dict(registry.read_scorer(settings, "churn", version) or {})
    empty = features.where(F.col("customer_id") == "edge-returns-only")
    row = empty.toArrow()
    assert row["recency_days"].null_count == 1 and row["mean_days_between"].null_count == 1
    model = PipelineModel.load(str(registry.model_path(settings, "churn", version)))
    spark_p = model.transform(empty).select(vector_to_array("probability")[1]).first()[0]
    assert _close(float(scorer.score(pa.Table.from_batches(row.to_batches()))[0][0]), spark_p)

"""Ingest and retrain on a tiny shop: dedup, the --as-of cutoff, outputs, and the gate."""

from __future__ import annotations

from datetime import date

import pytest
from batch_shop import TableSource, events_table, shop_rows
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from batch.candidates import popular
from batch.ingest import ingest_source
from batch.params import ChurnParams, RankerParams, RecParams
from batch.retrain import RetrainOptions, retrain
from features.customer import compute_features
from features.time import as_of_for
from serving.view import ModelCache
from storage import registry
from storage.lake import read_lake

SMALL = dict(
    rec=RecParams(rank=4, max_iter=3, ranker=RankerParams(max_iter=3)),
    churn=ChurnParams(max_iter=3, max_depth=3),
    k_min=3,
    k_max=3,
    progress=False,
)


def test_ingest_is_idempotent_and_partitioned(spark, settings):
    rows = [(0, "alice", "a1"), (0, "alice", "a1"), (3, "bob", "a2")]  # alice bought 2 units
    first = ingest_source(spark, settings, TableSource([events_table(rows)]), progress=False)
    assert (first.staged, first.appended) == (3, 3)
    # the same rows again plus one new: only the new one is appended
    again = events_table([*rows, (5, "carol", "a3")])
    second = ingest_source(spark, settings, TableSource([again]), progress=False)
    assert (second.staged, second.appended) == (4, 1)
    lake = read_lake(spark, settings)
    assert lake.count() == 4
    parts = sorted(p.name for p in settings.lake_dir.glob("event_date=*"))
    assert parts == ["event_date=2020-01-01", "event_date=2020-01-04", "event_date=2020-01-06"]
    # the cutoff is exclusive: events on 2020-01-06 are not read with cutoff 2020-01-06
    assert read_lake(spark, settings, date(2020, 1, 6)).count() == 3


def test_retrain_outputs_and_gate_keeps_current(spark, settings):
    settings = settings.model_copy(update={"churn_horizon_days": 14})
    ingest_source(spark, settings, TableSource([events_table(shop_rows())]), progress=False)
    as_of = date(2020, 4, 20)  # day 110: the last 10 days are never read
    checkpoint_dir = spark.sparkContext.getCheckpointDir()
    run = retrain(spark, settings, RetrainOptions(as_of=as_of, **SMALL))
    # ALS ran on the checkpoint directory the session's owner set: kept, not replaced
    assert checkpoint_dir is not None
    assert spark.sparkContext.getCheckpointDir() == checkpoint_dir

    recs_meta = run["recommendations"]
    assert recs_meta["window"]["cutoff_exclusive"] == "2020-04-20"
    assert set(recs_meta["metrics"]) == {"popularity", "repurchase", "als", "blend", "ranker"}
    # the loyal half rebuy their 3 favourites: repurchase must beat plain popularity here
    m = recs_meta["metrics"]
    assert m["repurchase"]["map@12"] > m["popularity"]["map@12"]
    recs = spark.read.parquet(
        str(registry.output_path(settings, "recommendations", recs_meta["version"]))
    )
    per_customer = recs.groupBy("customer_id").agg(
        F.count("*").alias("n"), F.max("rank").alias("r")
    )
    assert per_customer.count() == 40
    assert per_customer.where("n != 12 OR r != 12").count() == 0

    churn_meta = run["churn"]
    assert churn_meta["window"]["eval_cutoff"] == "2020-04-06"
    # lapsing customers stopped on day 50: all of them are churners at both cutoffs
    assert churn_meta["rows"]["eval_churn_rate"] == pytest.approx(0.5)
    assert churn_meta["metrics"]["gbt"]["auc_roc"] == pytest.approx(1.0)
    seg = spark.read.parquet(
        str(registry.output_path(settings, "segments", run["segments"]["version"]))
    )
    assert seg.count() == 40

    # What serving reads for customers first seen after this run, as retrain wrote it:
    # the popularity list of the cutoff, and the segmentation model with its names, which
    # applied to the features as of the cutoff gives back the segments table.
    served = ModelCache().current(settings)
    lake = read_lake(spark, settings, as_of)
    top = popular(lake, as_of, RecParams().popular_days).orderBy("pos").collect()
    assert served.popular == tuple(r.article_id for r in top)
    assert len(served.popular) == 12
    assert served.segmenter is not None and served.churn is not None
    assert served.segmenter.names == {int(k): v for k, v in run["segments"]["names"].items()}
    feats = compute_features(lake, as_of_for(as_of)).where(F.col("last_purchase_date").isNotNull())
    table = feats.toArrow()
    ids, names = served.segmenter.assign(table)
    reassigned = spark.createDataFrame(
        list(zip(table["customer_id"].to_pylist(), ids.tolist(), names, strict=True)),
        "customer_id string, segment_id int, segment_name string",
    )
    assertDataFrameEqual(reassigned, seg.select("customer_id", "segment_id", "segment_name"))

    # The customer state as of the cutoff, for the speed layer's correction (no gate).
    state_meta = registry.read_meta(settings, "state", registry.current_version(settings, "state"))
    assert (state_meta["cutoff_exclusive"], state_meta["customers"]) == ("2020-04-20", 40)

    good = registry.current_version(settings, "churn")
    assert good == churn_meta["version"] and churn_meta["promoted"]

    # Sabotage: inverted labels make the GBT worse than the recency baseline -> gate fails
    bad = retrain(
        spark,
        settings,
        RetrainOptions(
            as_of=as_of,
            models=("churn",),
            **(SMALL | {"churn": ChurnParams(max_iter=3, max_depth=3, invert_labels=True)}),
        ),
    )["churn"]
    assert bad["version"] != good
    assert not bad["gate"]["passed"] and not bad["promoted"]
    assert registry.current_version(settings, "churn") == good
    assert registry.read_meta(settings, "churn", bad["version"])["promoted"] is False

"""The whole loop on a real broker: backfill, retrain, stream, replay, retrain mid-stream.

After the replay, the serving view equals the batch features as of the view's ``as_of``
(computed from the lake) joined with the CURRENT model outputs, and the churn model
promoted while the stream was running is the one the view uses, with no restart.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import pytest
from pyspark.ml import PipelineModel
from pyspark.ml.functions import vector_to_array
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from features.customer import compute_features
from pulse.cli import main as pulse_main
from pulse.demo import _date_range, write_backfill
from storage import registry, snapshots


def _cli(settings) -> list[str]:
    return [
        sys.executable, "-m", "pulse.cli", "--data-root", str(settings.data_root),
        "--bootstrap", settings.kafka_bootstrap, "--topic", settings.topic_transactions,
    ]  # fmt: skip


def _flags(settings) -> list[str]:
    return _cli(settings)[3:]


def _view_state(settings) -> tuple[date | None, str | None]:
    """(as_of date, churn model version) of the current view snapshot."""
    import pyarrow.dataset as ds

    path = snapshots.current(settings.serving_dir)
    if path is None:
        return None, None
    try:
        t = ds.dataset(str(path), format="parquet", exclude_invalid_files=True).to_table(
            columns=["as_of", "churn_model_version"]
        )
    except (FileNotFoundError, OSError):
        return None, None
    if t.num_rows == 0:
        return None, None
    return t["as_of"][0].as_py().date(), t["churn_model_version"][0].as_py()


def _wait_view(settings, stream, as_of: date, churn_version: str, timeout: float = 420) -> None:
    deadline = time.monotonic() + timeout
    seen = (None, None)
    while time.monotonic() < deadline:
        assert stream.poll() is None, "the stream process exited"
        seen = _view_state(settings)
        if seen[0] is not None and seen[0] >= as_of and seen[1] == churn_version:
            return
        time.sleep(1)
    raise AssertionError(f"view never reached {as_of} with churn {churn_version}; saw {seen}")


def _retrain(spark, settings, models):
    from batch.params import ChurnParams, RecParams
    from batch.retrain import RetrainOptions, retrain

    opts = RetrainOptions(
        models=models,
        rec=RecParams(rank=4, max_iter=3),
        churn=ChurnParams(max_iter=5, max_depth=3),
        k_min=3,
        k_max=4,
        progress=False,
    )
    run = retrain(spark, settings, opts)
    for name, meta in run.items():
        # The gate has its own test (tests/spark/test_batch_retrain.py); here a tiny retrain
        # must be served.
        if registry.current_version(settings, name) != meta["version"]:
            registry.promote(settings, name, meta["version"])
    return {name: meta["version"] for name, meta in run.items()}


@pytest.mark.timeout(2400)  # three Spark jobs and a streaming process on a shared 2-core box
def test_end_to_end(spark, kafka_settings, topic, tmp_path: Path):
    from producers.generator import generate

    settings = kafka_settings.model_copy(
        update={"topic_transactions": topic, "data_root": tmp_path / "root"}
    )
    gen = tmp_path / "gen"
    generate(gen, customers=500, articles=80, start=date(2020, 1, 1), days=240, seed=5,
             progress=False)  # fmt: skip
    first, last = _date_range(gen)
    split = last - timedelta(days=19)
    middle = split + timedelta(days=9)

    # Backfill and first retrain, in this process.
    backfill = write_backfill(gen, tmp_path / "backfill", before=split)
    assert pulse_main([*_flags(settings), "ingest", f"synthetic:{backfill}"]) == 0
    v1 = _retrain(spark, settings, ("recommendations", "churn", "segments"))

    env = os.environ | {
        "PULSE_TRIGGER_INTERVAL": "1 second",
        "PULSE_SNAPSHOT_INTERVAL_SECONDS": "0",  # the view follows every batch
        "PULSE_SPARK_SHUFFLE_PARTITIONS": "2",
        "PULSE_SPARK_DRIVER_MEMORY": "1g",
    }
    log = (tmp_path / "stream.log").open("wb")
    stream = subprocess.Popen(
        [*_cli(settings), "stream"], env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        # History and the first part of the "live" period, then the view uses v1.
        spec = f"synthetic:{gen}"
        assert pulse_main([*_flags(settings), "produce", spec, "--end", middle.isoformat()]) == 0
        _wait_view(settings, stream, middle, v1["churn"])

        # A retrain while the stream runs: the next publish must use it, same process.
        v2 = _retrain(spark, settings, ("churn",))
        assert v2["churn"] != v1["churn"]
        start = (middle + timedelta(days=1)).isoformat()
        assert pulse_main([*_flags(settings), "produce", spec, "--start", start]) == 0
        _wait_view(settings, stream, last, v2["churn"])
    finally:
        if stream.poll() is None:
            os.killpg(stream.pid, signal.SIGINT)
            try:
                stream.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(stream.pid, signal.SIGKILL)
                stream.wait()
        log.close()

    view = spark.read.parquet(str(snapshots.current(settings.serving_dir)))
    as_of = view.agg(F.max("as_of")).first()[0]
    assert as_of.date() == last

    # 1. Live features == batch features over the lake as of the same T.
    from storage.lake import read_lake

    lake = read_lake(spark, settings)  # ingested + streamed events, deduplicated by event_id
    batch_features = compute_features(lake, as_of)
    assertDataFrameEqual(view.select(*batch_features.columns), batch_features)

    # 2. Segments and recommendations: the CURRENT tables for the customers they hold;
    #    customers first seen after that retrain get the saved KMeans model applied to
    #    their features, and the popularity list saved with the recommendations.
    import json

    seg_v = registry.current_version(settings, "segments")
    segments = spark.read.parquet(str(registry.output_path(settings, "segments", seg_v)))
    table_seg = batch_features.join(segments.select("customer_id", "segment_name"), "customer_id")
    unseen = batch_features.join(segments.select("customer_id"), "customer_id", "left_anti")
    assert unseen.count() > 0  # the generator adds customers during the streamed period
    seg_dir = registry.model_dir(settings, "segments", seg_v)
    names = json.loads((seg_dir / registry.SEGMENT_NAMES_FILE).read_text())
    kmeans = PipelineModel.load(str(registry.model_path(settings, "segments", seg_v)))
    name_of = F.create_map(*[F.lit(x) for k, v in names.items() for x in (int(k), v)])
    model_seg = kmeans.transform(unseen).select(
        "customer_id", name_of[F.col("prediction").cast("int")].alias("segment_name")
    )
    expected_seg = table_seg.select("customer_id", "segment_name").unionByName(model_seg)
    assertDataFrameEqual(view.select("customer_id", "segment_name"), expected_seg)
    assert view.where(F.col("segment_name").isNull()).count() == 0

    recs_v = registry.current_version(settings, "recommendations")
    recs = spark.read.parquet(str(registry.output_path(settings, "recommendations", recs_v)))
    served = view.select(
        "customer_id", F.posexplode("recommendations").alias("pos", "article_id")
    ).select("customer_id", (F.col("pos") + 1).alias("rank"), "article_id")
    known = recs.join(batch_features.select("customer_id"), "customer_id")
    recs_dir = registry.model_dir(settings, "recommendations", recs_v)
    popular = json.loads((recs_dir / registry.POPULAR_FILE).read_text())["articles"]
    no_recs = batch_features.select("customer_id").join(recs, "customer_id", "left_anti")
    fallback = no_recs.crossJoin(
        spark.createDataFrame(list(enumerate(popular, 1)), "rank int, article_id string")
    )
    assertDataFrameEqual(
        served, known.select("customer_id", "rank", "article_id").unionByName(fallback)
    )

    # 3. Churn: the CURRENT (mid-stream) model applied to the batch features + attributes.
    from features.attributes import with_customer_attributes
    from storage.lake import read_customers

    churn_v = registry.current_version(settings, "churn")
    assert churn_v == v2["churn"]
    model = PipelineModel.load(str(registry.model_path(settings, "churn", churn_v)))
    scored = model.transform(
        with_customer_attributes(batch_features, read_customers(spark, settings))
    )
    expected_churn = scored.select(
        "customer_id", vector_to_array("probability")[1].alias("churn_probability")
    ).withColumn("churn_model_version", F.lit(churn_v))
    assertDataFrameEqual(
        view.select("customer_id", "churn_probability", "churn_model_version"),
        expected_churn,
        rtol=1e-9,
    )

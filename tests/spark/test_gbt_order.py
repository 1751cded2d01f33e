"""The free-GBT churn baseline does not depend on how its rows happen to be partitioned."""

from __future__ import annotations

import random

from pyspark.ml.functions import vector_to_array
from pyspark.sql import functions as F

from batch.churn import NUMERIC, build_pipeline
from batch.frames import in_fixed_order
from batch.params import ChurnParams


def test_free_gbt_is_the_same_from_any_partitioning(spark) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(8)
    cols = ["customer_id", "label", *NUMERIC, "club_member_status", "fashion_news_frequency"]
    rows = []
    for i in range(3000):
        recency = rng.randint(0, 400)
        label = float(rng.random() < min(0.95, recency / 300))
        rows.append(
            (f"c{i:05d}", label, *[float(rng.randint(0, 50)) for _ in NUMERIC[:-1]], 1.0,
             "ACTIVE", "NONE")
        )  # fmt: skip
    base = spark.createDataFrame(rows, cols)
    params = ChurnParams(max_iter=5, max_depth=3)
    scores = []
    for frame in (base.coalesce(1), base.repartition(7).orderBy(F.rand(2))):
        model = build_pipeline(params).fit(in_fixed_order(frame))
        p = model.transform(base).select(
            "customer_id", vector_to_array("probability")[1].alias("p")
        )
        scores.append(sorted(p.collect()))
    assert scores[0] == scores[1]

"""Bad records never stop the stream: produced = accepted + quarantined."""

from __future__ import annotations

import json

from pyspark.sql import functions as F
from stream_helpers import event

from schemas.transaction import encode
from storage import snapshots
from streaming.job import run


def test_one_percent_bad_records_are_quarantined(spark, stream_settings, file_topic) -> None:  # type: ignore[no-untyped-def]
    settings = stream_settings
    # In event-time order, so no event is beyond the allowed lateness.
    good = [
        event(f"c{i % 37}", f"2020-09-{1 + i * 28 // 495:02d}", 1.0 + i % 5, n=i)
        for i in range(495)
    ]
    negative = json.loads(encode(event("c1", "2020-09-02", 3.0, n=999)))
    negative["unit_price"] = -3.0
    wrong_type = json.loads(encode(event("c2", "2020-09-02", 3.0, n=998)))
    wrong_type["quantity"] = "one"
    bad = {
        b"{not json": "malformed JSON: JSONDecodeError",
        json.dumps(negative).encode(): "unit_price: is negative",
        json.dumps(wrong_type).encode(): "quantity: wrong type str, expected int",
        b"[1, 2, 3]": "not a JSON object (list)",
        encode({**event("c3", "2020-09-03", 1.0), "source": "ebay"}): (
            "source: is not one of hm, online_retail, synthetic, amazon"
        ),
    }
    # Bad records in the middle of the good ones, not at the end.
    file_topic.send(good[:200] + list(bad) + good[200:], per_file=150)

    run(spark, settings, until_idle=True, log=lambda _: None, raw=file_topic.stream(spark))

    lake = spark.read.parquet(str(settings.lake_dir))
    quarantine = spark.read.parquet(str(settings.quarantine_dir))
    assert lake.count() + quarantine.count() == len(good) + len(bad)
    assert lake.count() == len(good)
    got = {bytes(r["value"]): r["reason"] for r in quarantine.collect()}
    assert got == bad
    assert quarantine.where(F.col("topic") == file_topic.name).count() == len(bad)
    assert quarantine.select("partition", "offset").distinct().count() == len(bad)
    # The valid events after the bad ones reached the features too.
    features = spark.read.parquet(str(snapshots.current(settings.features_dir)))
    assert features.agg(F.sum("n_events")).first()[0] == len(good)

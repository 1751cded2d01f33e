"""The lambda correction: the batch layer's state supersedes the stream's up to its cutoff.

An event beyond the allowed lateness is kept in the lake but not counted by the stream;
after a retrain writes the lake's state, the next micro-batch takes it, and the live
view (features snapshot and online-store look-up) equals the batch computation over
every event, the late one included.
"""

from __future__ import annotations

from datetime import date

from pyspark.testing import assertDataFrameEqual
from stream_helpers import event

from batch.correction import write_state
from features.customer import compute_features
from schemas.transaction import FIELD_NAMES, spark_schema
from serving import read
from serving.live import LiveView
from storage import snapshots
from storage.lake import read_lake
from streaming.job import run

BEFORE = [
    event("c1", "2020-09-01", 10.0),
    event("c2", "2020-09-02", 7.5),
    event("c3", "2020-09-10T12:00", 3.0),  # the stream clock: Sep 10
]
TOO_LATE = event("c1", "2020-09-03", 4.0, n=1)  # 7 days behind the clock, lateness 3
AFTER = [event("c2", "2020-09-11", 6.0, n=2), event("c4", "2020-09-11T08:00", 1.0)]


def _df(spark, events):  # type: ignore[no-untyped-def]
    return spark.createDataFrame([tuple(e[n] for n in FIELD_NAMES) for e in events], spark_schema())


def test_a_retrain_brings_a_too_late_event_into_the_live_view(
    spark, stream_settings, file_topic
) -> None:  # type: ignore[no-untyped-def]
    settings = stream_settings
    logs: list[str] = []
    live = LiveView(settings, log=logs.append)

    def stream() -> None:
        run(spark, settings, until_idle=True, log=logs.append, sink=live,
            raw=file_topic.stream(spark))  # fmt: skip

    file_topic.send(BEFORE, per_file=3)
    file_topic.send([TOO_LATE], per_file=1)
    stream()
    assert any("1 beyond the allowed lateness" in line for line in logs), logs
    assert read.lookup(settings, "c1")["n_events"] == 1  # the late event is in the lake only
    assert read_lake(spark, settings).count() == 4

    # The retrain's state before Sep 11, from the lake; then Sep 11 streams in.
    write_state(settings, read_lake(spark, settings), date(2020, 9, 11), "v1")
    file_topic.send(AFTER, per_file=2)
    stream()
    assert any("batch state v1 taken" in line for line in logs), logs

    everything = [*BEFORE, TOO_LATE, *AFTER]
    as_of = max(e["event_time"] for e in everything)
    expected = compute_features(_df(spark, everything), as_of)
    published = spark.read.parquet(str(snapshots.current(settings.features_dir)))
    assertDataFrameEqual(published, expected)
    c1 = read.lookup(settings, "c1")
    assert (c1["n_events"], c1["monetary"], c1["frequency"]) == (2, 14.0, 2)
    assert read.lookup(settings, "c2")["n_events"] == 2  # the stream's Sep 11 on top
    live.close()

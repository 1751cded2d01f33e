"""A batch Spark has committed but the job had not processed is not lost: the inbox.

The job returns from ``foreachBatch`` once a batch's records are in its inbox, so Spark
commits the batch while the worker thread is still on it. Here the worker fails on one
batch (as if the process died there); the restart processes what the inbox kept and
ends with what an uninterrupted run gives.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual
from stream_helpers import event

from features.customer import compute_features
from runtime.errors import PulseError
from schemas.transaction import FIELD_NAMES, spark_schema
from storage import snapshots
from streaming import job as job_mod
from streaming.inbox import Inbox
from streaming.job import run

EVENTS = [
    event("c1", "2020-09-01", 10.0),
    event("c2", "2020-09-02", 7.5, n=1),
    event("c1", "2020-09-03", 20.0),
    event("c3", "2020-09-04", 4.0),
    event("c2", "2020-09-05", 6.0, n=3),
    event("c4", "2020-09-06", 1.0),
    event("c1", "2020-09-07", 3.0, n=2),
    event("c5", "2020-09-08", 9.0),
]


def _committed(checkpoint: Path) -> list[int]:
    return sorted(int(p.name) for p in (checkpoint / "stream" / "commits").glob("[0-9]*"))


@pytest.mark.parametrize("late_monitor", [False, True], ids=["monitor-first", "query-fails-first"])
def test_a_committed_batch_left_in_the_inbox_is_processed_on_restart(
    spark, stream_settings, file_topic, monkeypatch, late_monitor
) -> None:  # type: ignore[no-untyped-def]
    """Batch 1 fails in the worker; a restart processes what the inbox kept. With
    ``late_monitor`` the monitor starts polling 8 s late, so Spark hands over batch 2,
    whose foreachBatch raises the worker's failure and fails the query first: the run
    must still report the worker's error, not the query's (a loaded CI machine once got
    that order by chance)."""
    file_topic.send(EVENTS, per_file=2)  # four batches: 0..3
    real = job_mod.process_batch

    def dies_on_batch_1(settings, store, spark_, kafka, batch_id):  # type: ignore[no-untyped-def]
        if batch_id == 1:
            raise RuntimeError("killed while processing batch 1")
        return real(settings, store, spark_, kafka, batch_id)

    monkeypatch.setattr(job_mod, "process_batch", dies_on_batch_1)
    if late_monitor:
        real_monitor = job_mod.monitor

        def monitor_late(*args, **kwargs):  # type: ignore[no-untyped-def]  # noqa: ANN002, ANN003, ANN202
            time.sleep(8)
            return real_monitor(*args, **kwargs)

        monkeypatch.setattr(job_mod, "monitor", monitor_late)
    raw = file_topic.stream(spark)
    with pytest.raises(PulseError, match="killed while processing batch 1"):
        run(spark, stream_settings, until_idle=True, log=lambda _: None, raw=raw)

    # Spark went on and committed batch 1 (and maybe the next): only the inbox has them.
    inbox = Inbox(stream_settings.state_dir / "inbox")
    left = inbox.pending()
    assert left[0] == 1, left
    assert 1 in _committed(stream_settings.checkpoint_dir)
    assert inbox.get(1).num_rows == 2

    monkeypatch.setattr(job_mod, "process_batch", real)
    logs: list[str] = []
    run(spark, stream_settings, until_idle=True, log=logs.append, raw=file_topic.stream(spark))
    assert any(f"recovered {len(left)} batch(es)" in line for line in logs), logs
    assert inbox.pending() == []

    # Exactly what an uninterrupted run gives: the features and the lake.
    events_df = spark.createDataFrame(
        [tuple(e[n] for n in FIELD_NAMES) for e in EVENTS], spark_schema()
    )
    as_of = max(e["event_time"] for e in EVENTS)
    published = snapshots.current(stream_settings.features_dir)
    assert published is not None
    assertDataFrameEqual(spark.read.parquet(str(published)), compute_features(events_df, as_of))
    lake = spark.read.parquet(str(stream_settings.lake_dir))
    assert sorted(r[0] for r in lake.select("event_id").collect()) == sorted(
        e["event_id"] for e in EVENTS
    )
    assert lake.groupBy("event_id").count().where(F.col("count") > 1).count() == 0

"""The real job writes the lake through the write protocol: a late re-send lands once."""

from __future__ import annotations

from stream_helpers import event

from storage import columnar_store, lake
from streaming.job import run


def test_a_resend_outside_the_streams_window_lands_in_the_lake_once(
    spark, stream_settings, file_topic, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    # The state remembers an old id for an hour after it arrived; make that hour pass.
    monkeypatch.setattr(columnar_store, "RESEND_WINDOW_US", 0)
    first = event("c1", "2020-09-01", 10.0)
    later = event("c2", "2020-09-20", 5.0)  # moves the stream clock 19 days on
    # The re-send is beyond the allowed lateness: the stream's state does not count it
    # (nor remember it), so only the lake's write protocol can keep it single.
    file_topic.send([first], per_file=1)
    file_topic.send([later], per_file=1)
    file_topic.send([first], per_file=1)
    logs: list[str] = []
    run(spark, stream_settings, until_idle=True, log=logs.append, raw=file_topic.stream(spark))
    assert any("1 beyond the allowed lateness" in line for line in logs), logs

    got = lake.read_lake(spark, stream_settings)
    assert sorted(r.event_id for r in got.collect()) == sorted(
        [first["event_id"], later["event_id"]]
    )
    # And a plain Parquet read of the folder agrees (no file outside the log).
    plain = spark.read.parquet(str(stream_settings.lake_dir))
    assert plain.count() == 2

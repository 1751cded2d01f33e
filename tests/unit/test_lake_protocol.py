"""The lake's write protocol (storage.lake): each event once, whatever writes it when.

Small inputs a reader can check by hand: events ``e1..e9`` on a few January days.
The lake is read here the way every reader reads it: the live files of one Delta log
version, with no deduplication.
"""

from __future__ import annotations

import contextlib
import random
import threading
from datetime import UTC, date, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.ingest import append_new
from storage import lake


def ev(n: int, day: int, customer: str = "c1", price: float = 1.0) -> dict:  # type: ignore[type-arg]
    when = datetime(2020, 1, day, 12, tzinfo=UTC)
    return {
        "event_id": f"e{n}",
        "event_time": when,
        "customer_id": customer,
        "article_id": f"a{n}",
        "quantity": 1,
        "unit_price": price,
        "sales_channel_id": 1,
        "source": "synthetic",
        "produced_at": when,
    }


def table(*events: dict) -> pa.Table:  # type: ignore[type-arg]
    return pa.Table.from_pylist(list(events), schema=lake.EVENT_ARROW_SCHEMA)


def lake_ids(settings, version: int | None = None) -> list[str]:  # type: ignore[no-untyped-def]
    """Every event id a plain read of one version returns, sorted (repeats kept)."""
    files = lake.live_files(settings, version=version)
    if not files:
        return []
    return sorted(pq.ParquetDataset(files).read(columns=["event_id"])["event_id"].to_pylist())


def lake_rows_of(settings) -> list[dict]:  # type: ignore[no-untyped-def, type-arg]
    files = lake.live_files(settings)
    rows = pq.ParquetDataset(files).read(columns=list(lake.EVENT_ARROW_SCHEMA.names))
    return sorted(rows.to_pylist(), key=lambda r: r["event_id"])


def version(settings) -> int:  # type: ignore[no-untyped-def]
    return int(lake._table(settings).version())


def test_a_resend_outside_the_streams_window_lands_once(settings) -> None:  # type: ignore[no-untyped-def]
    # Batch 0 has e1; batch 9 re-sends it long after, when the stream's state no longer
    # remembers the id (so lake_rows does not drop it): the write protocol does.
    assert lake.write_lake_batch(settings, lake.lake_rows(table(ev(1, 1), ev(2, 1))), 0) == 2
    assert lake.write_lake_batch(settings, lake.lake_rows(table(ev(3, 20))), 1) == 1
    assert lake.write_lake_batch(settings, lake.lake_rows(table(ev(1, 1), ev(4, 21))), 9) == 1
    assert lake_ids(settings) == ["e1", "e2", "e3", "e4"]


def test_repeats_within_one_batch_land_once(settings) -> None:  # type: ignore[no-untyped-def]
    assert lake.write_events(settings, table(ev(1, 1), ev(1, 1), ev(2, 2)), "stream", 0) == 2
    assert lake_ids(settings) == ["e1", "e2"]


def test_ingest_of_a_file_overlapping_streamed_events_lands_each_once(settings) -> None:  # type: ignore[no-untyped-def]
    lake.write_lake_batch(settings, table(ev(2, 2), ev(3, 3)), 0)
    lake.write_lake_batch(settings, table(ev(5, 5)), 1)
    # Ingested events have no producer: produced_at is null.
    file = table(*({**ev(n, n), "produced_at": None} for n in range(1, 7)))
    read, appended = append_new(settings, [file], False)
    assert (read, appended) == (6, 3)  # e1, e4, e6 were new
    assert lake_ids(settings) == ["e1", "e2", "e3", "e4", "e5", "e6"]
    # Ingesting it again adds nothing.
    assert append_new(settings, [file], False) == (6, 0)
    assert lake_ids(settings) == ["e1", "e2", "e3", "e4", "e5", "e6"]


def test_a_replayed_batch_id_writes_nothing_new(settings) -> None:  # type: ignore[no-untyped-def]
    batch = table(ev(1, 1), ev(2, 2))
    assert lake.write_lake_batch(settings, batch, 7) == 2
    files, v = lake.live_files(settings), version(settings)
    assert lake.write_lake_batch(settings, batch, 7) == 0
    assert (lake.live_files(settings), version(settings)) == (files, v)  # not even a commit
    assert lake_ids(settings) == ["e1", "e2"]


def test_a_crash_between_write_and_commit_changes_nothing_and_the_retry_lands_once(
    settings, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    lake.write_lake_batch(settings, table(ev(1, 1)), 0)
    commit = lake._commit

    def crash(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise SystemExit("killed before the commit")

    monkeypatch.setattr(lake, "_commit", crash)
    with pytest.raises(SystemExit):
        lake.write_lake_batch(settings, table(ev(1, 1), ev(2, 1), ev(3, 2)), 1)
    assert lake_ids(settings) == ["e1"]  # the written files are not in the log
    monkeypatch.setattr(lake, "_commit", commit)
    assert lake.write_lake_batch(settings, table(ev(1, 1), ev(2, 1), ev(3, 2)), 1) == 2
    assert lake_ids(settings) == ["e1", "e2", "e3"]
    # The retry rewrote the crashed attempt's files under the same names: nothing is
    # left on disk that the log does not list.
    on_disk = sorted(str(p) for p in settings.lake_dir.glob("event_date=*/*.parquet"))
    assert on_disk == sorted(lake.live_files(settings))


def test_compaction_keeps_every_row_once_and_reduces_the_file_count(settings) -> None:  # type: ignore[no-untyped-def]
    for batch_id, (n, day) in enumerate([(1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (6, 3)]):
        lake.write_lake_batch(settings, table(ev(n, day, price=float(n))), batch_id)
    before = lake_rows_of(settings)
    assert lake.file_count(settings) == 6
    result = lake.compact(settings)
    assert (result.dates, result.files_before, result.files_after) == (2, 5, 2)
    assert lake.file_count(settings) == 3  # one file per event date
    assert lake_rows_of(settings) == before
    assert [r["event_id"] for r in before] == ["e1", "e2", "e3", "e4", "e5", "e6"]
    assert lake.compact(settings).dates == 0  # nothing left to do
    # Files removed by the compaction stay until vacuum, then go.
    assert len(list(settings.lake_dir.glob("event_date=*/*.parquet"))) == 8
    assert lake.vacuum(settings, retention_hours=0) == 5
    assert len(list(settings.lake_dir.glob("event_date=*/*.parquet"))) == 3
    assert lake_rows_of(settings) == before


def test_a_reader_during_compaction_sees_one_consistent_set(settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A reader between the compaction's commits (the lake half compacted) reads every
    event once. The compaction waits after each commit until the reader has read, so
    the reads overlap it for certain: one at every version it writes."""
    expected = []
    for batch_id in range(40):  # 40 batches over 10 days: 4 files a day
        n, day = batch_id, 1 + batch_id % 10
        lake.write_lake_batch(settings, table(ev(n, day)), batch_id)
        expected.append(f"e{n}")
    expected.sort()
    old_version = version(settings)
    seen: dict[int, list[str]] = {}
    want_read, read_done, finished = threading.Event(), threading.Event(), threading.Event()
    real_commit = lake._commit

    def commit_then_let_a_reader_in(*args, **kwargs):  # type: ignore[no-untyped-def]
        real_commit(*args, **kwargs)
        want_read.set()  # a group is committed: read now, while the rest waits
        assert read_done.wait(30)
        read_done.clear()

    def reader() -> None:
        while not finished.is_set():
            if want_read.wait(0.05):
                want_read.clear()
                seen[version(settings)] = lake_ids(settings)
                read_done.set()

    seen[old_version] = lake_ids(settings)  # before the compaction
    monkeypatch.setattr(lake, "_commit", commit_then_let_a_reader_in)
    thread = threading.Thread(target=reader)
    thread.start()
    try:
        lake.compact(settings, dates_per_commit=1)  # ten commits, one per day
    finally:
        finished.set()
        thread.join()
    assert sorted(seen) == list(range(old_version, old_version + 11))  # before, then each
    assert all(ids == expected for ids in seen.values())
    assert lake.file_count(settings) == 10
    # A reader still on the version before the compaction reads the same rows.
    assert lake_ids(settings, version=old_version) == expected


def test_any_interleaving_of_stream_ingest_resends_and_crashes_lands_each_event_once(
    settings, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    events = [ev(n, 1 + n % 6, customer=f"c{n % 4}") for n in range(60)]
    rng = random.Random(14)
    commit = lake._commit

    def crash(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError("killed before the commit")

    for trial in range(5):
        root = settings.data_root / f"trial{trial}"
        s = settings.model_copy(update={"data_root": root})
        writes = []  # (writer, batch id, events): stream batches and ingest chunks
        for batch_id in range(12):
            writes.append(("stream", batch_id, rng.sample(events, 8)))
        for chunk in range(3):
            writes.append((f"ingest-{trial}", chunk, events[chunk * 20 : chunk * 20 + 20]))
        writes += [rng.choice(writes) for _ in range(6)]  # replays / re-sends
        rng.shuffle(writes)
        for writer, batch_id, rows in writes:
            if rng.random() < 0.2:  # crash between the write and the commit, then retry
                monkeypatch.setattr(lake, "_commit", crash)
                with contextlib.suppress(OSError):  # no commit to crash in if nothing is new
                    lake.write_events(s, table(*rows), writer, batch_id)
                monkeypatch.setattr(lake, "_commit", commit)
            lake.write_events(s, table(*rows), writer, batch_id)
        lake.compact(s)
        assert lake_ids(s) == sorted(e["event_id"] for e in events)


def test_a_lake_written_before_the_protocol_is_adopted_and_compaction_dedups_it(settings) -> None:  # type: ignore[no-untyped-def]
    # Two plain Parquet files in one partition, the second repeating e1 (the old writers
    # could do that); no _delta_log.
    part = settings.lake_dir / "event_date=2020-01-01"
    part.mkdir(parents=True)
    pq.write_table(table(ev(1, 1), ev(2, 1)), part / "part-old-0.parquet")
    pq.write_table(table(ev(1, 1)), part / "part-old-1.parquet")
    assert lake.lake_exists(settings)
    assert lake.event_dates(settings) == [date(2020, 1, 1)]
    assert (
        lake.write_lake_batch(settings, table(ev(2, 1), ev(3, 1)), 0) == 1
    )  # adopts, then adds e3
    assert lake_ids(settings) == ["e1", "e1", "e2", "e3"]
    result = lake.compact(settings)
    assert (result.dropped, lake_ids(settings)) == (1, ["e1", "e2", "e3"])


def test_a_writer_that_loses_a_race_reads_the_winners_commit_and_adds_only_the_rest(
    settings, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """Another writer commits between this writer's read and its commit: this commit
    fails (the version is taken), and the retry finds e2 already there."""
    lake.write_events(settings, table(ev(1, 1)), "stream", 0)
    read_ids = lake._ids_in
    raced: list[int] = []

    def read_then_lose_the_race(s, tbl, days):  # type: ignore[no-untyped-def]
        ids = read_ids(s, tbl, days)
        if not raced:  # once: the other writer (an ingest) commits e2 and e3 now
            raced.append(tbl.version())
            assert lake.write_events(settings, table(ev(2, 1), ev(3, 1)), "ingest", 0) == 2
        return ids

    monkeypatch.setattr(lake, "_ids_in", read_then_lose_the_race)
    before = version(settings)
    assert lake.write_events(settings, table(ev(2, 1), ev(4, 1)), "stream", 1) == 1  # e4 only
    assert raced == [before]  # it read the version before the ingest's commit
    assert version(settings) == before + 2  # the ingest's commit, then the retry's
    assert lake_ids(settings) == ["e1", "e2", "e3", "e4"]


def _write_batches(root: str, writer: str, start, batches: list[list[int]]) -> None:  # type: ignore[no-untyped-def]
    from runtime.settings import load_settings

    s = load_settings(data_root=root)
    start.wait()
    for batch_id, ns in enumerate(batches):
        lake.write_events(s, table(*(ev(n, 1 + n % 5) for n in ns)), writer, batch_id)


def test_two_writer_processes_at_once_land_each_event_once(settings) -> None:  # type: ignore[no-untyped-def]
    """Two processes (no lock, no shared memory: only the Delta log) write overlapping
    batches at the same time; every event lands once, and both writers committed."""
    import multiprocessing

    rng = random.Random(29)
    plans = {w: [rng.sample(range(120), 12) for _ in range(25)] for w in ("stream", "ingest")}
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    procs = [
        ctx.Process(target=_write_batches, args=(str(settings.data_root), w, start, plan))
        for w, plan in plans.items()
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    expected = sorted({f"e{n}" for plan in plans.values() for ns in plan for n in ns})
    assert lake_ids(settings) == expected
    writers = {c.get("pulse.writer") for c in lake._table(settings).history()}
    assert {"stream", "ingest"} <= writers

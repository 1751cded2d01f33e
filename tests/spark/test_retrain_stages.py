"""`pulse retrain`'s stage table: each stage in order, with the rows it produced."""

from __future__ import annotations

from datetime import date

from batch_shop import START, TableSource, events_table, shop_rows

from batch.ingest import ingest_source
from batch.retrain import RetrainOptions, StageLog, retrain


def test_the_stage_table_counts_what_each_stage_read_and_wrote(spark, settings) -> None:  # type: ignore[no-untyped-def]
    rows = shop_rows()
    ingest_source(spark, settings, TableSource([events_table(rows)]), progress=False)
    as_of = date(2020, 4, 20)
    cutoff_day = (as_of - START.date()).days  # rows on this day or later are not read
    before = [r for r in rows if r[0] < cutoff_day]
    log = StageLog()
    opts = RetrainOptions(as_of=as_of, models=("segments",), k_min=3, k_max=3, progress=False)
    retrain(spark, settings, opts, log)

    names = [s.name for s in log.stages]
    assert names[:2] == ["read the lake", "customer-day table"]
    assert names[-1] == "customer state for the speed layer"
    assert any(n.startswith("segments: fit") for n in names)
    rows_of = {s.name: s.rows for s in log.stages}
    assert rows_of["read the lake"] == len(before)
    assert rows_of["customer-day table"] == len({(day, c) for day, c, _ in before})
    assert rows_of["customer state for the speed layer"] == 40
    table = log.table()
    assert table[0] == "| stage | seconds | share | rows |"
    assert table[-1].startswith("| total |")
    assert f"| {len(before):,} |" in table[2]  # the lake read's row count, as printed

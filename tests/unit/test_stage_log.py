"""`pulse retrain`'s stage table: each stage's seconds are its block's, on a fake clock."""

from __future__ import annotations

import pytest

from batch import context
from batch.context import StageLog


def test_each_stage_is_timed_by_its_own_block_and_shares_add_up(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    ticks = iter([10.0, 12.5, 12.5, 20.0])  # A runs 2.5 s, B 7.5 s
    monkeypatch.setattr(context.time, "perf_counter", lambda: next(ticks))
    log = StageLog()
    with log.stage("A") as a:
        a.rows = 1234
    with pytest.raises(RuntimeError), log.stage("B"):
        raise RuntimeError("a failed stage is still timed")
    assert [(s.name, s.seconds, s.rows) for s in log.stages] == [("A", 2.5, 1234), ("B", 7.5, None)]
    assert log.total() == 10.0
    assert log.table() == [
        "| stage | seconds | share | rows |",
        "|---|---|---|---|",
        "| A | 2.5 | 25% | 1,234 |",
        "| B | 7.5 | 75% |  |",
        "| total | 10.0 | 100% | |",
    ]

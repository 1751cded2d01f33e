"""The fault campaign's fast subset: one stream kill, one broker restart, 10 % bad records.

Each runs the same case code as `pulse chaos` (real KRaft brokers from the jars,
`pulse stream` child processes, the replay producer), at small sizes. The inputs are
generated rows with known ids (``chaos<seed>-<row>``) and bad records whose kinds
follow from (seed, row) alone, so every expected count below is worked out here,
independently of the stream. The full campaign is `pulse chaos`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fault_helpers import fault_context

from producers.bad_records import BAD_KINDS, DATED_KINDS, bad_kind_for_row, bad_record
from pulse.chaos import cases, lab
from schemas.transaction import AHEAD_OF_PRODUCER, parse_timestamp, validate

EVENTS = 3000


@pytest.fixture
def ctx(jvm_settings, spark, campaign_models, tmp_path: Path) -> cases.Context:  # type: ignore[no-untyped-def]
    context = fault_context(jvm_settings, spark, tmp_path, EVENTS, seed=7)
    context._models = campaign_models
    return context


def _no_loss(result: cases.CaseResult, valid: int) -> None:
    assert result.error is None, result.error
    assert result.lost == 0 and result.doubled == 0, result.notes
    assert result.in_lake == valid  # each valid event exactly once
    assert result.served_equal is True, result.notes
    assert result.ok


def test_dated_kinds_are_what_they_say() -> None:
    event = {
        "event_id": "e1", "event_time": parse_timestamp("2020-06-01T10:00:00Z"),
        "customer_id": "c1", "article_id": "a1", "quantity": 1, "unit_price": 2.5,
        "sales_channel_id": 1, "source": "synthetic",
    }  # fmt: skip
    future = json.loads(bad_record(event, "future"))
    assert future["event_id"] == "e1-dated-future"
    assert validate(future) == AHEAD_OF_PRODUCER
    past = json.loads(bad_record(event, "far_past"))
    assert past["event_id"] == "e1-dated-far_past"
    assert validate(past) is None  # valid: the lake keeps it
    assert parse_timestamp(past["event_time"]).year == 2010
    kinds = BAD_KINDS + DATED_KINDS
    drawn = {bad_kind_for_row(r, 0.5, seed=3, kinds=kinds) for r in range(2000)}
    assert drawn == set(kinds) | {None}


def test_stream_sigkilled_mid_replay_and_restarted(ctx: cases.Context) -> None:
    result = cases.stream_kills(ctx)
    _no_loss(result, EVENTS)
    assert result.produced == EVENTS and result.quarantined == 0
    facts = result.details
    assert facts["kills"] == 1 and facts["starts"] == 2
    # killed after it had read some records and before the end: really mid-run
    assert 0 < facts["killed_at_records_read"][0] < EVENTS


def test_broker_sigkilled_and_restarted(ctx: cases.Context) -> None:
    n = ctx.small
    result = cases.broker_kill(ctx)
    _no_loss(result, n)
    assert result.produced == n
    assert result.details["stream_carried_on"] is True
    assert 0 < result.details["killed_at_records_read"] < n


def test_ten_percent_bad_records(ctx: cases.Context) -> None:
    n = ctx.small
    kinds = BAD_KINDS + DATED_KINDS
    planned = [bad_kind_for_row(r, 0.10, ctx.seed, kinds) for r in range(n)]
    injected = {k: planned.count(k) for k in kinds if planned.count(k)}
    far_past = injected.get("far_past", 0)
    with lab.local_broker(ctx.base, ctx.root / "broker", ctx.log) as kafka:
        result = cases.bad_records_at(ctx, kafka, "bad10", 0.10)
    _no_loss(result, n + far_past)
    assert result.details["injected"] == injected
    assert result.produced == n + sum(injected.values())
    assert result.quarantined == sum(injected.values()) - far_past
    assert result.produced == result.accepted + result.quarantined
    for kind in cases.EXPECTED_REASON:
        assert result.details["quarantined_by_kind"].get(kind, 0) == injected.get(kind, 0), kind


def test_cluster_figures_compare_to_the_last_digits_only() -> None:
    from pulse.chaos.cases import same_figures

    # a silhouette summed in another order on the cluster: its 16th digit differs
    local = {"silhouette_by_k": {"5": 0.4456346206265611}, "k": 4, "rows": [1.0, 2.0]}
    cluster = {"silhouette_by_k": {"5": 0.4456346206265613}, "k": 4, "rows": [1.0, 2.0]}
    assert same_figures(local, cluster)
    assert not same_figures(local, cluster | {"k": 3})
    assert not same_figures({"auc": 0.85583}, {"auc": 0.85584})
    assert not same_figures([1.0], [1.0, 2.0])


def test_cluster_tables_compare_floats_to_the_last_digits_only() -> None:
    import pyarrow as pa

    from pulse.chaos.cases import compare_tables

    local = pa.table({"id": ["a", "b", "c"], "p": [0.5, 0.25, None]})
    # churn probabilities fitted on the cluster differed by 1.1e-15
    assert (
        compare_tables(
            "churn", local, pa.table({"id": ["a", "b", "c"], "p": [0.5 + 1.1e-15, 0.25, None]})
        )
        is None
    )
    moved = compare_tables(
        "churn", local, pa.table({"id": ["a", "b", "c"], "p": [0.5, 0.2501, None]})
    )
    assert moved is not None and "p (1 rows" in moved
    assert (
        compare_tables("churn", local, pa.table({"id": ["a", "b", "c"], "p": [0.5, 0.25, 0.1]}))
        is not None
    )
    assert (
        compare_tables("churn", local, pa.table({"id": ["a", "x", "c"], "p": [0.5, 0.25, None]}))
        is not None
    )

"""The replay producer's pure parts: pacing, confirmed prefix, position file, bad records."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from producers.replay import (
    BAD_KINDS,
    ConfirmedPrefix,
    Pacing,
    TimestampText,
    bad_kind_for_row,
    bad_record,
    load_position,
    position_path,
    save_position,
)
from pulse.bench.producer import parse_producer_performance
from runtime.errors import PulseError
from schemas.transaction import (
    ContractError,
    decode,
    encode,
    format_timestamp,
    make_event_id,
    now_utc,
    parse_timestamp,
)

pytestmark = pytest.mark.unit

T0 = datetime(2020, 9, 20, tzinfo=UTC)
EVENT = {
    "event_id": make_event_id("synthetic", "row", 0),
    "event_time": T0,
    "customer_id": "c1",
    "article_id": "0108775015",
    "quantity": 1,
    "unit_price": 0.0254,
    "sales_channel_id": 2,
    "source": "synthetic",
    "produced_at": T0,
}


def test_speedup_maps_simulated_time_to_wall_time():
    pacing = Pacing(speedup=86400)  # one simulated day per wall second
    assert pacing.due(0, T0, T0) == 0.0
    assert pacing.due(5, T0 + timedelta(days=2), T0) == 2.0
    assert pacing.due(9, T0 + timedelta(hours=6), T0) == 0.25


def test_rate_spaces_events_evenly_and_max_never_waits():
    assert Pacing(rate=100).due(250, T0 + timedelta(days=9), T0) == 2.5
    assert Pacing().due(10**6, T0 + timedelta(days=9), T0) == 0.0


@pytest.mark.parametrize("kwargs", [{"speedup": 0}, {"rate": -1}, {"speedup": 2, "rate": 3}])
def test_bad_pacing_is_a_clear_error(kwargs):
    with pytest.raises(PulseError):
        Pacing(**kwargs)


def test_confirmed_prefix_advances_only_over_a_gap_free_run():
    prefix = ConfirmedPrefix(start=10)
    for row in (10, 11, 13):
        prefix.expect(row)
    prefix.expect(12, records=2)  # row 12 also carries an injected bad record
    prefix.delivered(11)  # another partition answered first
    assert prefix.rows == 10
    prefix.delivered(10)
    assert prefix.rows == 12  # 10 and 11 confirmed
    prefix.delivered(13)
    prefix.delivered(12)
    assert prefix.rows == 12  # one of row 12's two records is still outstanding
    prefix.delivered(12)
    assert prefix.rows == 14


def test_a_failed_row_is_never_confirmed():
    prefix = ConfirmedPrefix()
    for row in range(3):
        prefix.expect(row)
    prefix.delivered(0)
    prefix.delivered(2)  # row 1 failed: no report of success ever comes
    assert prefix.rows == 1


def test_position_round_trips_through_a_durable_file(tmp_path, settings):
    identity = {"source": "hm", "path": "/x", "topic": "t"}
    path = position_path(settings, identity)
    assert path.parent == settings.data_root / "producer"
    assert load_position(path) == 0  # nothing saved yet: start at row 0
    save_position(path, 1234, identity)
    assert load_position(path) == 1234
    assert json.loads(path.read_text())["last_confirmed_row"] == 1233
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left
    other = position_path(settings, {**identity, "topic": "u"})
    assert other != path  # another topic is another replay


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_every_bad_record_kind_breaks_the_contract(kind):
    raw = bad_record(EVENT, kind)
    with pytest.raises(ContractError):
        decode(raw)
    assert decode(encode(EVENT))["event_id"] == EVENT["event_id"]  # the original is valid


def test_bad_records_are_deterministic_and_near_the_fraction():
    kinds = [bad_kind_for_row(row, 0.1, seed=7) for row in range(5000)]
    assert kinds == [bad_kind_for_row(row, 0.1, seed=7) for row in range(5000)]
    n_bad = sum(k is not None for k in kinds)
    assert 400 < n_bad < 600
    assert {k for k in kinds if k} == set(BAD_KINDS)
    assert all(bad_kind_for_row(row, 0.0, seed=7) is None for row in range(100))


def test_producer_performance_final_line_is_parsed():
    output = (
        "499901 records sent, 99960.2 records/sec (26.69 MB/sec), 512.3 ms avg latency, "
        "900.0 ms max latency.\n"
        "1000000 records sent, 250000.0 records/sec (66.76 MB/sec), 402.15 ms avg latency, "
        "1021.00 ms max latency, 380 ms 50th, 700 ms 95th, 900 ms 99th, 1000 ms 99.9th.\n"
    )
    result = parse_producer_performance(output)
    assert result.records == 1_000_000
    assert result.records_per_s == 250000.0
    assert result.mb_per_s == pytest.approx(66.76 * 1.048576)


def test_remembered_timestamp_text_matches_the_contract_format():
    stamps = TimestampText()
    later = T0 + timedelta(hours=13, milliseconds=250)
    assert stamps.event_time(T0) == format_timestamp(T0) == "2020-09-20T00:00:00Z"
    assert stamps.event_time(later) == "2020-09-20T13:00:00.250Z"
    assert stamps.event_time(T0) == "2020-09-20T00:00:00Z"  # not stuck on the last value
    before = now_utc()
    produced = parse_timestamp(stamps.produced_at())
    after = now_utc()
    assert before - timedelta(milliseconds=1) < produced <= after

"""The replay producer's pure parts: pacing, confirmed prefix, position file, bad records."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from producers.adapters import ARROW_SCHEMA
from producers.replay import (
    BAD_KINDS,
    ConfirmedPrefix,
    Pacing,
    TimestampText,
    bad_kind_for_row,
    bad_record,
    close_body,
    encode_bodies,
    event_keys,
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


def test_the_closing_of_a_body_is_produced_at_to_the_millisecond():
    stamps = TimestampText()
    ms = int(T0.timestamp()) * 1000 + 1250  # 1.25 s after T0
    assert stamps.produced_at_ms(ms) == "2020-09-20T00:00:01.250Z"
    assert stamps.produced_at_ms(ms - 250) == "2020-09-20T00:00:01Z"
    assert stamps.closing(ms) == b',"produced_at":"2020-09-20T00:00:01.250Z"}'
    assert close_body(b'{"a":1', "x") == b'{"a":1,"produced_at":"x"}'


# Rows a reader can check by hand: every column kind, the values the contract cares
# about and the ones JSON escapes. Some rows break the contract on purpose (a null
# customer_id, a NaN price): the batch encoder must write them exactly as encode does.
ROWS = [
    EVENT,
    {
        **EVENT,
        "event_id": make_event_id("hm", "row", 1),
        "event_time": T0 + timedelta(hours=13, milliseconds=250),
        "customer_id": "Zoë 日本 ✓",  # non-ASCII stays as UTF-8, not \u escapes
        "article_id": "0000000001",  # leading zeros kept: a string
        "quantity": -3,  # a return
        "unit_price": 1e-05,  # Python writes 1e-05
        "sales_channel_id": None,  # the one nullable field: written as null
        "source": "online_retail",
        "produced_at": None,
    },
    {
        **EVENT,
        "event_id": 'quote " backslash \\ newline \n tab \t bell \x07',
        "customer_id": None,  # null: encode leaves the field out
        "unit_price": 100.0,
        "sales_channel_id": 1,
    },
    {**EVENT, "event_id": "e4", "unit_price": 0.1 + 0.2, "quantity": 2**31 - 1},
    {**EVENT, "event_id": "e5", "unit_price": float("nan"), "source": None},
    {**EVENT, "event_id": "e6", "unit_price": -0.0, "article_id": ""},
    {**EVENT, "event_id": "e7", "unit_price": 1e16, "customer_id": "c1"},
]


def per_row(event: dict, produced_at: datetime) -> bytes:
    """The old path: one event, one dict, one json.dumps."""
    wire = {**event, "event_time": format_timestamp(event["event_time"])}
    wire["produced_at"] = format_timestamp(produced_at)
    return encode(wire)


def decoded_or_reason(raw: bytes):
    try:
        return decode(raw)
    except ContractError as exc:
        return exc.reason


def test_batch_encoder_writes_the_same_bytes_and_events_as_the_per_row_path():
    table = pa.Table.from_pylist(ROWS, schema=ARROW_SCHEMA)
    produced = T0 + timedelta(days=3, milliseconds=7)
    closing = TimestampText().closing(int(produced.timestamp() * 1000))
    batch = [body + closing for body in encode_bodies(table)]
    old = [per_row(row, produced) for row in table.to_pylist()]
    assert batch == old
    decoded = [decoded_or_reason(raw) for raw in batch]
    assert decoded == [decoded_or_reason(raw) for raw in old]
    first, second, third = decoded[:3]
    assert first == {**EVENT, "produced_at": produced}
    assert second["article_id"] == "0000000001" and second["quantity"] == -3
    assert second["customer_id"] == "Zoë 日本 ✓" and second["sales_channel_id"] is None
    assert "Zoë 日本 ✓".encode() in batch[1]
    assert third == "customer_id: missing"
    assert decoded[4] == "unit_price: not a finite number"


def test_batch_encoder_agrees_on_any_slice_and_chunking():
    table = pa.Table.from_pylist(ROWS, schema=ARROW_SCHEMA)
    whole = encode_bodies(table)
    for lo in range(len(ROWS)):
        for hi in range(lo, len(ROWS) + 1):
            assert encode_bodies(table.slice(lo, hi - lo)) == whole[lo:hi]
    chunked = pa.concat_tables([table.slice(0, 2), table.slice(2)])
    assert chunked.column("event_id").num_chunks == 2
    assert encode_bodies(chunked) == whole
    assert encode_bodies(table.slice(0, 0)) == []


def test_record_keys_are_the_customer_ids():
    table = pa.Table.from_pylist(ROWS, schema=ARROW_SCHEMA)
    assert event_keys(table) == [str(row["customer_id"]).encode() for row in ROWS]
    clean = table.filter(pc.is_valid(table.column("customer_id")))
    assert event_keys(clean) == [row["customer_id"].encode() for row in ROWS if row["customer_id"]]

"""The replay producer's pure parts: pacing, options, confirmed prefix, position file,
bad records, and the batch encoder's bytes against the contract's ``encode``."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from producers.adapters import ARROW_SCHEMA
from producers.arrow_encode import closing, encode_bodies, event_keys, open_body
from producers.bad_records import BAD_KINDS, DATED_KINDS, bad_kind_for_row, bad_record
from producers.replay import Pacing, ReplayOptions
from producers.resume import (
    ConfirmedPrefix,
    ResumePosition,
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
    make_event_id,
    wire_value,
)

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


DAY_S = 86400.0


def test_speedup_maps_simulated_time_to_wall_time():
    pacing = Pacing(speedup=86400)  # one simulated day per wall second
    assert pacing.paced
    assert pacing.due(0, 0.0) == 0.0
    assert pacing.due(5, 2 * DAY_S) == 2.0
    assert pacing.due(9, DAY_S / 4) == 0.25


def test_rate_spaces_events_evenly_and_max_never_waits():
    assert Pacing(rate=100).due(250, 9 * DAY_S) == 2.5
    assert Pacing().due(10**6, 9 * DAY_S) == 0.0
    assert not Pacing().paced


@pytest.mark.parametrize("kwargs", [{"speedup": 0}, {"rate": -1}, {"speedup": 2, "rate": 3}])
def test_bad_pacing_is_a_clear_error(kwargs):
    with pytest.raises(PulseError):
        Pacing(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"inject_bad": 1.0}, "--inject-bad must be in [0, 1), got 1.0"),
        ({"inject_bad": -0.1}, "--inject-bad must be in [0, 1), got -0.1"),
        ({"bad_kinds": ("oversized", "typo")}, "unknown bad-record kinds: typo"),
        ({"bad_kinds": ()}, "unknown bad-record kinds: (none given)"),
    ],
)
def test_bad_replay_options_are_a_clear_error(kwargs, message):
    with pytest.raises(PulseError) as raised:
        ReplayOptions(**kwargs)
    assert str(raised.value) == message
    assert ReplayOptions(inject_bad=0.5, bad_kinds=BAD_KINDS + DATED_KINDS).inject_bad == 0.5


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


def test_a_resumed_position_starts_after_the_saved_prefix(settings):
    identity = {"source": "hm", "topic": "t"}
    fresh = ResumePosition(settings, identity, resume=True)
    assert (fresh.start, fresh.prefix.rows) == (0, 0)  # nothing saved yet
    fresh.prefix.expect(0)
    fresh.prefix.delivered(0)
    fresh.save()
    assert ResumePosition(settings, identity, resume=True).start == 1
    assert ResumePosition(settings, identity, resume=False).start == 0  # not asked to resume


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


def test_the_closing_of_a_body_is_produced_at_to_the_millisecond():
    ms = int(T0.timestamp()) * 1000 + 1250  # 1.25 s after T0
    assert closing(ms) == b',"produced_at":"2020-09-20T00:00:01.250Z"}'
    assert closing(ms - 250) == b',"produced_at":"2020-09-20T00:00:01Z"}'
    assert closing(ms) == b',"produced_at":"2020-09-20T00:00:01.250Z"}'  # not stuck
    assert closing(-1) == b',"produced_at":"1969-12-31T23:59:59.999Z"}'
    produced = T0 + timedelta(milliseconds=1250)
    assert open_body(EVENT) + closing(ms) == encode({**EVENT, "produced_at": produced})


# Rows a reader can check by hand: every column kind, the values the contract cares
# about and the ones JSON escapes or writes in an unusual way. Some rows break the
# contract on purpose (a null customer_id, a NaN price): the batch encoder must write
# them exactly as encode does.
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
    # microseconds below a millisecond: written as .000 (format_timestamp keeps ms only)
    {**EVENT, "event_id": "e8", "event_time": T0 + timedelta(microseconds=1)},
    {**EVENT, "event_id": "e9", "event_time": T0 + timedelta(microseconds=999_999)},
    {
        **EVENT,
        "event_id": "e10 😀 \u2028 \u2029 \x7f \ufeff </script>",  # kept as they are
        "event_time": datetime(1969, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC),  # before 1970
        "unit_price": 1e300,
        "quantity": -(2**31),
    },
    {**EVENT, "event_id": "e11", "unit_price": 5e-324, "customer_id": "\x00\x1f"},
    {**EVENT, "event_id": "e12", "unit_price": float("inf"), "article_id": None},
    {**EVENT, "event_id": "e13", "unit_price": 123456789.123, "quantity": None},
]


def per_row(event: dict, produced_at: datetime) -> bytes:
    """The contract's path: one event, one encode."""
    return encode({**event, "produced_at": produced_at})


def batch(table: pa.Table, produced_at: datetime) -> list[bytes]:
    """The producer's path: the table's open bodies, each closed at ``produced_at``."""
    end = closing(int(produced_at.timestamp() * 1000))
    return [body + end for body in encode_bodies(table)]


def decoded_or_reason(raw: bytes):
    try:
        return decode(raw)
    except ContractError as exc:
        return exc.reason


PRODUCED = T0 + timedelta(days=3, milliseconds=7)


def test_batch_encoder_writes_the_same_bytes_and_events_as_encode():
    table = pa.Table.from_pylist(ROWS, schema=ARROW_SCHEMA)
    written = batch(table, PRODUCED)
    expected = [per_row(row, PRODUCED) for row in table.to_pylist()]
    assert written == expected
    assert [open_body(row) for row in ROWS] == encode_bodies(table)  # the mapping path
    decoded = [decoded_or_reason(raw) for raw in written]
    first, second, third = decoded[:3]
    assert first == {**EVENT, "produced_at": PRODUCED}
    assert second["article_id"] == "0000000001" and second["quantity"] == -3
    assert second["customer_id"] == "Zoë 日本 ✓" and second["sales_channel_id"] is None
    assert "Zoë 日本 ✓".encode() in written[1]
    assert third == "customer_id: missing"
    assert decoded[4] == "unit_price: not a finite number"
    # the bytes a reader can check by hand
    assert written[0] == (
        b'{"event_id":"' + EVENT["event_id"].encode() + b'","event_time":"2020-09-20T00:00:00Z",'
        b'"customer_id":"c1","article_id":"0108775015","quantity":1,"unit_price":0.0254,'
        b'"sales_channel_id":2,"source":"synthetic","produced_at":"2020-09-23T00:00:00.007Z"}'
    )
    assert b'"sales_channel_id":null,' in written[1] and b'"unit_price":1e-05,' in written[1]
    assert b'"customer_id"' not in written[2]
    assert b'"event_id":"quote \\" backslash \\\\' in written[2]
    assert b'"event_time":"2020-09-20T00:00:00.000Z"' in written[7]
    assert b'"event_time":"2020-09-20T00:00:00.999Z"' in written[8]
    assert b'"event_time":"1969-12-31T23:59:59.999Z"' in written[9]
    assert "😀 \u2028 \u2029 \x7f \ufeff </script>".encode() in written[9]
    assert b'"unit_price":1e+300,' in written[9] and b'"quantity":-2147483648,' in written[9]
    assert b'"customer_id":"\\u0000\\u001f",' in written[10]
    assert b'"unit_price":Infinity,' in written[11] and b'"article_id"' not in written[11]
    assert b'"quantity"' not in written[12]


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


def test_batch_encoder_agrees_on_other_column_types_and_missing_columns():
    """Wider or narrower Arrow types, another time zone, a dictionary column, no column."""
    table = pa.Table.from_pylist(ROWS, schema=ARROW_SCHEMA)
    variants = {
        "quantity": pa.int64(),
        "unit_price": pa.float32(),  # its values are the float32's, for both paths
        "customer_id": pa.dictionary(pa.int32(), pa.string()),
        "event_time": pa.timestamp("us", tz="Asia/Kolkata"),
        "produced_at": pa.timestamp("s"),  # naive: UTC
    }
    schema = pa.schema([pa.field(f.name, variants.get(f.name, f.type)) for f in ARROW_SCHEMA])
    other = table.cast(schema, safe=False).append_column("extra", pa.array(range(len(ROWS))))
    assert batch(other, PRODUCED) == [per_row(row, PRODUCED) for row in other.to_pylist()]
    narrow = table.drop_columns(["article_id", "sales_channel_id"])  # absent: as if null
    assert batch(narrow, PRODUCED) == [per_row(row, PRODUCED) for row in narrow.to_pylist()]


def random_rows(n: int, seed: int) -> list[dict]:
    """Rows drawn from the awkward values of every column (nulls included)."""
    rng = random.Random(seed)
    chars = ["a", "Z", "0", " ", '"', "\\", "/", "\n", "\t", "\x00", "\x1f", "\x7f", "é", "日"]
    chars += ["😀", "\u2028", "\ufeff", "\x80", "\xa0"]
    floats = [0.0, -0.0, 1e-05, 1e16, 1e300, 5e-324, 0.1 + 0.2, 1.5, 2.0**53 + 1, 123456.789]
    floats += [float("nan"), float("inf"), -float("inf")]
    ints = [0, 1, -1, 2, 2**31 - 1, -(2**31)]

    def maybe(value):
        return None if rng.random() < 0.05 else value

    def text() -> str | None:
        return maybe("".join(rng.choice(chars) for _ in range(rng.randrange(12))))

    def when() -> datetime:
        ts = datetime(1960, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(3 * 10**9))
        return ts.replace(microsecond=rng.choice([0, 1, 999, 1000, 123_456, 999_999]))

    return [
        {
            "event_id": text(),
            "event_time": when(),
            "customer_id": text(),
            "article_id": text(),
            "quantity": maybe(rng.choice(ints)),
            "unit_price": maybe(rng.choice([*floats, rng.uniform(0, 10 ** rng.randrange(12))])),
            "sales_channel_id": maybe(rng.choice(ints)),
            "source": text(),
            "produced_at": None,
        }
        for _ in range(n)
    ]


def test_batch_encoder_agrees_with_encode_on_random_awkward_rows():
    rows = random_rows(3000, seed=31)
    table = pa.Table.from_pylist(rows, schema=ARROW_SCHEMA)
    assert batch(table, PRODUCED) == [per_row(row, PRODUCED) for row in rows]
    assert encode_bodies(table) == [open_body(row) for row in rows]


def test_batch_encoder_agrees_with_encode_on_every_character():
    """Every code point (surrogates excepted) in a string column, in blocks of 256."""
    codes = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    texts = ["".join(map(chr, codes[i : i + 256])) for i in range(0, len(codes), 256)]
    rows = [{**EVENT, "event_id": text, "customer_id": text[:3]} for text in texts]
    table = pa.Table.from_pylist(rows, schema=ARROW_SCHEMA)
    assert batch(table, PRODUCED) == [per_row(row, PRODUCED) for row in rows]
    # The batch encoder finds the strings to escape by their ASCII bytes: no other
    # character may need it.
    assert all(wire_value(chr(c)) == f'"{chr(c)}"' for c in codes if c >= 0x80)


@pytest.mark.parametrize("code", range(128))
def test_batch_encoder_agrees_with_encode_on_each_ascii_character_alone(code):
    """A column whose only unusual character is this one (the encoder scans for it)."""
    rows = [{**EVENT, "event_id": f"a{chr(code)}b", "source": chr(code)}, EVENT]
    table = pa.Table.from_pylist(rows, schema=ARROW_SCHEMA)
    assert batch(table, PRODUCED) == [per_row(row, PRODUCED) for row in rows]


def test_record_keys_are_the_customer_ids():
    table = pa.Table.from_pylist(ROWS, schema=ARROW_SCHEMA)
    assert event_keys(table) == [str(row["customer_id"]).encode() for row in ROWS]
    clean = table.filter(pc.is_valid(table.column("customer_id")))
    assert event_keys(clean) == [row["customer_id"].encode() for row in ROWS if row["customer_id"]]

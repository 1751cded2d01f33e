"""Records for the parse tests of both tiers: every structural case and every rule's probes.

Shared by tests/spark/test_parse.py (Spark's validators against Python's) and
tests/unit/test_parse_arrow.py (the driver-side fast path against Python's).
"""

from __future__ import annotations

import json

from schemas.transaction import RULES, validate

GOOD = {
    "event_id": "hm-abc",
    "event_time": "2020-09-22T00:00:00Z",
    "customer_id": "c1",
    "article_id": "0123",
    "quantity": 1,
    "unit_price": 0.05,
    "sales_channel_id": 2,
    "source": "hm",
    "produced_at": "2026-01-01T10:00:00.123Z",
}


def with_(**changes: object) -> bytes:
    obj = {**GOOD, **changes}
    return json.dumps({k: v for k, v in obj.items() if v != "<drop>"}).encode()


RECORDS: list[bytes] = [
    with_(),
    with_(sales_channel_id=None),
    with_(sales_channel_id="<drop>"),
    with_(quantity=-3, unit_price=2),
    b"{broken",
    b'{"event_id": "\xc3\x28"}',  # invalid UTF-8
    b"[1, 2]",
    b"null",
    b'"text"',
    with_(event_id="<drop>"),
    with_(event_id=None),
    with_(event_id=""),
    with_(event_id="   "),
    with_(event_id=5),
    with_(customer_id=True),
    with_(customer_id="x" * 300),
    with_(article_id=["a"]),
    with_(article_id={"a": 1}),
    with_(event_time=20200922),
    with_(event_time="yesterday"),
    with_(event_time="2020-13-45T00:00:00Z"),
    with_(quantity="1"),
    with_(quantity=1.5),
    with_(quantity=True),
    with_(quantity=0),
    with_(quantity=2**40),
    with_(unit_price=-0.01),
    with_(unit_price="9.99"),
    with_(unit_price=False),
    with_(sales_channel_id=3),
    with_(sales_channel_id=1.0),
    with_(source="amazon"),
    with_(produced_at=None),
    with_(extra_field=1),
    with_(zzz=1, aaa=2),
    with_(quantity=0, unit_price=-1),
    # The rule across fields: event_time at most 1 day after produced_at.
    with_(event_time="2026-01-02T10:00:00.123Z"),  # exactly 1 day: valid
    with_(event_time="2026-01-02T10:00:00.124Z"),  # 1 day + 1 ms: dated in the future
    with_(event_time="2031-01-01T00:00:00Z"),
    with_(event_time="2031-01-01T00:00:00Z", unit_price=-1),  # a field rule comes first
    # The fast paths of the number-type and extra-key checks:
    with_(quantity=1.0),
    with_(quantity=12345678901234567890123),
    with_(quantity=1e2),
    with_(unit_price=5),
    with_(unit_price=5.0),
    with_(unit_price=12345678901234567890123),
    with_(nested={"event_id": "x", "b": [1, 2]}),
    with_(**{"odd: key": 1}),
    with_(**{"a<b>": 1}),
    with_(**{"": 1}),
]

# Every rule of the contract, probed on both sides of its boundary (schemas.rules.Rule.probes):
# a rule added to RULES, or a change to how a test reads in Python or Spark, is covered here.
PROBES: list[tuple[str, bytes]] = [
    (rule.message, with_(**{rule.field: value})) for rule in RULES for value in rule.probes()
]


def python_reason(raw: bytes) -> str | None:
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"malformed JSON: {exc.__class__.__name__}"
    return validate(obj)


def compact(raw: bytes) -> bytes:
    """The record as the producer writes it (compact, same key order), when it is JSON.

    Compact records in the contract's key order take the canonical fast path
    (``streaming.contract_canonical``); the json.dumps default (spaces after separators)
    takes the exact path.
    """
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return raw
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


FORMS = {"spaced": lambda raw: raw, "compact": compact}


def _canonical(**tokens: str) -> bytes:
    """A compact record with some values given as their exact JSON text (kept as written)."""
    text = compact(with_())
    for name, token in tokens.items():
        obj = json.loads(text)
        old = json.dumps(obj[name], separators=(",", ":"), ensure_ascii=False)
        text = text.replace(f'"{name}":{old}'.encode(), f'"{name}":{token}'.encode())
    return text


# Records in (or next to) the producer's canonical form whose values sit at the edges of
# what the fast paths convert: dates a calendar refuses, number texts json.loads reads
# in its own way, bytes that are not UTF-8. Kept byte for byte (not re-encoded).
CANONICAL_EDGES: list[bytes] = [
    *(
        _canonical(event_time=f'"{t}"')
        for t in (
            "2020-02-29T23:59:59.999Z",
            "2020-02-30T00:00:00Z",
            "2021-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2000-02-29T00:00:00Z",
            "2020-04-31T00:00:00Z",
            "2020-12-31T24:00:00Z",
            "2020-12-31T23:60:00Z",
            "2020-12-31T23:59:60Z",
            "2020-00-10T00:00:00Z",
            "2020-01-00T00:00:00Z",
            "0000-01-01T00:00:00Z",
            "0001-01-01T00:00:00Z",
            "1969-12-31T23:59:59.001Z",
            "2026-01-02T10:00:00.123Z",
            "2026-01-02T10:00:00.124Z",
        )
    ),
    _canonical(produced_at='"2026-13-01T10:00:00Z"'),
    *(
        _canonical(unit_price=p)
        for p in (
            "-0",
            "-0.0",
            "0",
            "0.0",
            "-0.000001",
            "123456789012345",
            "0.1",
            "1.00000000000000001",
        )
    ),
    _canonical(unit_price="999999999999999.99999999999999999"),
    _canonical(unit_price="0.30000000000000004"),
    _canonical(quantity="-0", sales_channel_id="null"),
    _canonical(quantity="999999999"),
    _canonical(quantity="-999999999"),
    _canonical(customer_id='"c\\u00e9"'),  # an escape: the exact path
    _canonical(customer_id='"c\u00e9\u2028 "'),  # not ASCII, not JSON escapes
    _canonical(customer_id='"  \t "'),  # a raw control character: malformed
    compact(with_()).replace(b'"c1"', b'"c\xff"'),
    compact(with_()).replace(b'"c1"', b'"c\xc3\x28"'),
    compact(with_()) + b"\n",
    compact(with_()) + b" ",
]

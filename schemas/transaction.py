"""The `transaction` event, v1 — defined once.

``FIELDS`` (names, kinds, nullability) and ``RULES`` (every rule on a field's value,
each with its one reason string; see ``schemas.rules``) are the single definition.
From them derive:

- ``validate(obj)``: the producer-side check, returning the first precise reason
  a record breaks the contract (or None);
- ``spark_schema()``: the typed ``StructType`` Spark uses for the lake;
- ``streaming.contract_variant.classify_exact``: the same checks as Spark Columns, with the same
  reasons (tests/spark/test_parse.py proves both validators agree record by record);
- the dataset adapters' vectorised checks (``producers.adapters``).

Validators check, per field in contract order: present and not null, the JSON type,
then the field's ``RULES`` in order; then the one rule across fields (an event may not
be dated more than ``MAX_AHEAD_OF_PRODUCER`` after its ``produced_at``); then unknown
extra fields. The first failure is
the reason, always ``"<field>: <what>"`` with the wording kept here.

Wire format (``encode``; the section "wire format" below is its one definition): compact
JSON, one object per Kafka record, key = customer_id, fields in contract order.
Timestamps are ISO-8601 UTC strings (``2020-09-22T00:00:00Z``).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.rules import BLANK_CHARS, Rule

SCHEMA_VERSION = 1
SOURCES = ("hm", "online_retail", "synthetic", "amazon")
MAX_STRING_LEN = 256  # oversized values are rejected, not truncated
INT32 = (-(2**31), 2**31 - 1)

#: What a wrong-type reason says each kind expects: "wrong type int, expected string".
EXPECTED = {"string": "string", "timestamp": "ISO-8601", "int": "int", "double": "number"}

# The structural reasons (the value rules' reasons are in RULES).
MISSING = "missing"
NULL = "null"
UNPARSEABLE_TIMESTAMP = "unparseable timestamp"  # followed by the value's repr (40 chars)
#: The rule across fields: ``event_time`` at most this long after ``produced_at`` (clock
#: skew between the shop's systems and the producer). A later event is dated in the
#: future; counted, it would move the stream clock and age every customer.
MAX_AHEAD_OF_PRODUCER = timedelta(days=1)
AHEAD_OF_PRODUCER = "event_time: after produced_at (by more than 1 day)"
UNKNOWN_FIELD = "unknown field"  # followed by the first unknown key, sorted
NOT_AN_OBJECT = "not a JSON object"  # followed by the Python type name in parentheses
MALFORMED_JSON = "malformed JSON"  # followed by the decoder's exception name


@dataclass(frozen=True)
class FieldSpec:
    """One field of the contract: its JSON/Python kind (also the Spark type) and nullability."""

    name: str
    kind: str  # "string" | "timestamp" | "int" | "double"
    nullable: bool = False
    doc: str = ""


FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("event_id", "string", doc="deterministic per source row"),
    FieldSpec("event_time", "timestamp", doc="UTC; H&M t_dat at 00:00, Online Retail InvoiceDate"),
    FieldSpec("customer_id", "string", doc="non-empty"),
    FieldSpec("article_id", "string", doc="string (H&M ids keep a leading 0)"),
    FieldSpec("quantity", "int", doc="1 for H&M; negative = return"),
    FieldSpec("unit_price", "double", doc=">= 0 (Amazon: the metadata's list price)"),
    FieldSpec("sales_channel_id", "int", nullable=True, doc="H&M 1 or 2"),
    FieldSpec("source", "string", doc="hm | online_retail | synthetic | amazon"),
    FieldSpec("produced_at", "timestamp", doc="set by the producer; end-to-end latency"),
)
FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in FIELDS)

_TOO_LONG = f"longer than {MAX_STRING_LEN} characters"

#: Every rule on a field's value, in checking order: first the rule every value of the
#: field's kind obeys (string length, int32 range, a finite double), then the field's own.
RULES: tuple[Rule, ...] = (
    Rule("event_id", "max_length", "longer_than", MAX_STRING_LEN, _TOO_LONG),
    Rule("event_id", "non_empty", "blank", BLANK_CHARS, "is empty"),
    Rule("customer_id", "max_length", "longer_than", MAX_STRING_LEN, _TOO_LONG),
    Rule("customer_id", "non_empty", "blank", BLANK_CHARS, "is empty"),
    Rule("article_id", "max_length", "longer_than", MAX_STRING_LEN, _TOO_LONG),
    Rule("article_id", "non_empty", "blank", BLANK_CHARS, "is empty"),
    Rule("quantity", "int32", "outside", INT32, "out of int range"),
    Rule("quantity", "non_zero", "equals", 0, "is zero"),
    Rule("unit_price", "finite", "not_finite", None, "not a finite number"),
    Rule("unit_price", "non_negative", "below", 0, "is negative"),
    Rule("sales_channel_id", "int32", "outside", INT32, "out of int range"),
    Rule("sales_channel_id", "known_channel", "not_in", (1, 2), "is not 1 or 2"),
    Rule("source", "max_length", "longer_than", MAX_STRING_LEN, _TOO_LONG),
    Rule("source", "known_source", "not_in", SOURCES, f"is not one of {', '.join(SOURCES)}"),
)


def rules_for(field: str) -> tuple[Rule, ...]:
    """The rules on one field's value, in checking order."""
    return _RULES_BY_FIELD[field]


_RULES_BY_FIELD = {name: tuple(r for r in RULES if r.field == name) for name in FIELD_NAMES}
if sum(map(len, _RULES_BY_FIELD.values())) != len(RULES):
    raise ValueError("a rule in RULES names a field that is not in FIELDS")


class ContractError(ValueError):
    """A record that breaks the contract; ``reason`` names the field and the rule."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_timestamp(value: str) -> datetime:
    """Parse an ISO-8601 timestamp; naive values are taken as UTC."""
    ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def format_timestamp(ts: datetime) -> str:
    """UTC ISO-8601 with a Z, milliseconds only when present."""
    ts = ts.astimezone(UTC) if ts.tzinfo else ts.replace(tzinfo=UTC)
    text = ts.strftime("%Y-%m-%dT%H:%M:%S")
    if ts.microsecond:
        text += f".{ts.microsecond // 1000:03d}"
    return text + "Z"


def _parse(spec: FieldSpec, value: Any) -> Any:
    """Coerce one non-null JSON value to the field's kind, or raise ContractError."""
    name, kind = spec.name, spec.kind
    if kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "double":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:  # string, timestamp
        ok = isinstance(value, str)
    if not ok:
        got = type(value).__name__
        raise ContractError(f"{name}: wrong type {got}, expected {EXPECTED[kind]}")
    if kind == "timestamp":
        try:
            return parse_timestamp(value)
        except ValueError:
            raise ContractError(f"{name}: {UNPARSEABLE_TIMESTAMP} {value[:40]!r}") from None
    if kind == "double":
        try:
            return float(value)
        except OverflowError:  # an int beyond float range: infinite, so the finite rule says so
            return math.inf if value > 0 else -math.inf
    return value


def check_event(obj: Any) -> dict[str, Any]:
    """Return the typed event (datetimes for timestamps), or raise ContractError.

    Checks, per field in contract order: present, not null, type, then the field's
    ``RULES``. Unknown extra fields are rejected too, so a typo never passes silently.
    """
    if not isinstance(obj, Mapping):
        raise ContractError(f"{NOT_AN_OBJECT} ({type(obj).__name__})")
    typed: dict[str, Any] = {}
    for spec in FIELDS:
        value = obj.get(spec.name)
        if value is None:
            if spec.nullable:
                typed[spec.name] = None
                continue
            raise ContractError(f"{spec.name}: {MISSING if spec.name not in obj else NULL}")
        parsed = _parse(spec, value)
        for rule in rules_for(spec.name):
            if rule.broken(parsed):
                raise ContractError(rule.message)
        typed[spec.name] = parsed
    if typed["event_time"] > typed["produced_at"] + MAX_AHEAD_OF_PRODUCER:
        raise ContractError(AHEAD_OF_PRODUCER)
    extra = sorted(set(obj) - set(FIELD_NAMES))
    if extra:
        raise ContractError(f"{UNKNOWN_FIELD} {extra[0]}")
    return typed


def validate(obj: Any) -> str | None:
    """The reason ``obj`` breaks the contract, or None if it is a valid event."""
    try:
        check_event(obj)
    except ContractError as exc:
        return exc.reason
    return None


def decode(raw: bytes) -> dict[str, Any]:
    """Parse wire bytes into a typed event, or raise ContractError (bad JSON included)."""
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ContractError(f"{MALFORMED_JSON}: {exc.__class__.__name__}") from None
    return check_event(obj)


# ------------------------------------------------------------------ wire format
#
# An event's bytes on the wire, defined once: the JSON writer (``_WIRE_JSON``), which
# fields are written and in what order (``wire_fields``) and each value's wire form
# (``wire_form``). ``encode`` writes one event with them; the producer's batch encoder
# (``producers.arrow_encode``) writes a whole Arrow table with ``wire_frame`` (the text
# around the values) and ``wire_value`` (a value's text), both derived from the same
# three. tests/unit/test_replay.py proves the two write the same bytes.

#: Compact separators, text as UTF-8 (no ``\u`` escapes), NaN and the infinities as
#: Python writes them (the contract rejects them; the bytes still say what was sent).
_WIRE_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def wire_form(value: Any) -> Any:
    """A field value as the wire's JSON holds it: a timestamp as ``format_timestamp`` writes it."""
    return format_timestamp(value) if isinstance(value, datetime) else value


def wire_fields(event: Mapping[str, Any]) -> dict[str, Any]:
    """The fields ``encode`` writes, in contract order, in wire form.

    A null or absent field is left out, unless it is nullable: then it is written as
    null. Keys that are not contract fields are ignored.
    """
    return {
        spec.name: wire_form(value)
        for spec in FIELDS
        if (value := event.get(spec.name)) is not None or spec.nullable
    }


def encode(event: Mapping[str, Any]) -> bytes:
    """An event's bytes on the wire: ``wire_fields(event)`` as one compact JSON object."""
    return _WIRE_JSON.encode(wire_fields(event)).encode()


def wire_value(value: Any) -> str:
    """One field value's JSON text, exactly as ``encode`` writes it inside the object."""
    return _WIRE_JSON.encode(wire_form(value))


def wire_frame(names: Sequence[str]) -> tuple[str, ...]:
    """The text ``encode`` writes around the values of the fields ``names``, in that order.

    ``frame[i]`` goes before value ``i`` (the object's opening or the separator, then
    the field's name and the colon) and ``frame[-1]`` after the last value: the object
    is ``frame[0] + value_0 + frame[1] + ... + value_last + frame[-1]``.
    """
    if not names:
        return ("{}",)
    keys = [_WIRE_JSON.encode(name) + _WIRE_JSON.key_separator for name in names]
    return ("{" + keys[0], *(_WIRE_JSON.item_separator + key for key in keys[1:]), "}")


def make_event_id(source: str, *parts: object) -> str:
    """Deterministic id: the same source row (same ``parts``) always gives the same id.

    Adapters pass the row's natural content *and* its occurrence index among
    identical rows, since H&M rows are not unique by content alone.
    """
    digest = hashlib.blake2b("\x1f".join([source, *map(str, parts)]).encode(), digest_size=12)
    return f"{source}-{digest.hexdigest()}"


def spark_schema():  # type: ignore[no-untyped-def]
    """The typed Spark ``StructType`` of a valid event (the lake's columns)."""
    from pyspark.sql import types as T

    spark_types = {
        "string": T.StringType(),
        "timestamp": T.TimestampType(),
        "int": T.IntegerType(),
        "double": T.DoubleType(),
    }
    return T.StructType([T.StructField(f.name, spark_types[f.kind], f.nullable) for f in FIELDS])


def now_utc() -> datetime:
    """The producer's clock (the only clock in the contract: ``produced_at``)."""
    return datetime.now(UTC)

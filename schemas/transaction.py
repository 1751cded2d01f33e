"""The `transaction` event, v1 — defined once.

``FIELDS`` is the single definition. From it derive:

- ``validate(obj)``: the producer-side check, returning the first precise reason
  a record breaks the contract (or None);
- ``spark_schema()``: the typed ``StructType`` Spark uses for the lake;
- ``spark_raw_schema()``: every field as string, so the stream can parse
  leniently and then name the exact reason in Spark (see
  ``streaming`` — a test proves both validators agree field by field).

Wire format: compact JSON, one object per Kafka record, key = customer_id.
Timestamps are ISO-8601 UTC strings (``2020-09-22T00:00:00Z``).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

SCHEMA_VERSION = 1
SOURCES = ("hm", "online_retail", "synthetic")
MAX_STRING_LEN = 256  # oversized values are rejected, not truncated


@dataclass(frozen=True)
class FieldSpec:
    """One field of the contract: its JSON/Python kind, Spark type name and rule."""

    name: str
    kind: str  # "string" | "timestamp" | "int" | "double"
    nullable: bool = False
    check: Callable[[Any], str | None] | None = None  # extra rule on the parsed value
    doc: str = ""


def _non_empty(v: str) -> str | None:
    return "is empty" if not v.strip() else None


def _non_negative(v: float) -> str | None:
    return "is negative" if v < 0 else None


def _known_source(v: str) -> str | None:
    return None if v in SOURCES else f"is not one of {', '.join(SOURCES)}"


def _channel(v: int | None) -> str | None:
    return None if v is None or v in (1, 2) else "is not 1 or 2"


def _non_zero(v: int) -> str | None:
    return "is zero" if v == 0 else None


FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("event_id", "string", check=_non_empty, doc="deterministic per source row"),
    FieldSpec("event_time", "timestamp", doc="UTC; H&M t_dat at 00:00, Online Retail InvoiceDate"),
    FieldSpec("customer_id", "string", check=_non_empty, doc="non-empty"),
    FieldSpec("article_id", "string", check=_non_empty, doc="string (H&M ids keep a leading 0)"),
    FieldSpec("quantity", "int", check=_non_zero, doc="1 for H&M; negative = return"),
    FieldSpec("unit_price", "double", check=_non_negative, doc=">= 0"),
    FieldSpec("sales_channel_id", "int", nullable=True, check=_channel, doc="H&M 1 or 2"),
    FieldSpec("source", "string", check=_known_source, doc="hm | online_retail | synthetic"),
    FieldSpec("produced_at", "timestamp", doc="set by the producer; end-to-end latency"),
)
FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in FIELDS)
INT32 = (-(2**31), 2**31 - 1)


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
    """Coerce one JSON value to the field's kind, or raise ContractError."""
    name = spec.name
    if spec.kind == "string":
        if not isinstance(value, str):
            raise ContractError(f"{name}: wrong type {type(value).__name__}, expected string")
        if len(value) > MAX_STRING_LEN:
            raise ContractError(f"{name}: longer than {MAX_STRING_LEN} characters")
        return value
    if spec.kind == "timestamp":
        if not isinstance(value, str):
            raise ContractError(f"{name}: wrong type {type(value).__name__}, expected ISO-8601")
        try:
            return parse_timestamp(value)
        except ValueError:
            raise ContractError(f"{name}: unparseable timestamp {value[:40]!r}") from None
    if spec.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ContractError(f"{name}: wrong type {type(value).__name__}, expected int")
        if not INT32[0] <= value <= INT32[1]:
            raise ContractError(f"{name}: out of int range")
        return value
    # double
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ContractError(f"{name}: wrong type {type(value).__name__}, expected number")
    if not math.isfinite(value):
        raise ContractError(f"{name}: not a finite number")
    return float(value)


def check_event(obj: Any) -> dict[str, Any]:
    """Return the typed event (datetimes for timestamps), or raise ContractError.

    Checks, per field in contract order: present, type, then the field's rule.
    Unknown extra fields are rejected too, so a typo never passes silently.
    """
    if not isinstance(obj, Mapping):
        raise ContractError(f"not a JSON object ({type(obj).__name__})")
    typed: dict[str, Any] = {}
    for spec in FIELDS:
        value = obj.get(spec.name)
        if value is None:
            if spec.nullable:
                typed[spec.name] = None
                continue
            missing = spec.name not in obj
            raise ContractError(f"{spec.name}: {'missing' if missing else 'null'}")
        parsed = _parse(spec, value)
        if spec.check is not None and (problem := spec.check(parsed)) is not None:
            raise ContractError(f"{spec.name}: {problem}")
        typed[spec.name] = parsed
    extra = sorted(set(obj) - set(FIELD_NAMES))
    if extra:
        raise ContractError(f"unknown field {extra[0]}")
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
        raise ContractError(f"malformed JSON: {exc.__class__.__name__}") from None
    return check_event(obj)


def encode(event: Mapping[str, Any]) -> bytes:
    """Compact JSON for the wire; datetimes become ISO-8601 UTC strings."""
    wire = {
        name: format_timestamp(v) if isinstance(v, datetime) else v
        for name in FIELD_NAMES
        if (v := event.get(name)) is not None or name == "sales_channel_id"
    }
    return json.dumps(wire, separators=(",", ":"), ensure_ascii=False).encode()


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


def spark_raw_schema():  # type: ignore[no-untyped-def]
    """Every contract field as a nullable string, for lenient parsing before validation."""
    from pyspark.sql.types import StringType, StructField, StructType

    return StructType([StructField(f.name, StringType(), True) for f in FIELDS])


def now_utc() -> datetime:
    """The producer's clock (the only clock in the contract: ``produced_at``)."""
    return datetime.now(UTC)

"""The contract checked with pyarrow on the records in the producer's canonical form
(``split_canonical``): the stream's fast path, on the driver's cores.

A record in the canonical form (``CANONICAL``: compact JSON, the contract's keys in
order, no escapes, plain numbers, ISO timestamps with a Z) has exactly the JSON types
the contract wants, so only the value rules remain to check. Any other record (spaces,
another key order, an escape, an exponent, a missing or extra key) is handed on to the
exact path (``streaming.contract_variant.classify_exact``). tests/spark/test_parse.py
runs every probe through both.

The record is read from the Kafka bytes Spark collected. In a canonical record every
string value is quoted and holds no quote (no escapes), so splitting the record at its
quotes puts each field's value at a fixed piece: the string and timestamp values whole,
the numbers as ":<token>," between two keys. Each token then already has the JSON type
the contract wants, and its conversion is the one json.loads makes
(tests/unit/test_parse_arrow.py checks values and reasons against the Python validator;
tests/spark/test_parse.py against Spark's).
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.transaction import (
    AHEAD_OF_PRODUCER,
    FIELDS,
    MAX_AHEAD_OF_PRODUCER,
    FieldSpec,
    rules_for,
)
from storage.lake import ARROW_TYPES
from streaming.kafka_rows import CLASSIFIED_SCHEMA, KAFKA_COLUMNS

_TOKENS = {
    "string": r'"[^"\\\x00-\x1f]*"',
    # a year from 0001 (Python's first; Spark would read 0000)
    "timestamp": r'"(?:[0-9]{3}[1-9]|[0-9]{2}[1-9]0|[0-9][1-9]00|[1-9]000)'
    r'-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{3})?Z"',
    "int": r"-?(?:0|[1-9][0-9]{0,8})",  # 9 digits at most: always an int32
    "double": r"-?(?:0|[1-9][0-9]{0,14})(?:\.[0-9]{1,17})?",  # no exponent, never infinite
}
CANONICAL = (
    "^\\{"
    + ",".join(f'"{f.name}":(?:{_TOKENS[f.kind]}{"|null" if f.nullable else ""})' for f in FIELDS)
    + "\\}$"
)


def _piece_layout() -> tuple[int, dict[str, int]]:
    """(pieces of a canonical record split at '"', the piece holding each field's value).

    ``{"a":"x","n":1,...}`` splits into ``{``, ``a``, ``:``, ``x``, ``,``, ``n``, ``:1,``, ...
    """
    at, piece = {}, 1  # piece 0 is "{"
    for spec in FIELDS:
        if spec.kind in ("string", "timestamp"):
            if spec.nullable:  # an unquoted null would shift the pieces after it
                raise ValueError(f"{spec.name}: the fast path has no nullable strings")
            at[spec.name] = piece + 2  # key, ":", value, then "," (the last: "}")
            piece += 4
        else:
            at[spec.name] = piece + 1  # key, then ":<token>," (the last: ":<token>}")
            piece += 2
    return piece, at


_PIECES, _PIECE_AT = _piece_layout()
_US_PER_DAY = 86_400_000_000


def _digits(data: np.ndarray, start: np.ndarray, first: int, last: int) -> np.ndarray:
    """The decimal number of characters ``first..last-1`` of each string (ASCII digits)."""
    value = np.zeros(len(start), np.int64)
    top = len(data) - 1
    for k in range(first, last):
        value = value * 10 + (data[np.minimum(start + k, top)].astype(np.int64) - 48)
    return value


def _iso_us(tokens: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Canonical timestamps (no nulls) -> (timestamp[us, UTC], converted).

    The tokens are ``YYYY-MM-DDTHH:MM:SS[.mmm]Z`` (``_TOKENS``); converted is False
    where datetime.fromisoformat refuses the value (month 13, 30 February, hour 24,
    second 60, year 0): those records take the exact path.
    """
    n = len(tokens)
    if n == 0:
        return pa.array([], ARROW_TYPES["timestamp"]), np.ones(0, bool)
    offsets = np.frombuffer(tokens.buffers()[1], np.int32)[tokens.offset : tokens.offset + n + 1]
    data = np.frombuffer(tokens.buffers()[2], np.uint8)
    start = offsets[:-1].astype(np.int64)
    year, month, day = (_digits(data, start, a, b) for a, b in ((0, 4), (5, 7), (8, 10)))
    hour, minute, second = (_digits(data, start, a, b) for a, b in ((11, 13), (14, 16), (17, 19)))
    ms = np.where(np.diff(offsets) == 24, _digits(data, start, 20, 23), 0)
    months = (year - 1970) * 12 + np.clip(month, 1, 12) - 1
    first = months.astype("datetime64[M]").astype("datetime64[D]").astype(np.int64)
    after = (months + 1).astype("datetime64[M]").astype("datetime64[D]").astype(np.int64)
    converted = (
        (year >= 1)
        & (month >= 1)
        & (month <= 12)
        & (day >= 1)
        & (day <= after - first)
        & (hour < 24)
        & (minute < 60)
        & (second < 60)
    )
    us = (first + day - 1) * _US_PER_DAY + ((hour * 60 + minute) * 60 + second) * 1_000_000
    return pa.array(us + ms * 1000).view(ARROW_TYPES["timestamp"]), converted


def _typed(spec: FieldSpec, token: pa.Array) -> tuple[pa.Array, np.ndarray | None]:
    """One field's canonical tokens -> (typed values, converted or None when always)."""
    if spec.kind == "string":
        return token, None
    if spec.kind == "timestamp":
        return _iso_us(token)
    if spec.nullable:  # a number or null
        token = pc.if_else(pc.equal(token, "null"), None, token)
    if spec.kind == "int":
        return pc.cast(token, pa.int32()), None  # 9 digits at most: always an int32
    # json.loads reads "-0" as the int 0 (then 0.0), where a float parser gives -0.0.
    token = pc.if_else(pc.equal(token, "-0"), "0", token)
    return pc.cast(token, pa.float64()), None


def _utf8(values: pa.Array) -> pa.Array:
    """Binary values -> strings; a value that is not valid UTF-8 becomes null."""
    try:
        return values.cast(pa.string())
    except pa.ArrowInvalid:  # rare: find the bad values one by one
        ok = [v is not None and _decodes(v) for v in values.to_pylist()]
        return pc.if_else(pa.array(ok), values, pa.scalar(None, pa.binary())).cast(pa.string())


def _decodes(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _reason_arrow(typed: dict[str, pa.Array]) -> pa.Array:
    """The first broken rule's reason per row (null: valid), in the contract's order."""
    n = len(typed[FIELDS[0].name])
    checks = [
        (rule.broken_arrow(typed[spec.name]), rule.message)
        for spec in FIELDS
        for rule in rules_for(spec.name)
    ]
    ahead_us = MAX_AHEAD_OF_PRODUCER // timedelta(microseconds=1)
    event_us = pc.cast(typed["event_time"], pa.int64())
    produced_us = pc.cast(typed["produced_at"], pa.int64())
    checks.append((pc.greater(event_us, pc.add(produced_us, ahead_us)), AHEAD_OF_PRODUCER))
    reason = pa.nulls(n, pa.string())
    for broken, message in reversed(checks):  # the first broken check is written last
        reason = pc.if_else(pc.fill_null(broken, False), message, reason)
    return reason


def split_canonical(kafka: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Kafka rows -> (``CLASSIFIED_SCHEMA`` rows of the canonical records, the others).

    Reads columns value (binary), topic, partition, offset, timestamp. A record is
    typed and checked here when it is in canonical form (``CANONICAL``, valid UTF-8)
    and its timestamps convert; its ``reason`` is then the one ``validate`` gives, and
    a valid one drops its bytes (``value`` null): only quarantine keeps them. The other
    records come back as they were, for ``classify_exact``. Pure pyarrow and NumPy.
    """
    kafka = kafka.select(list(KAFKA_COLUMNS)).combine_chunks()
    text = _utf8(kafka.column("value").combine_chunks())
    canonical = pc.fill_null(pc.match_substring_regex(text, CANONICAL), False)
    rows = kafka.filter(canonical)
    pieces = pc.list_flatten(pc.split_pattern(text.filter(canonical), '"'))
    base = np.arange(len(rows), dtype=np.int64) * _PIECES
    typed: dict[str, pa.Array] = {}
    converted = np.ones(len(rows), bool)
    for spec in FIELDS:
        token = pieces.take(pa.array(base + _PIECE_AT[spec.name]))
        if spec.kind not in ("string", "timestamp"):
            token = pc.utf8_slice_codeunits(token, 1, -1)  # ":<token>," -> <token>
        typed[spec.name], ok = _typed(spec, token)
        if ok is not None:
            converted &= ok
    reason = _reason_arrow(typed)
    # A valid record drops its bytes: only quarantine keeps them.
    value = pc.if_else(pc.is_valid(reason), rows.column("value"), pa.scalar(None, pa.binary()))
    fast = pa.table({"value": value, **{c: rows.column(c) for c in KAFKA_COLUMNS[1:]}, **typed})
    fast = fast.append_column("reason", reason).cast(CLASSIFIED_SCHEMA)
    if converted.all():
        return fast, kafka.filter(pc.invert(canonical))
    # A canonical-looking record whose timestamp does not convert takes the exact path,
    # which words the reason.
    handed_on = np.ones(len(kafka), bool)
    handed_on[np.flatnonzero(canonical.to_numpy(zero_copy_only=False))] = ~converted
    return fast.filter(pa.array(converted)), kafka.filter(pa.array(handed_on))

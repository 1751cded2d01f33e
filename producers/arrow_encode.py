"""The replay's record bytes for a whole Arrow table at once: keys, open bodies, closings.

A record's value is ``schemas.transaction.encode`` of the event with ``produced_at``
set at send time. ``produced_at`` is the contract's last field, so the value splits
into an *open body* (every other field, known before sending, encoded here for a whole
table at once) and a *closing* ``,"produced_at":"...Z"}`` (one per millisecond):
``open_body + closing(ms)`` is byte for byte ``encode`` of the event produced at ``ms``.

Every piece of text comes from the contract's wire format, its one definition: the
text around the values is ``wire_frame``, each value's text ``wire_value``. Each
column becomes its JSON text in Arrow: strings are quoted (``wire_value`` writes the
rare value that needs escaping), other columns are written by ``wire_value`` once per
distinct value (a day, a price, a channel) and spread with ``take``. A row with a
null in a field ``encode`` leaves out is written by ``encode`` itself.
tests/unit/test_replay.py proves the bytes equal ``encode``'s.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from schemas.transaction import FIELD_NAMES, FIELDS, encode, wire_frame, wire_value

if TYPE_CHECKING:
    import pyarrow as pa

if FIELD_NAMES[-1] != "produced_at":  # the split into open body and closing relies on it
    raise RuntimeError("the contract's last field must be produced_at")

_FRAME = wire_frame(FIELD_NAMES)
_BODY = tuple(zip(FIELDS[:-1], _FRAME[:-2], strict=True))  # (field, the text before its value)
_BEFORE_PRODUCED_AT, _END = _FRAME[-2:]

# The characters ``wire_value`` escapes in a string, derived from it. They are all ASCII
# (tests/unit/test_replay.py checks every code point), and no byte of a longer UTF-8
# character is ASCII, so a string none of whose bytes is one of them is written as
# itself between quotes.
_ESCAPED = [code for code in range(128) if wire_value(chr(code)) != f'"{chr(code)}"']
_ESCAPED_PATTERN = "[" + "".join(f"\\x{code:02x}" for code in _ESCAPED) + "]"  # RE2's syntax
_ESCAPED_BELOW = next(code for code in range(129) if code not in _ESCAPED)  # the controls
_ESCAPED_ABOVE = [code for code in _ESCAPED if code > _ESCAPED_BELOW]  # '"' and '\'


def open_body(event: Any) -> bytes:
    """``encode(event)`` up to its ``produced_at``: every other field, the object left open."""
    return encode({**event, "produced_at": None})[: -len(_END)]


@lru_cache(maxsize=1)  # consecutive records mostly share their millisecond
def closing(ms: int) -> bytes:
    """What completes an open body sent at ``ms`` (ms since the Unix epoch): produced_at, ``}``."""
    produced_at = datetime.fromtimestamp(ms // 1000, UTC).replace(microsecond=ms % 1000 * 1000)
    return (_BEFORE_PRODUCED_AT + wire_value(produced_at) + _END).encode()


def encode_bodies(table: pa.Table) -> list[bytes]:
    """Every row's open body: ``open_body(row)``, for the whole table at once.

    Columns other than the contract's are ignored; a missing column counts as null,
    as a missing key does for ``encode``.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    n = table.num_rows
    if n == 0:
        return []
    table = table.combine_chunks()
    parts: list[Any] = []
    null = wire_value(None)
    for spec, before in _BODY:
        parts.append(before)
        column = table.column(spec.name) if spec.name in table.column_names else None
        if column is not None and column.num_chunks:
            texts = _json_texts(column.chunk(0))
        else:
            texts = pa.nulls(n, pa.string())
        if spec.nullable:  # written as null; any other null field is left out
            texts = pc.fill_null(texts, null)
        parts.append(texts)
    joined = pc.binary_join_element_wise(*parts, "")
    bodies: list[bytes] = _pylist(joined.cast(pa.binary()))
    if joined.null_count:  # a null field that encode leaves out
        for i in pc.indices_nonzero(joined.is_null()).to_pylist():
            bodies[i] = open_body(table.slice(i, 1).to_pylist()[0])
    return bodies


def event_keys(table: pa.Table) -> list[bytes]:
    """Every row's record key: ``str(customer_id)`` in UTF-8."""
    import pyarrow as pa

    column = table.column("customer_id")
    if pa.types.is_string(column.type) and not column.null_count:
        return _pylist(column.cast(pa.binary()))
    return [str(v).encode() for v in column.to_pylist()]


def _json_texts(column: pa.Array) -> pa.Array:
    """Each value's JSON text as ``encode`` writes it (nulls stay null)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return _json_strings(column)
    try:  # few distinct values (days, prices, channels): write each once
        coded = pc.dictionary_encode(column)
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
        return pa.array([None if v is None else wire_value(v) for v in column.to_pylist()])
    texts = pa.array([wire_value(v) for v in coded.dictionary.to_pylist()], pa.string())
    return texts.take(coded.indices)


def _json_strings(column: pa.Array) -> pa.Array:
    """JSON string literals of a string column (nulls stay null)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    quoted = pc.binary_join_element_wise('"', column, '"', "")
    data = column.buffers()[2]
    if data is None or not len(data):
        return quoted
    raw = np.frombuffer(data, dtype=np.uint8)  # may hold bytes outside a slice: only a hint
    escaped = raw < _ESCAPED_BELOW
    for code in _ESCAPED_ABOVE:
        escaped |= raw == code
    if not bool(escaped.any()):
        return quoted
    mask = pc.fill_null(pc.match_substring_regex(column, _ESCAPED_PATTERN), False)
    if not pc.any(mask).as_py():
        return quoted
    texts = [wire_value(v) for v in column.filter(mask).to_pylist()]
    return pc.replace_with_mask(quoted, mask, pa.array(texts, quoted.type))


def _pylist(column: pa.Array | pa.ChunkedArray) -> list[Any]:
    """``column.to_pylist()`` of a binary column, several times faster (no scalar per row)."""
    return column.to_numpy(zero_copy_only=False).tolist()

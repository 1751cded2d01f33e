"""Contract validation in Spark, derived from ``schemas.transaction.FIELDS`` and ``RULES``.

The Kafka value is parsed into a VARIANT (``try_parse_json``), which keeps the
JSON type of every value, so the checks of ``schemas.transaction`` can be made
with the *same reason string* the producer-side ``validate`` returns: the type
checks here mirror ``_parse`` there, and every value rule is the Spark reading of
a ``schemas.rules.Rule`` (``Rule.broken_column``), so no rule is restated here.
tests/streaming/test_parse.py proves both validators agree record by record. Checks
run in the contract's order: top-level object, then per field (present, type, then
its rules), then unknown extra fields; the first failing check is the reason.

``classify_arrow(spark, kafka)`` is the transform the job runs on each micro-batch, on
the driver as Arrow: Kafka rows (value, topic, partition, offset, timestamp) -> the
same rows plus the typed contract columns and ``reason`` (null for a valid event).
Records in the producer's canonical form (``CANONICAL``, nearly all) are typed and
checked with pyarrow (``split_canonical``) on the driver's cores; the rest go to
``classify_exact``, the VARIANT reading above, in one small Spark job.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from schemas.transaction import (
    AHEAD_OF_PRODUCER,
    EXPECTED,
    FIELD_NAMES,
    FIELDS,
    MALFORMED_JSON,
    MAX_AHEAD_OF_PRODUCER,
    MISSING,
    NOT_AN_OBJECT,
    NULL,
    UNKNOWN_FIELD,
    UNPARSEABLE_TIMESTAMP,
    FieldSpec,
    rules_for,
)

# Python type names (what ``type(value).__name__`` gives after json.loads) per variant type.
_PY_TYPE = (
    ("STRING", "str"),
    ("BOOLEAN", "bool"),
    ("VOID", "NoneType"),
    ("OBJECT", "dict"),
    ("ARRAY", "list"),
    ("DOUBLE", "float"),
    ("FLOAT", "float"),
)
_INT_TYPES = ("TINYINT", "SMALLINT", "INT", "BIGINT")


def _py_type_name(variant_type: Column, token: Column | None = None) -> Column:
    """The Python type name json.loads would give a value of this variant type.

    ``token`` is the value's JSON text: variant decimals drop a trailing ``.0``, but
    json.loads gives float for ``1.0`` and int for ``1``, so the text decides.
    """
    expr = F.when(variant_type.isin(*_INT_TYPES), F.lit("int"))
    for prefix, name in _PY_TYPE:
        expr = expr.when(variant_type.startswith(prefix), F.lit(name))
    # json.loads gives int for digits-only numbers and float otherwise. A DECIMAL with a
    # non-zero scale had a fraction, so only scale 0 needs the JSON text (a re-parse:
    # ``And`` short-circuits, so the token is only read for those rows).
    if token is not None:
        digits_only = variant_type.rlike(r"^DECIMAL\([0-9]+,0\)$") & token.rlike(r"^-?[0-9]+$")
        expr = expr.when(digits_only, F.lit("int"))
    expr = expr.when(variant_type.startswith("DECIMAL"), F.lit("float"))
    return expr.otherwise(F.lower(variant_type))


def _py_repr(text: Column) -> Column:
    """Python's repr of a simple string (single-quoted; good for ids and timestamps)."""
    return F.concat(F.lit("'"), text, F.lit("'"))


def _field(spec: FieldSpec) -> tuple[Column, Column]:
    """(reason or null, typed value) for one field, from the staged columns of ``classify_exact``.

    Reads ``raw_<name>`` (the field's VARIANT, SQL null when the key is missing),
    ``type_<name>`` (its variant type) and ``value_text``.
    """
    name = spec.name
    raw = F.col(f"raw_{name}")
    token = F.get_json_object(F.col("value_text"), f"$.{name}")  # only evaluated for decimals
    pytype = _py_type_name(F.col(f"type_{name}"), token)
    text = F.try_variant_get(raw, "$", "string")

    kind = spec.kind
    wrong_type = F.concat(F.lit("wrong type "), pytype, F.lit(f", expected {EXPECTED[kind]}"))
    if kind == "string":
        typed = checked = text
        type_ok = pytype == "str"
    elif kind == "timestamp":
        parsed = F.try_to_timestamp(text)
        # Spark's calendar has a year 0 (and beyond 9999); Python's datetime has not.
        typed = checked = F.when(F.year(parsed).between(1, 9999), parsed)
        type_ok = pytype == "str"
    elif kind == "int":
        # The rules read the value as a bigint (so "out of int range" can be told);
        # the typed column is the int, which is null exactly when that rule fails.
        checked = F.try_variant_get(raw, "$", "bigint")
        typed = F.try_variant_get(raw, "$", "int")  # ANSI mode: no overflowing casts
        type_ok = pytype == "int"
    else:  # double
        typed = checked = F.try_variant_get(raw, "$", "double")
        type_ok = pytype.isin("int", "float")
    problem = F.when(~type_ok, wrong_type)
    if kind == "timestamp":
        unparseable = F.concat(
            F.lit(f"{UNPARSEABLE_TIMESTAMP} "), _py_repr(F.substring(text, 1, 40))
        )
        problem = problem.when(typed.isNull(), unparseable)
    # A value of the right JSON type that Spark cannot even convert (a number beyond
    # bigint or double) breaks the first rule of its kind: hence null counts as broken.
    for rule in rules_for(name):
        broken = F.coalesce(rule.broken_column(checked), F.lit(True))
        problem = problem.when(broken, F.lit(rule.reason))

    is_none = raw.isNull() | F.is_variant_null(raw)
    if spec.nullable:
        reason = F.when(is_none, F.lit(None).cast("string")).otherwise(problem)
        typed = F.when(~is_none, typed)
    else:
        reason = F.when(raw.isNull(), F.lit(MISSING)).when(is_none, F.lit(NULL))
        reason = reason.otherwise(problem)
    return F.concat(F.lit(f"{name}: "), reason), typed


KAFKA_COLUMNS = ("value", "topic", "partition", "offset", "timestamp")


# The fast path: a record in the producer's own canonical form (compact JSON, the
# contract's keys in order, no escapes, plain numbers, ISO timestamps with a Z) has
# exactly the JSON types the contract wants, so Spark's typed ``from_json`` reads it as
# json.loads would, and only the value rules remain to check. Any other record (spaces,
# another key order, an escape, an exponent, a missing or extra key) takes the exact
# path below. tests/streaming/test_parse.py runs every probe through both.
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
def _ahead_of_producer(event_time: Column, produced_at: Column) -> Column:
    """The rule across fields: the reason when ``event_time`` is too far after produced_at."""
    ahead = MAX_AHEAD_OF_PRODUCER // timedelta(seconds=1)
    return F.when(
        event_time > produced_at + F.make_interval(secs=F.lit(ahead)), F.lit(AHEAD_OF_PRODUCER)
    )


def classify_exact(raw: DataFrame) -> DataFrame:
    """Kafka rows -> typed contract columns + ``reason``, for any record: the JSON read as a
    VARIANT, every check worded exactly.

    Reads columns value (binary), topic, partition, offset, timestamp. Output keeps
    them and adds every contract field (typed as ``spark_schema()``) and ``reason``.
    Three staged projections, so the JSON is parsed once per row (Spark does not
    collapse a projection that would repeat an expensive expression).
    """
    parsed = raw.select(
        *KAFKA_COLUMNS,
        F.col("value").cast("string").alias("value_text"),
    ).withColumn("obj", F.try_parse_json("value_text"))
    staged = parsed.select(
        *KAFKA_COLUMNS,
        "value_text",
        "obj",
        F.schema_of_variant("obj").alias("type_top"),
        *[F.variant_get("obj", f"$.{n}", "variant").alias(f"raw_{n}") for n in FIELD_NAMES],
    ).select(
        "*",
        *[F.schema_of_variant(f"raw_{n}").alias(f"type_{n}") for n in FIELD_NAMES],
    )
    top = F.col("type_top")
    text = F.col("value_text")
    top_reason = (
        F.when(
            F.col("value").isNull() | ~F.is_valid_utf8(text),
            F.lit(f"{MALFORMED_JSON}: UnicodeDecodeError"),
        )
        .when(F.col("obj").isNull(), F.lit(f"{MALFORMED_JSON}: JSONDecodeError"))
        .when(
            ~top.startswith("OBJECT"),
            F.concat(F.lit(f"{NOT_AN_OBJECT} ("), _py_type_name(top), F.lit(")")),
        )
    )
    reasons, typed = [top_reason], {}
    for spec in FIELDS:
        reason, value = _field(spec)
        reasons.append(reason)
        typed[spec.name] = value
    reasons.append(_ahead_of_producer(typed["event_time"], typed["produced_at"]))
    # Extra keys: checked last, and only for rows whose fields all passed. The top-level
    # schema ("OBJECT<k: T, ...>") usually settles it without re-parsing: a flat object
    # whose key count equals the number of contract fields present has no extra key
    # (an odd key name can only raise the ": " count, sending the row to the slow path).
    present = sum(F.col(f"raw_{n}").isNotNull().cast("int") for n in FIELD_NAMES)
    flat_and_known = (F.size(F.split(top, "<")) == 2) & (F.size(F.split(top, ": ")) - 1 == present)
    extra = F.array_sort(
        F.array_except(F.json_object_keys(text), F.array(*map(F.lit, FIELD_NAMES)))
    )
    reasons.append(
        F.when(flat_and_known, F.lit(None).cast("string")).when(
            F.size(extra) > 0, F.concat(F.lit(f"{UNKNOWN_FIELD} "), extra[0])
        )
    )
    return staged.select(
        *KAFKA_COLUMNS,
        *[typed[n].alias(n) for n in FIELD_NAMES],
        F.coalesce(*reasons).alias("reason"),
    )


# --- The driver-side fast path ----------------------------------------------------------
#
# The same canonical form, read with pyarrow from the Kafka bytes Spark collected. In a
# canonical record every string value is quoted and holds no quote (no escapes), so
# splitting the record at its quotes puts each field's value at a fixed piece: the
# string and timestamp values whole, the numbers as ":<token>," between two keys. Each
# token then already has the JSON type the contract wants, and its conversion is the
# one json.loads makes (tests/unit/test_parse_arrow.py checks values and reasons against
# the Python validator; tests/streaming/test_parse.py against Spark's).

_ARROW_TYPES = {
    "string": pa.string(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "int": pa.int32(),
    "double": pa.float64(),
}
#: The Arrow schema of ``classify_exact``'s output (what Spark's ``toArrow`` gives for it).
CLASSIFIED_SCHEMA = pa.schema(
    [
        ("value", pa.binary()),
        ("topic", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("timestamp", pa.timestamp("us", tz="UTC")),
        *[(f.name, _ARROW_TYPES[f.kind]) for f in FIELDS],
        ("reason", pa.string()),
    ]
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
        return pa.array([], _ARROW_TYPES["timestamp"]), np.ones(0, bool)
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
    return pa.array(us + ms * 1000).view(_ARROW_TYPES["timestamp"]), converted


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
    a valid one drops its bytes (``value`` null), as in ``tag``. The other records come
    back as they were, for ``classify_exact``. Pure pyarrow and NumPy.
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


_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max(1, pa.cpu_count()), thread_name_prefix="pulse-parse")
    return _POOL


def classify_arrow(spark: SparkSession, kafka: pa.Table) -> pa.Table:
    """The job's transform of a batch on the driver: Kafka rows (Arrow) -> ``CLASSIFIED_SCHEMA``.

    Canonical records are typed and checked by ``split_canonical``, in slices on the
    driver's cores (pyarrow's kernels release the GIL); the others, if any, by
    ``classify_exact`` in one small Spark job. Canonical rows come first, each group
    in its input order.
    """
    slices = max(1, min(pa.cpu_count(), len(kafka) // 20_000))
    bounds = [len(kafka) * k // slices for k in range(slices + 1)]
    parts = list(
        _pool().map(
            split_canonical,
            [kafka.slice(a, b - a) for a, b in zip(bounds[:-1], bounds[1:], strict=True)],
        )
    )
    fast = pa.concat_tables([f for f, _ in parts])
    others = pa.concat_tables([o for _, o in parts])
    if not len(others):
        return fast
    exact = classify_exact(spark.createDataFrame(others)).toArrow()
    return pa.concat_tables([fast, exact.cast(CLASSIFIED_SCHEMA)])


#: The quarantine's columns: the raw bytes, where they were in Kafka, and why.
QUARANTINE_COLUMNS = ("value", "topic", "partition", "offset", "reason", "kafka_ts")

"""Contract validation in Spark, derived from ``schemas.transaction.FIELDS`` and ``RULES``.

The Kafka value is parsed into a VARIANT (``try_parse_json``), which keeps the
JSON type of every value, so the checks of ``schemas.transaction`` can be made
with the *same reason string* the producer-side ``validate`` returns: the type
checks here mirror ``_parse`` there, and every value rule is the Spark reading of
a ``schemas.rules.Rule`` (``Rule.broken_column``), so no rule is restated here.
tests/streaming/test_parse.py proves both validators agree record by record. Checks
run in the contract's order: top-level object, then per field (present, type, then
its rules), then unknown extra fields; the first failing check is the reason.

``classify(raw)`` is a pure transform: Kafka rows (value, topic, partition,
offset, timestamp) -> the same rows plus the typed contract columns and
``reason`` (null for a valid event). Stateless, so it works on batch and
streaming DataFrames alike.
"""

from __future__ import annotations

from datetime import timedelta

from pyspark.sql import Column, DataFrame
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
    spark_schema,
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
    """(reason or null, typed value) for one field, from the staged columns of ``classify``.

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
        typed = checked = F.try_to_timestamp(text)
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
    "timestamp": r'"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{3})?Z"',
    "int": r"-?(?:0|[1-9][0-9]{0,8})",  # 9 digits at most: always an int32
    "double": r"-?(?:0|[1-9][0-9]{0,14})(?:\.[0-9]{1,17})?",  # no exponent, never infinite
}
CANONICAL = (
    "^\\{"
    + ",".join(f'"{f.name}":(?:{_TOKENS[f.kind]}{"|null" if f.nullable else ""})' for f in FIELDS)
    + "\\}$"
)
_JSON_OPTIONS = {"timestampFormat": "yyyy-MM-dd'T'HH:mm:ss[.SSS]XXX", "mode": "PERMISSIVE"}


def tag(raw: DataFrame) -> DataFrame:
    """Kafka rows -> ``classify``'s columns for canonical records, plus ``fast``.

    One pass of the regex and ``from_json``. Where ``fast`` (canonical, and every
    required value converted) the contract columns and ``reason`` are final; the other
    rows keep only their Kafka columns, for ``classify_exact``. A valid fast record
    drops its bytes (only quarantine keeps them).
    """
    text = F.col("value").cast("string")
    canonical = text.rlike(CANONICAL) & F.is_valid_utf8(text)
    j = F.when(canonical, F.from_json(text, spark_schema(), _JSON_OPTIONS))
    # A canonical-looking record whose value still does not convert (a 13th month)
    # takes the exact path, which words the reason.
    # Two projections: read back as a column, ``j`` is parsed once per row (inlined,
    # each field reference would re-run from_json inside the CASE).
    converted = F.lit(True)
    for spec in FIELDS:
        if not spec.nullable:
            converted = converted & F.col("j")[spec.name].isNotNull()
    reasons = [
        F.when(rule.broken_column(F.col(f"j.{spec.name}")), F.lit(rule.message))
        for spec in FIELDS
        for rule in rules_for(spec.name)
    ]
    reasons.append(_ahead_of_producer(F.col("j.event_time"), F.col("j.produced_at")))
    fast = F.coalesce(converted, F.lit(False))
    reason = F.when(fast, F.coalesce(*reasons))
    value = F.when(~fast | reason.isNotNull(), F.col("value"))
    return raw.select(*KAFKA_COLUMNS, j.alias("j")).select(
        value.alias("value"),
        *KAFKA_COLUMNS[1:],
        *[F.col(f"j.{n}").alias(n) for n in FIELD_NAMES],
        reason.alias("reason"),
        fast.alias("fast"),
    )


def classify(raw: DataFrame) -> DataFrame:
    """Kafka rows -> Kafka rows + typed contract columns + ``reason`` (null = valid).

    Reads columns value (binary), topic, partition, offset, timestamp (twice: hand it
    a batch that is cheap to re-read). Canonical records (``CANONICAL``) are typed by
    ``from_json`` and checked against the value rules; the others take
    ``classify_exact``. Both give the same reasons.
    """
    tagged = tag(raw)
    others = tagged.where(~F.col("fast")).select(*KAFKA_COLUMNS)
    return tagged.where("fast").drop("fast").unionByName(classify_exact(others))


def _ahead_of_producer(event_time: Column, produced_at: Column) -> Column:
    """The rule across fields: the reason when ``event_time`` is too far after produced_at."""
    ahead = MAX_AHEAD_OF_PRODUCER // timedelta(seconds=1)
    return F.when(
        event_time > produced_at + F.make_interval(secs=F.lit(ahead)), F.lit(AHEAD_OF_PRODUCER)
    )


def classify_exact(raw: DataFrame) -> DataFrame:
    """``classify`` for any record: the JSON read as a VARIANT, every check worded exactly.

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


#: The quarantine's columns: the raw bytes, where they were in Kafka, and why.
QUARANTINE_COLUMNS = ("value", "topic", "partition", "offset", "reason", "kafka_ts")

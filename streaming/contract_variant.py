"""The contract checked in Spark on any record (``classify_exact``), derived from
``schemas.transaction.FIELDS`` and ``RULES``.

The Kafka value is parsed into a VARIANT (``try_parse_json``), which keeps the
JSON type of every value, so the checks of ``schemas.transaction`` can be made
with the *same reason string* the producer-side ``validate`` returns: the type
checks here mirror ``_parse`` there, and every value rule is the Spark reading of
a ``schemas.rules.Rule`` (``Rule.broken_column``), so no rule is restated here.
tests/spark/test_parse.py proves both validators agree record by record. Checks
run in the contract's order: top-level object, then per field (present, type, then
its rules), then unknown extra fields; the first failing check is the reason.

The stream sends here the records the canonical fast path
(``streaming.contract_canonical``) hands on (``streaming.parse.classify_arrow``).
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
)
from streaming.kafka_rows import KAFKA_COLUMNS

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

"""Contract validation in Spark, derived from ``schemas.transaction.FIELDS``.

The Kafka value is parsed into a VARIANT (``try_parse_json``), which keeps the
JSON type of every value, so each field rule of ``schemas.transaction`` can be
checked with the *same reason string* the producer-side ``validate`` returns
(tests/streaming/test_parse.py proves they agree record by record). Checks run in
the contract's order: top-level object, then per field (present, type, rule),
then unknown extra fields; the first failing check is the reason.

``classify(raw)`` is a pure transform: Kafka rows (value, topic, partition,
offset, timestamp) -> the same rows plus the typed contract columns and
``reason`` (null for a valid event). Stateless, so it works on batch and
streaming DataFrames alike.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from schemas.transaction import FIELD_NAMES, FIELDS, INT32, MAX_STRING_LEN, SOURCES, FieldSpec

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


def _rule(spec: FieldSpec, value: Column) -> Column | None:
    """The field's extra rule as a Spark expression giving the problem or null.

    Mirrors the check functions attached to the FieldSpecs in schemas.transaction.
    """
    name = spec.check.__name__ if spec.check else None
    if name is None:
        return None
    if name == "_non_empty":
        return F.when(value.rlike(r"^\s*$"), F.lit("is empty"))
    if name == "_non_negative":
        return F.when(value < 0, F.lit("is negative"))
    if name == "_known_source":
        return F.when(~value.isin(*SOURCES), F.lit(f"is not one of {', '.join(SOURCES)}"))
    if name == "_channel":
        return F.when(~value.isin(1, 2), F.lit("is not 1 or 2"))
    if name == "_non_zero":
        return F.when(value == 0, F.lit("is zero"))
    raise ValueError(f"no Spark translation for rule {name} of field {spec.name}")


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

    if spec.kind == "string":
        typed = text
        type_problem = F.when(
            pytype != "str", F.concat(F.lit("wrong type "), pytype, F.lit(", expected string"))
        ).when(F.length(text) > MAX_STRING_LEN, F.lit(f"longer than {MAX_STRING_LEN} characters"))
    elif spec.kind == "timestamp":
        typed = F.try_to_timestamp(text)
        type_problem = F.when(
            pytype != "str",
            F.concat(F.lit("wrong type "), pytype, F.lit(", expected ISO-8601")),
        ).when(
            typed.isNull(),
            F.concat(F.lit("unparseable timestamp "), _py_repr(F.substring(text, 1, 40))),
        )
    elif spec.kind == "int":
        as_long = F.try_variant_get(raw, "$", "bigint")
        typed = F.try_variant_get(raw, "$", "int")  # ANSI mode: no overflowing casts
        type_problem = F.when(
            pytype != "int", F.concat(F.lit("wrong type "), pytype, F.lit(", expected int"))
        ).when(
            as_long.isNull() | (as_long < INT32[0]) | (as_long > INT32[1]),
            F.lit("out of int range"),
        )
    else:  # double
        typed = F.try_variant_get(raw, "$", "double")
        type_problem = F.when(
            ~pytype.isin("int", "float"),
            F.concat(F.lit("wrong type "), pytype, F.lit(", expected number")),
        ).when(typed.isNull() | F.isnan(typed), F.lit("not a finite number"))

    is_none = raw.isNull() | F.is_variant_null(raw)
    rule = _rule(spec, typed)
    problem = type_problem if rule is None else F.coalesce(type_problem, rule)
    if spec.nullable:
        reason = F.when(is_none, F.lit(None).cast("string")).otherwise(problem)
        typed = F.when(~is_none, typed)
    else:
        reason = F.when(raw.isNull(), F.lit("missing")).when(is_none, F.lit("null"))
        reason = reason.otherwise(problem)
    return F.concat(F.lit(f"{name}: "), reason), typed


KAFKA_COLUMNS = ("value", "topic", "partition", "offset", "timestamp")


def classify(raw: DataFrame) -> DataFrame:
    """Kafka rows -> Kafka rows + typed contract columns + ``reason`` (null = valid).

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
            F.lit("malformed JSON: UnicodeDecodeError"),
        )
        .when(F.col("obj").isNull(), F.lit("malformed JSON: JSONDecodeError"))
        .when(
            ~top.startswith("OBJECT"),
            F.concat(F.lit("not a JSON object ("), _py_type_name(top), F.lit(")")),
        )
    )
    reasons, typed = [top_reason], {}
    for spec in FIELDS:
        reason, value = _field(spec)
        reasons.append(reason)
        typed[spec.name] = value
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
            F.size(extra) > 0, F.concat(F.lit("unknown field "), extra[0])
        )
    )
    return staged.select(
        *KAFKA_COLUMNS,
        *[typed[n].alias(n) for n in FIELD_NAMES],
        F.coalesce(*reasons).alias("reason"),
    )


def valid_events(classified: DataFrame) -> DataFrame:
    """Valid rows only: the contract columns plus the Kafka timestamp as ``kafka_ts``."""
    return classified.where(F.col("reason").isNull()).select(
        *FIELD_NAMES, F.col("timestamp").alias("kafka_ts")
    )


def quarantine_rows(classified: DataFrame) -> DataFrame:
    """Invalid rows in the quarantine layout: raw value bytes, topic, partition, offset, reason."""
    return classified.where(F.col("reason").isNotNull()).select(
        "value", "topic", "partition", "offset", "reason", F.col("timestamp").alias("kafka_ts")
    )

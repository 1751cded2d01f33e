"""`pulse sql "SELECT ..."`: read-only SQL over the catalog's named tables (docs/sql.md).

The query runs in DuckDB over Arrow datasets (``storage.sql``, ``storage.catalog``);
this module reads the query (an argument, or ``-`` for stdin) and prints its rows:

- ``--format table`` (the default): aligned columns for a terminal, numbers right-aligned,
  floats rounded for reading (2 decimals from 1 up, 6 significant digits below), at most
  ``--max-rows`` rows (1,000) and then a line saying there are more;
- ``--format csv``: a header and every row (RFC 4180, floats in full precision,
  timestamps ISO 8601 in UTC, lists and structs as JSON);
- ``--format json``: one JSON array of objects, one object a line, every row.

csv and json stream: the result is never held whole in memory.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import decimal
import json
import math
import os
import sys
from collections.abc import Iterable, Iterator
from typing import IO, Any

from pulse.commands.args import positive_int
from runtime.errors import PulseError
from runtime.settings import Settings

FORMATS = ("table", "csv", "json")
NUMERIC = "ifud"  # Arrow type ids whose values are right-aligned: ints, floats, decimals


def _query_text(args: argparse.Namespace) -> str:
    if args.query is None:
        raise PulseError('give a query, pulse sql "SELECT ...", or - to read it from stdin, '
                         "or --tables")  # fmt: skip
    if args.query == "-":
        return sys.stdin.read()
    return str(args.query)


def _sql(args: argparse.Namespace, settings: Settings) -> int:
    out = sys.stdout
    try:
        if args.tables:
            from storage.catalog import listing

            table = listing(settings)
            write_rows(out, args.format, table.schema, iter(table.to_batches()), args.max_rows,
                       null="absent")  # fmt: skip
            return 0
        from storage.sql import run

        text = _query_text(args)
        with run(settings, text) as result:
            write_rows(out, args.format, result.schema, result.batches, args.max_rows)
        return 0
    except BrokenPipeError:  # `pulse sql ... | head`: the reader has what it wanted
        # Python's advice: point stdout at devnull, so the flush at exit does not fail too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def write_rows(
    out: IO[str],
    fmt: str,
    schema: Any,
    batches: Iterator[Any],
    max_rows: int = 1000,
    null: str = "NULL",
) -> int:
    """Print ``batches`` (Arrow record batches of ``schema``) as ``fmt``; returns rows."""
    if fmt == "csv":
        return _write_csv(out, schema, batches)
    if fmt == "json":
        return _write_json(out, batches)
    return _write_table(out, schema, batches, max_rows, null)


def _rows(batches: Iterable[Any]) -> Iterator[dict[str, Any]]:
    for batch in batches:
        yield from batch.to_pylist()


def _write_csv(out: IO[str], schema: Any, batches: Iterator[Any]) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(schema.names)
    n = 0
    for row in _rows(batches):
        writer.writerow(["" if v is None else _text(v, exact=True) for v in row.values()])
        n += 1
    out.flush()
    return n


def _write_json(out: IO[str], batches: Iterator[Any]) -> int:
    n = 0
    out.write("[")
    for row in _rows(batches):
        out.write(("\n" if n == 0 else ",\n") + json.dumps(_jsonable(row), ensure_ascii=False))
        n += 1
    out.write("\n]\n" if n else "]\n")
    out.flush()
    return n


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dt.datetime | dt.date | dt.time | dt.timedelta):
        return _text(value, exact=True)
    if isinstance(value, bytes):
        return value.hex()
    return value


def _text(value: Any, exact: bool = False) -> str:
    """One value as text: exact (csv) or rounded for reading (table)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if exact or not math.isfinite(value):
            return repr(value)
        if value.is_integer() and abs(value) < 1e15:
            return f"{value:.0f}"
        return f"{value:.2f}" if abs(value) >= 1 else f"{value:.6g}"
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
            suffix = "Z"
        else:
            suffix = ""
        sep = "T" if exact else " "
        return value.isoformat(sep=sep) + suffix
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, list | tuple | dict):
        return json.dumps(_jsonable(value), ensure_ascii=False)
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def _write_table(
    out: IO[str], schema: Any, batches: Iterator[Any], max_rows: int, null: str
) -> int:
    names = list(schema.names)
    if names == ["explain_key", "explain_value"]:  # EXPLAIN: the plan is its text
        for row in _rows(batches):
            out.write(f"{row['explain_key']}\n{row['explain_value']}")
        return 0
    rows: list[list[str]] = []
    more = False
    for row in _rows(batches):
        if len(rows) == max_rows:
            more = True
            break
        rows.append([null if v is None else _text(v) for v in row.values()])
    right = [_is_numeric(field.type) for field in schema]
    widths = [max([len(n), *(len(r[i]) for r in rows)]) for i, n in enumerate(names)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)
        ).rstrip()

    out.write(line(names) + "\n")
    out.write(line(["-" * w for w in widths]) + "\n")
    for cells in rows:
        out.write(line([c.replace("\n", " ") for c in cells]) + "\n")
    if more:
        out.write(f"({len(rows):,} rows shown, there are more: add a LIMIT, raise --max-rows, "
                  "or use --format csv or json for every row)\n")  # fmt: skip
    else:
        out.write(f"({len(rows):,} row{'' if len(rows) == 1 else 's'})\n")
    out.flush()
    return len(rows)


def _is_numeric(arrow_type: Any) -> bool:
    import pyarrow.types as t

    return bool(t.is_integer(arrow_type) or t.is_floating(arrow_type) or t.is_decimal(arrow_type))


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `pulse sql`."""
    p = sub.add_parser(
        "sql",
        help="read-only SQL over named tables: the lake, the dimensions, the CURRENT "
        "outputs, model metrics (docs/sql.md)",
        description="Run one read-only SQL statement (DuckDB dialect) over the catalog: "
        "transactions, customers, articles, features_live, customer_view, churn_scores, "
        "customer_value, recommendations, segments, model_metrics, and <table>@<version> "
        "for one version of churn_scores, customer_value, recommendations or segments. "
        "`pulse sql --tables` lists them with their row counts.",
    )
    p.add_argument(
        "query",
        nargs="?",
        default=None,
        help='the SQL, e.g. "SELECT count(*) FROM transactions"; - reads it from stdin',
    )
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="table",
        help="table (aligned, rounded; the default), csv, or json (one array of objects)",
    )
    p.add_argument(
        "--tables",
        action="store_true",
        help="list the tables: rows (or absent), what a row is, where it comes from",
    )
    p.add_argument(
        "--max-rows",
        type=positive_int,
        default=1000,
        help="--format table prints at most N rows (default 1000)",
    )
    p.set_defaults(handler=_sql)

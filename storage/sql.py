"""Read-only SQL over the catalog (``storage.catalog``) with DuckDB: ``pulse sql``.

One query, one in-memory DuckDB connection, thrown away afterwards:

1. ``churn_scores@<version>`` written bare (or backquoted, as Spark SQL wants it) is
   rewritten to the quoted identifier ``"churn_scores@<version>"`` (``with_versions``);
   text in strings and comments is left alone;
2. the text must be exactly one statement, and a read: a SELECT (``WITH``, ``FROM``,
   ``VALUES``, ``TABLE``, ``DESCRIBE``, ``SHOW``, ``SUMMARIZE``, a ``PIVOT`` with its
   values listed are SELECTs to DuckDB) or an ``EXPLAIN`` of one (``read_only``).
   Anything else (DROP, INSERT, COPY, ATTACH, CREATE, SET, PRAGMA, CALL, INSTALL, LOAD,
   ...) is refused before anything runs;
3. the catalog names the statement uses are resolved (``catalog.resolve``: an absent one
   is an error naming what creates it) and registered as views over Arrow datasets,
   nothing read yet; a statement naming no table (``SHOW TABLES``) gets every present one;
4. then the connection loses every way out: no file system access (``read_parquet``,
   ``COPY``, ``ATTACH`` of a path fail), no extension installs or loads, no Python
   variables as tables, and the configuration is locked so no statement turns them back;
5. the statement runs; its rows come back as Arrow record batches, streamed.

Every failure is one ``PulseError`` line: a syntax error with where it is, an unknown
table with the known names, a DuckDB error with its first lines.

Time semantics: the session's time zone is UTC, so ``date_trunc('month', event_time)``
and ``event_time::date`` are UTC months and days, as everywhere in Pulse.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from runtime.errors import PulseError
from runtime.settings import Settings
from storage import catalog

#: The first word of a statement that reads (DuckDB parses each as a SELECT, or EXPLAIN).
READ_KEYWORDS = frozenset(
    {"select", "with", "from", "values", "table", "describe", "desc", "show", "summarize",
     "explain", "pivot", "unpivot", "("}
)  # fmt: skip

# A catalog name, an @, a registry version (letters, digits, '_' and '-'). Every name, not
# only the versioned ones: `model_metrics@x` is then an unknown table, not a syntax error.
_VERSIONED = "|".join(catalog.TABLES)
_BARE_VERSION = re.compile(
    rf"(?<![\w.\"@])\b({_VERSIONED})@([A-Za-z0-9][A-Za-z0-9_-]*)", re.IGNORECASE
)
# Where plain SQL text ends: a string, a quoted identifier or a comment begins.
_SPECIAL = re.compile(r"['\"`]|--|/\*|\$\$")
_WHOLE_VERSION = re.compile(rf"(?:{_VERSIONED})@[A-Za-z0-9][A-Za-z0-9_-]*", re.IGNORECASE)


def with_versions(text: str) -> str:
    """``text`` with each bare or backquoted ``<table>@<version>`` double-quoted, outside
    string literals, quoted identifiers and comments."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in "'\"":  # a string or a quoted identifier: up to its closing quote ('' escapes)
            j = i + 1
            while j < n:
                if text[j] == c:
                    if j + 1 < n and text[j + 1] == c:
                        j += 2
                        continue
                    break
                j += 1
            out.append(text[i : j + 1])
            i = j + 1
        elif text.startswith("--", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(text[i:j])
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(text[i:j])
            i = j
        elif text.startswith("$$", i):
            j = text.find("$$", i + 2)
            j = n if j < 0 else j + 2
            out.append(text[i:j])
            i = j
        elif c == "`":
            j = text.find("`", i + 1)
            j = n if j < 0 else j
            inner = text[i + 1 : j]
            out.append(f'"{inner}"' if _WHOLE_VERSION.fullmatch(inner) else text[i : j + 1])
            i = j + 1
        else:
            found = _SPECIAL.search(text, i + 1)
            j = found.start() if found else n
            out.append(_BARE_VERSION.sub(lambda m: f'"{m.group(1)}@{m.group(2)}"', text[i:j]))
            i = j
    return "".join(out)


def _duckdb() -> Any:
    import duckdb

    return duckdb


def one_line(exc: BaseException) -> str:
    """A DuckDB error as one line: its message without the caret drawing; the query line
    it points at kept (``LINE 1: ...``)."""
    lines = [line.strip() for line in str(exc).splitlines()]
    kept = [line for line in lines if line and set(line) != {"^"}]
    where = [line for line in kept if re.match(r"LINE \d+:", line)]
    message = " ".join(line for line in kept if line not in where)
    return f"{message} ({' '.join(where)})" if where else message


def read_only(text: str) -> str:
    """The one statement of ``text``, if it reads; otherwise a ``PulseError`` naming why."""
    duckdb = _duckdb()
    if not text.strip():
        raise PulseError('no SQL given: pulse sql "SELECT ..." (or - to read it from stdin)')
    try:
        statements = duckdb.extract_statements(text)
    except duckdb.ParserException as exc:
        raise PulseError(f"SQL syntax error: {_parser_message(exc)}") from None
    except duckdb.Error as exc:
        raise PulseError(f"SQL: {one_line(exc)}") from None
    if len(statements) != 1 and re.search(r"\bpivot\b", text, re.IGNORECASE):
        # DuckDB plans a PIVOT without an IN list as a CREATE TYPE of its values first.
        raise PulseError(
            "a PIVOT without an IN list creates a type first, which pulse sql does not run: "
            "name the values, PIVOT ... ON column IN ('a', 'b') USING ..."
        )
    if len(statements) != 1:
        raise PulseError(f"one statement at a time: this SQL has {len(statements)}")
    statement = statements[0]
    kind = statement.type
    first = _first_word(text)  # the text as written: DuckDB rewrites a PRAGMA's query
    if kind == duckdb.StatementType.EXPLAIN:
        # EXPLAIN ANALYZE runs its statement: only a read may follow.
        rest = re.sub(r"^\s*explain(\s+analyze)?\s*", "", statement.query, flags=re.IGNORECASE)
        try:
            inner = duckdb.extract_statements(rest)
        except duckdb.Error:  # EXPLAIN (FORMAT ...) and the like: not taken
            inner = []
        if len(inner) != 1 or inner[0].type != duckdb.StatementType.SELECT:
            raise PulseError(
                "pulse sql only reads: EXPLAIN [ANALYZE] of a SELECT only (no options); "
                "nothing was run"
            )
        ok = True
    else:
        ok = kind == duckdb.StatementType.SELECT and first in READ_KEYWORDS
    if not ok:
        what = first.upper() or kind.name
        raise PulseError(
            f"pulse sql only reads: {what} is not allowed (SELECT, WITH, DESCRIBE, SHOW, "
            "SUMMARIZE, PIVOT and EXPLAIN are); nothing was run"
        )
    return str(statement.query)


def _first_word(query: str) -> str:
    """The statement's first word (or ``(``), lower case, comments skipped."""
    tokens = _duckdb().tokenize(query)  # comments are not tokens
    if not tokens:
        return ""
    match = re.match(r"\(|[A-Za-z_]+", query[tokens[0][0] :])
    return match.group(0).lower() if match else ""


def _parser_message(exc: BaseException) -> str:
    """``syntax error at or near "x" (LINE 1: ...)`` from DuckDB's parser error."""
    text = one_line(exc)
    return re.sub(r"^Parser Error:\s*", "", text)


def table_refs(con: Any, query: str) -> set[str]:
    """The table names ``query`` reads (not its CTEs, not other schemas), from DuckDB's
    parse tree (``json_serialize_sql``: parsed, not bound, nothing run). None found, or
    a statement the serializer does not take: the empty set."""
    text = re.sub(r"^\s*explain(\s+analyze)?\s*", "", query, flags=re.IGNORECASE)
    tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [text]).fetchone()[0])
    if tree.get("error"):
        return set()
    tables: set[str] = set()
    ctes: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "BASE_TABLE" and node.get("schema_name", "") in ("", "main"):
                if node.get("catalog_name", "") in ("", "memory"):
                    tables.add(str(node["table_name"]))
            for entry in (node.get("cte_map") or {}).get("map", []):
                ctes.add(str(entry.get("key", "")).lower())
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(tree)
    return {t for t in tables if t.lower() not in ctes}


def _resolve_refs(settings: Settings, refs: set[str]) -> list[catalog.Resolved]:
    """The catalog tables among ``refs`` (an absent one: its error); a name that is
    not the catalog's is left to DuckDB, whose own tables (``pg_tables``...) it may be."""
    resolved = []
    for ref in sorted(refs):
        base, _ = catalog.split_name(ref)
        if base in catalog.TABLES:
            resolved.append(catalog.resolve(settings, ref))
    return resolved


def _present(settings: Settings) -> list[catalog.Resolved]:
    found = []
    for name in [*catalog.TABLES, *catalog.versioned_names(settings)]:
        try:
            found.append(catalog.resolve(settings, name))
        except catalog.Absent:
            continue
    return found


def _register(con: Any, settings: Settings, resolved: catalog.Resolved) -> None:
    con.register(resolved.name, catalog.arrow_source(settings, resolved))


def connect(settings: Settings, query: str, spill_dir: str) -> Any:
    """An in-memory DuckDB connection with the tables ``query`` reads registered, then
    locked (no file system, no extensions, no configuration changes). A sort or join
    larger than memory spills to ``spill_dir`` (DuckDB's default is ``./.tmp``)."""
    duckdb = _duckdb()
    con = duckdb.connect(
        ":memory:",
        config={
            "autoinstall_known_extensions": False,  # no downloads: offline machines, and
            "autoload_known_extensions": False,  # nothing but the catalog is read
            "python_enable_replacements": False,  # no Python variable is a table
            "temp_directory": spill_dir,
        },
    )
    try:
        con.execute("SET TimeZone = 'UTC'")
        refs = table_refs(con, query)
        tables = _resolve_refs(settings, refs) if refs else _present(settings)
        for resolved in tables:
            _register(con, settings, resolved)
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return con


@dataclass
class Result:
    """A running query's columns and its rows, as Arrow record batches."""

    schema: pa.Schema
    batches: Iterator[pa.RecordBatch]


@contextmanager
def run(settings: Settings, text: str, batch_rows: int = 10_000) -> Iterator[Result]:
    """Run the read-only SQL ``text`` over the catalog; yields its result, streamed.

    Raises ``PulseError`` (one line) for a statement that writes, a syntax error, an
    unknown or absent table, or a DuckDB error while it runs.
    """
    duckdb = _duckdb()
    query = read_only(with_versions(text))
    with tempfile.TemporaryDirectory(prefix="pulse-sql-") as spill_dir:
        con = connect(settings, query, spill_dir)
        try:
            try:
                reader = con.execute(query).fetch_record_batch(batch_rows)
            except duckdb.Error as exc:
                raise _error(exc) from None
            yield Result(reader.schema, _batches(reader))
        finally:
            con.close()


def _batches(reader: pa.RecordBatchReader) -> Iterator[pa.RecordBatch]:
    duckdb = _duckdb()
    try:
        yield from reader
    except (duckdb.Error, pa.ArrowException) as exc:
        raise _error(exc) from None


def _error(exc: BaseException) -> PulseError:
    duckdb = _duckdb()
    text = one_line(exc)
    missing = re.match(r"Catalog Error: Table with name (.+?) does not exist!", text)
    if missing:
        return PulseError(f"unknown table {missing.group(1)!r}: the tables are "
                          f"{catalog.known_names()}")  # fmt: skip
    if isinstance(exc, duckdb.PermissionException):
        text = re.sub(r"^Permission Error:\s*", "", text)
        return PulseError(f"pulse sql reads only the catalog's tables: {text}")
    if isinstance(exc, duckdb.ParserException):
        return PulseError(f"SQL syntax error: {_parser_message(exc)}")
    return PulseError(f"SQL: {text}")


def query_table(settings: Settings, text: str) -> pa.Table:
    """The whole result of ``text`` as one Arrow table (for tests and small results)."""
    with run(settings, text) as result:
        return pa.Table.from_batches(list(result.batches), schema=result.schema)

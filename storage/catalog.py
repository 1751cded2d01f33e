"""The catalog: every table Pulse keeps, under one name, for SQL (DuckDB) and Spark.

The stores are folders a reader has to know how to resolve: the lake is a Delta table
whose log names its live files, the snapshots and the model outputs are versioned
Parquet folders behind CURRENT pointers, the models' metrics are in ``meta.json`` files.
This module is that knowledge, once: each name in ``TABLES`` resolves to the data a
reader should see now (``resolve``), and the same resolution feeds DuckDB
(``arrow_source``: a lazily scanned ``pyarrow.dataset``, for ``pulse sql``, see
``storage.sql``) and Spark (``register_tables``: temp views, for a notebook on a
cluster), so the two see the same rows under the same names and columns.

Names (docs/sql.md has every column):

- ``transactions``: the lake, the live files of its latest Delta version;
- ``customers``, ``articles``: the dimensions ``pulse ingest`` writes;
- ``features_live``, ``customer_view``: the CURRENT feature and view snapshots;
- ``churn_scores``, ``customer_value``, ``recommendations``, ``segments``: the output
  tables of the CURRENT version of their model (churn, churn, recommendations,
  segments); ``<table>@<version>`` is the same table of any one version, accepted by
  its gate or not (``registry.versions``);
- ``model_metrics``: one row per model, version and metric, from every version's
  ``meta.json``, with ``current`` true for the CURRENT versions.

Each name resolves when it is used, to what is CURRENT at that moment: a table whose
store does not exist yet is ``Absent`` (a ``PulseError`` naming the command that
creates it). A reader that resolved a CURRENT version keeps reading it even if a
retrain moves CURRENT meanwhile: versions are never rewritten in place, and the lake's
files stay until ``vacuum``'s retention has passed.

No Spark import at module level: ``pulse sql`` reads with pyarrow and DuckDB only.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from upath import UPath

from runtime.errors import PulseError
from runtime.settings import Settings
from storage import registry, snapshots
from storage.objects import arrow_fs, spark_path

if TYPE_CHECKING:
    import pyarrow.dataset as ds
    from pyspark.sql import DataFrame, SparkSession

#: Separates a versioned table's name from a registry version: ``churn_scores@<version>``.
VERSION_MARK = "@"


@dataclass(frozen=True)
class Table:
    """One name of the catalog: what a row is, where it is kept, what writes it."""

    name: str
    about: str  # what one row is
    source: str  # where it is kept, under the data root
    made_by: str  # the command that creates it (said when it is absent)
    model: str | None = None  # the registry model whose CURRENT version it follows
    output: str | None = None  # that model's output table (registry.output_path)


_RETRAIN = "`pulse retrain`"
TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        Table(
            "transactions",
            "one event: the contract's columns and event_date",
            "lake/transactions (Delta, latest version)",
            "`pulse ingest SOURCE` or `pulse stream`",
        ),
        Table(
            "customers",
            "one customer: the Kaggle customers.csv attributes",
            "lake/customers (Parquet)",
            "`pulse ingest SOURCE` with a customers file",
        ),
        Table(
            "articles",
            "one article: name, category path, brand, price",
            "lake/articles (Parquet)",
            "`pulse ingest SOURCE` with an articles file",
        ),
        Table(
            "features_live",
            "one customer's features as of the stream clock",
            "features/live (CURRENT snapshot)",
            "`pulse stream`",
        ),
        Table(
            "customer_view",
            "one customer's served view: features, segment, churn, recommendations",
            "serving/customer_view (CURRENT snapshot)",
            "`pulse stream`",
        ),
        Table(
            "churn_scores",
            "one customer's churn probability as of the churn model's cutoff",
            "outputs/churn_scores/<CURRENT churn version>",
            _RETRAIN,
            model="churn",
            output="churn_scores",
        ),
        Table(
            "customer_value",
            "one customer's BG/NBD and Gamma-Gamma value in the churn horizon",
            "outputs/value/<CURRENT churn version>",
            _RETRAIN,
            model="churn",
            output="value",
        ),
        Table(
            "recommendations",
            "one recommended article of one customer, by rank (1..12)",
            "outputs/recommendations/<CURRENT recommendations version>",
            _RETRAIN,
            model="recommendations",
            output="recommendations",
        ),
        Table(
            "segments",
            "one customer's RFM segment",
            "outputs/segments/<CURRENT segments version>",
            _RETRAIN,
            model="segments",
            output="segments",
        ),
        Table(
            "model_metrics",
            "one metric of one version of one model, from its meta.json",
            "models/<model>/<version>/meta.json (every version)",
            _RETRAIN,
        ),
    )
}
#: The tables that exist per registry version: ``<name>@<version>``.
VERSIONED = tuple(name for name, t in TABLES.items() if t.output is not None)

#: ``model_metrics``' columns (docs/sql.md).
MODEL_METRICS_SCHEMA = pa.schema(
    [
        pa.field("model", pa.string()),
        pa.field("version", pa.string()),
        pa.field("current", pa.bool_()),
        pa.field("promoted", pa.bool_()),
        pa.field("cutoff", pa.date32()),
        pa.field("candidate", pa.string()),
        pa.field("metric", pa.string()),
        pa.field("value", pa.float64()),
    ]
)


class Absent(PulseError):
    """A table of the catalog that does not exist yet: says what creates it."""


@dataclass(frozen=True)
class Resolved:
    """A catalog name resolved to data: what a reader reads for it now."""

    name: str  # as registered: ``churn_scores`` or ``churn_scores@<version>``
    table: Table
    version: str | None = None  # the registry version of an output table
    folder: UPath | None = None  # a Parquet folder (dimension, snapshot, output)
    files: tuple[str, ...] = ()  # its Parquet files, or the lake's live files

    @property
    def kind(self) -> str:
        """``lake``, ``parquet`` or ``metrics``."""
        if self.table.name == "transactions":
            return "lake"
        return "metrics" if self.table.name == "model_metrics" else "parquet"


def split_name(name: str) -> tuple[str, str | None]:
    """``churn_scores@v`` -> (``churn_scores``, ``v``); a plain name -> (name, None)."""
    base, mark, version = name.partition(VERSION_MARK)
    return base.lower(), (version if mark else None)


def known_names() -> str:
    """The catalog's names, for an error message."""
    return ", ".join([*TABLES, *(f"{n}@<version>" for n in VERSIONED)])


def resolve(settings: Settings, name: str) -> Resolved:
    """What ``name`` reads now; ``Absent`` when its store does not exist yet, a
    ``PulseError`` listing the known names when it is not one of them."""
    base, version = split_name(name)
    table = TABLES.get(base)
    if table is None or (version is not None and table.output is None):
        raise PulseError(f"unknown table {name!r}: the tables are {known_names()}")
    if table.name == "transactions":
        return _resolve_lake(settings, table)
    if table.name == "model_metrics":
        if not any(registry.versions(settings, m) for m in registry.MODELS):
            raise Absent(f"table model_metrics is absent: no model trained yet; "
                         f"{table.made_by} creates it")  # fmt: skip
        return Resolved(table.name, table)
    if table.name in ("customers", "articles"):
        from storage.lake import articles_dir, customers_dir

        folder = customers_dir(settings) if table.name == "customers" else articles_dir(settings)
        files = parquet_files(folder)
        if not files:
            raise Absent(f"table {table.name} is absent: nothing at {folder}; "
                         f"{table.made_by} creates it")  # fmt: skip
        # Ingest writes the merged dimension (what was there + the new rows, the new ones
        # winning) as a new file, then removes the old ones: the newest file alone is the
        # whole dimension, also in between, when the old ones are still there.
        return Resolved(table.name, table, None, folder, (newest(folder, files),))
    if table.name in ("features_live", "customer_view"):
        base_dir = settings.features_dir if table.name == "features_live" else settings.serving_dir
        snapshot = snapshots.current(base_dir)
        files = parquet_files(snapshot) if snapshot is not None else ()
        if snapshot is None or not files:
            raise Absent(f"table {table.name} is absent: no snapshot published at {base_dir} "
                         f"yet; {table.made_by} publishes it")  # fmt: skip
        return Resolved(table.name, table, None, snapshot, files)
    return _resolve_output(settings, table, version)


def _resolve_lake(settings: Settings, table: Table) -> Resolved:
    from storage.lake import live_files

    files = live_files(settings)
    if not files:
        raise Absent(f"table transactions is absent: the lake at {settings.lake_dir} is "
                     f"empty; {table.made_by} fills it")  # fmt: skip
    return Resolved(table.name, table, None, settings.lake_dir, tuple(files))


def _resolve_output(settings: Settings, table: Table, version: str | None) -> Resolved:
    assert table.model is not None and table.output is not None
    if version is None:
        version = registry.current_version(settings, table.model)
        if version is None:
            raise Absent(f"table {table.name} is absent: no CURRENT {table.model} model yet; "
                         f"{table.made_by} creates it")  # fmt: skip
        name = table.name
    else:
        known = registry.versions(settings, table.model)
        # SQL identifiers are case-insensitive: find the version however it was spelt.
        match = [v for v in known if v.lower() == version.lower()]
        if not match:
            shown = ", ".join(known[-5:]) if known else f"none yet ({table.made_by})"
            raise PulseError(f"unknown version {version!r} of {table.name}: the "
                             f"{table.model} versions are {shown}")  # fmt: skip
        version = match[0]
        name = f"{table.name}{VERSION_MARK}{version}"
    folder = registry.output_path(settings, table.output, version)
    files = parquet_files(folder)
    if not files:
        raise Absent(f"table {name} is absent: {table.model} version {version} wrote no "
                     f"{table.output} output (older than the table?); {table.made_by} "
                     "writes it")  # fmt: skip
    return Resolved(name, table, version, folder, files)


def parquet_files(folder: UPath) -> tuple[str, ...]:
    """The Parquet data files of a folder, sorted: not Spark's ``_SUCCESS`` and ``.crc``
    files, nor a writer's hidden temporary (``.name.tmp``)."""
    if not folder.is_dir():
        return ()
    return tuple(
        sorted(
            str(p)
            for p in folder.iterdir()
            if p.name.endswith(".parquet") and not p.name.startswith((".", "_"))
        )
    )


def newest(folder: UPath, files: tuple[str, ...]) -> str:
    """The file of ``files`` written last (modification time, then name)."""
    if len(files) == 1:
        return files[0]
    fs, _ = arrow_fs(folder)
    infos = fs.get_file_info([f.split("://", 1)[1] if "://" in f else f for f in files])
    return max(zip(infos, files, strict=True), key=lambda pair: (pair[0].mtime_ns, pair[1]))[1]


def versioned_names(settings: Settings) -> list[str]:
    """``<table>@<version>`` for every version of every versioned table, oldest first."""
    names = []
    for name in VERSIONED:
        table = TABLES[name]
        assert table.model is not None
        names += [f"{name}{VERSION_MARK}{v}" for v in registry.versions(settings, table.model)]
    return names


# -- reading with pyarrow (DuckDB) -----------------------------------------------------


def arrow_source(settings: Settings, resolved: Resolved) -> ds.Dataset | pa.Table:
    """The data of ``resolved`` for DuckDB: a ``pyarrow.dataset`` over exactly its files
    (nothing read until scanned; DuckDB pushes its projection and filters into the scan,
    and a filter on ``event_date`` skips whole files of the lake), or, for
    ``model_metrics``, the table itself (small)."""
    import pyarrow.dataset as ds

    if resolved.kind == "metrics":
        return model_metrics(settings)
    assert resolved.folder is not None
    fs, root = arrow_fs(resolved.folder)
    paths = [f.split("://", 1)[1] if "://" in f else f for f in resolved.files]
    if resolved.kind == "lake":
        from schemas.tables import LAKE_PARTITION
        from storage.lake import LAKE_ARROW_SCHEMA

        partition = pa.schema([LAKE_ARROW_SCHEMA.field(LAKE_PARTITION)])
        return ds.dataset(
            paths,
            schema=LAKE_ARROW_SCHEMA,  # the files' columns + event_date from the folder
            format="parquet",
            filesystem=fs,
            partitioning=ds.partitioning(partition, flavor="hive"),
            partition_base_dir=root,
        )
    return ds.dataset(paths, format="parquet", filesystem=fs)


def model_metrics(settings: Settings) -> pa.Table:
    """``model_metrics``: a row per numeric leaf of ``metrics`` in every version's
    ``meta.json`` (``MODEL_METRICS_SCHEMA``).

    ``candidate`` is the first key of a nested metric (the strategy or model it measures:
    ``als``, ``stack``, ``silhouette_by_k``) and ``metric`` the rest (``map@12``,
    ``auc_roc``, ``4``); a metric at the top (``silhouette``) has no candidate.
    """
    rows: list[dict[str, Any]] = []
    for model in registry.MODELS:
        current = registry.current_version(settings, model)
        for version in registry.versions(settings, model):
            meta = registry.read_meta(settings, model, version)
            window = meta.get("window") or {}
            cutoff = window.get("cutoff_exclusive")
            common = {
                "model": model,
                "version": version,
                "current": version == current,
                "promoted": bool(meta.get("promoted")),
                "cutoff": date.fromisoformat(cutoff) if isinstance(cutoff, str) else None,
            }
            for path, value in _numeric_leaves(meta.get("metrics") or {}, ()):
                candidate = path[0] if len(path) > 1 else None
                metric = ".".join(path[1:]) if len(path) > 1 else path[0]
                rows.append({**common, "candidate": candidate, "metric": metric, "value": value})
    return pa.Table.from_pylist(rows, schema=MODEL_METRICS_SCHEMA)


def _numeric_leaves(node: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], float]]:
    if isinstance(node, dict):
        for key in sorted(node, key=str):
            yield from _numeric_leaves(node[key], (*path, str(key)))
    elif isinstance(node, int | float) and not isinstance(node, bool) and path:
        value = float(node)
        yield path, (value if math.isfinite(value) else math.nan)


def row_count(settings: Settings, resolved: Resolved) -> int:
    """Rows of a resolved table, from the Parquet footers (no data read)."""
    source = arrow_source(settings, resolved)
    if isinstance(source, pa.Table):
        return source.num_rows
    return int(source.count_rows())


def listing(settings: Settings, with_versions: bool = True) -> pa.Table:
    """Every name of the catalog (and each version of the versioned tables): its rows
    (null when absent), what a row is, and where it comes from or what creates it."""
    rows: list[dict[str, Any]] = []
    names = [*TABLES, *(versioned_names(settings) if with_versions else [])]
    for name in names:
        table = TABLES[split_name(name)[0]]
        try:
            resolved = resolve(settings, name)
        except Absent:
            rows.append({"table": name, "rows": None, "about": table.about,
                         "source": f"{table.source}: {table.made_by} creates it"})  # fmt: skip
            continue
        source = table.source
        if resolved.version is not None:
            source = f"outputs/{table.output}/{resolved.version}"
        rows.append({"table": name, "rows": row_count(settings, resolved), "about": table.about,
                     "source": source})  # fmt: skip
    schema = pa.schema([("table", pa.string()), ("rows", pa.int64()),
                        ("about", pa.string()), ("source", pa.string())])  # fmt: skip
    return pa.Table.from_pylist(rows, schema=schema)


# -- the same names in Spark -----------------------------------------------------------


def spark_frame(spark: SparkSession, settings: Settings, resolved: Resolved) -> DataFrame:
    """The data of ``resolved`` as a Spark DataFrame, with the columns DuckDB sees."""
    if resolved.kind == "lake":
        from storage.lake import read_lake

        return read_lake(spark, settings)
    if resolved.kind == "metrics":
        return spark.createDataFrame(model_metrics(settings).to_pandas(),
                                     schema=_spark_schema(MODEL_METRICS_SCHEMA))  # fmt: skip
    assert resolved.folder is not None
    reader = spark.read
    if resolved.table.output is not None:
        from schemas.tables import output_schema

        # The columns write_output checked every version against: no footer-reading job
        # per version to infer them.
        reader = reader.schema(output_schema(resolved.table.output))
    return reader.parquet(*(spark_path(f) for f in resolved.files))


def _spark_schema(schema: pa.Schema) -> Any:
    from pyspark.sql import types as T

    kinds = {
        pa.string(): T.StringType(),
        pa.bool_(): T.BooleanType(),
        pa.date32(): T.DateType(),
        pa.float64(): T.DoubleType(),
    }
    return T.StructType([T.StructField(f.name, kinds[f.type]) for f in schema])


def spark_view_name(name: str) -> str:
    """The name as Spark takes it: a versioned name backquoted (``@`` and ``-``)."""
    return f"`{name}`" if VERSION_MARK in name else name


def register_tables(
    spark: SparkSession, settings: Settings, versions: bool = True
) -> dict[str, str]:
    """Create a Spark temp view for every table of the catalog that exists now, under the
    names ``pulse sql`` uses, over the same files; returns name -> what it reads (or why
    it is absent). A versioned name is backquoted in Spark SQL:
    ``spark.sql("SELECT * FROM `churn_scores@<version>`")``.

    ``versions``: also one view per version of each versioned table. The views are as of
    the call: call again after a retrain or a new snapshot to follow CURRENT (a table
    absent by then loses its view).
    """
    found: dict[str, str] = {}
    names = [*TABLES, *(versioned_names(settings) if versions else [])]
    for name in names:
        try:
            resolved = resolve(settings, name)
        except Absent as exc:
            found[name] = str(exc)
            spark.catalog.dropTempView(name)  # not an older call's view (unparsed name)
            continue
        spark_frame(spark, settings, resolved).createOrReplaceTempView(spark_view_name(name))
        found[name] = str(resolved.folder or "meta.json of every version")
    return found

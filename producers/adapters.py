"""Dataset adapters: a source folder or file -> contract events, in event-time order.

One entry point, ``open_source(spec)``, shared by the replay producer and the batch
backfill. A ``Source`` reads its file in pandas chunks (ids as strings, so H&M's
zero-padded ``article_id`` survives), normalises each chunk to the contract columns
with vectorised pandas, rejects invalid rows *with a reason*, and yields
``pyarrow.Table`` batches. Every row read is either accepted or rejected:
``stats.accepted + sum(stats.rejected.values()) == stats.rows_read``.

Event ids are deterministic: ``make_event_id(source, <raw row content>, <occurrence
index among identical rows>)``. Identical rows always share an event time, and the
input is in event-time order, so a batch is only cut between two distinct event
times: all copies of a row are numbered inside one batch.

Validation applies the contract itself (``schemas.transaction.RULES``, read as pandas by
``Rule.broken_series``), so a rejected row carries the very reason ``validate`` would
give its event. The adapters only add checks of their *source* text (a date or a number
that does not parse), whose reasons name the source column, e.g. ``UnitPrice: not a number``.

Supported sources (``spec``):

- ``hm:DIR`` — the H&M Kaggle folder (``transactions_train.csv[.gz]`` or ``.parquet``);
  ``event_time`` = ``t_dat`` at 00:00 UTC, quantity 1, ``unit_price`` = price.
- ``synthetic:DIR`` — the generator's output (same layout, marker ``_pulse_generated.json``).
- ``online_retail:FILE`` — UCI Online Retail (I or II column names). ``InvoiceDate`` is
  UK time without zone and is taken as UTC. Cancellations (``C`` invoices, negative
  quantity) are kept as returns, and a price of 0 is a valid event (the contract asks
  ``unit_price >= 0``); a missing customer id or a negative price is rejected.
- ``amazon:DIR`` or ``amazon:FILE`` — Amazon product reviews (the 2014, 2018 or 2023
  release: a reviews file and its ``meta_*`` file, JSON lines, gzipped or not); one
  review is one event, priced from the metadata (``producers.amazon``).
- a bare path: a folder is H&M (or synthetic when the marker is present), a file is
  Online Retail.

What every source shares (the contract's Arrow schema, the counts, the ids, the
reasons, the ``EventSource`` interface) is in ``producers.source_base``. A source's
``articles()`` gives its article dimension rows (``ARTICLES_SCHEMA``) for ``pulse ingest``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from producers.amazon import open_amazon
from producers.source_base import (
    ARROW_SCHEMA,
    ARTICLES_SCHEMA,
    EventSource,
    SourceStats,
    category_path,
    first_rows,
)
from producers.source_base import event_ids as _event_ids
from producers.source_base import row_reasons as _reasons
from runtime.errors import PulseError

GENERATED_MARKER = "_pulse_generated.json"
KINDS = ("hm", "online_retail", "synthetic", "amazon")

HM_COLUMNS = ("t_dat", "customer_id", "article_id", "price", "sales_channel_id")
# Online Retail I and II name the same columns differently; map both to one set.
RETAIL_COLUMNS = {
    "invoice": ("InvoiceNo", "Invoice"),
    "stock_code": ("StockCode",),
    "quantity": ("Quantity",),
    "invoice_date": ("InvoiceDate",),
    "price": ("UnitPrice", "Price"),
    "customer_id": ("CustomerID", "Customer ID"),
}


# A normaliser turns one raw chunk (all strings) into contract columns + a
# ``reason`` column (None when valid) + ``key`` (the raw row content for the id).
Normaliser = Callable[[pd.DataFrame], pd.DataFrame]


class Source(EventSource):
    """A CSV or Parquet dataset (H&M, synthetic, Online Retail) as contract events.

    The file must be in event-time order (it is read in chunks, never whole).
    ``start``/``end`` (inclusive UTC dates) limit the events to a date window.
    Iterating twice reads the file twice and restarts ``stats``.
    """

    # -- reading -----------------------------------------------------------------

    def _raw_chunks(self, batch_rows: int) -> Iterator[pd.DataFrame]:
        """The file as chunks of string columns (empty string for a missing value)."""
        if self.path.suffix == ".parquet":
            import pyarrow.parquet as pq

            try:
                parquet = pq.ParquetFile(self.path)
            except (pa.ArrowInvalid, OSError) as exc:
                raise PulseError(f"{self.path}: cannot read as Parquet ({exc})") from None
            for batch in parquet.iter_batches(batch_size=batch_rows):
                yield _parquet_as_text(batch)
            return
        try:
            yield from pd.read_csv(
                # Arrow-backed strings: the .str operations below run vectorised in C++.
                self.path,
                dtype="string[pyarrow]",
                keep_default_na=False,
                chunksize=batch_rows,
            )
        except pd.errors.EmptyDataError:
            raise PulseError(f"{self.path}: the file is empty (not even a header row)") from None
        except (pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError) as exc:
            raise PulseError(f"{self.path}: cannot read as CSV ({exc})") from None

    def _normaliser(self, header: list[str]) -> Normaliser:
        if self.name in ("hm", "synthetic"):
            missing = [c for c in HM_COLUMNS if c not in header]
            if missing:
                raise PulseError(
                    f"{self.path}: not an H&M transactions file, missing column(s) "
                    f"{', '.join(missing)} (expected {', '.join(HM_COLUMNS)})"
                )
            return _normalise_hm
        names = {}
        for canonical, options in RETAIL_COLUMNS.items():
            found = next((c for c in options if c in header), None)
            if found is None:
                raise PulseError(
                    f"{self.path}: not an Online Retail file, missing column {' or '.join(options)}"
                )
            names[canonical] = found
        return lambda chunk: _normalise_retail(chunk, names)

    def iter_batches(self, batch_rows: int = 100_000) -> Iterator[pa.Table]:
        """Yield contract tables (``ARROW_SCHEMA``) of accepted events, in event-time order.

        ``produced_at`` is null (the producer sets it). Raises PulseError on a
        wrong layout or an input that is not sorted by event time.
        """
        self.stats = SourceStats()
        normalise: Normaliser | None = None
        pending: pd.DataFrame | None = None  # rows of the last event time, held back
        last_time: pd.Timestamp | None = None
        row_offset = 0  # data rows of the file seen so far (for error messages)
        for raw in self._raw_chunks(batch_rows):
            if normalise is None:
                normalise = self._normaliser(list(raw.columns))
            chunk = normalise(raw)
            chunk["row"] = np.arange(row_offset + 1, row_offset + len(chunk) + 1)
            row_offset += len(chunk)
            last_time = _check_sorted(chunk, last_time, self.path)
            chunk = self._window(chunk)
            if chunk is None:  # past the end of the window: stop reading
                break
            if pending is not None:
                chunk = pd.concat([pending, chunk], ignore_index=True)
            # Hold back the rows of the chunk's last event time: identical rows
            # (same time) may continue in the next chunk and must be numbered together.
            times = chunk["event_time"]
            valid_times = times.dropna()
            if len(valid_times) == 0:
                pending = chunk
                continue
            cut = valid_times.iloc[-1]
            tail = np.arange(len(chunk)) >= int(np.argmax((times == cut).to_numpy()))
            pending = chunk[tail]
            ready = chunk[~tail]
            if len(ready):
                yield from self._finish(ready)
        if normalise is None:
            raise PulseError(f"{self.path}: empty file (no header)")
        if pending is not None and len(pending):
            yield from self._finish(pending)

    def _window(self, chunk: pd.DataFrame) -> pd.DataFrame | None:
        """Drop rows outside [start, end]; None once the whole chunk is past ``end``.

        Rows whose time does not parse are kept, so they are rejected and counted.
        """
        if self.start is None and self.end is None:
            return chunk
        times = chunk["event_time"]
        keep = pd.Series(True, index=chunk.index)
        if self.start is not None:
            keep &= ~(times < pd.Timestamp(self.start))  # NaT compares False: kept
        if self.end is not None:
            after = times >= pd.Timestamp(self.end) + pd.Timedelta(days=1)
            if after.any() and bool(after[times.notna()].all()):
                self.stats.skipped += len(chunk)
                return None
            keep &= ~after
        self.stats.skipped += int((~keep).sum())
        return chunk[keep]

    def _finish(self, chunk: pd.DataFrame) -> Iterator[pa.Table]:
        """Number identical rows, make ids, count, and emit the accepted rows."""
        chunk = chunk.reset_index(drop=True)
        occurrence = chunk.groupby("key", sort=False).cumcount().to_numpy()
        chunk["event_id"] = _event_ids(self.name, chunk["key"].to_numpy(object), occurrence)
        self.stats.rows_read += len(chunk)
        bad = chunk["reason"].notna()
        self.stats.rejected.update(chunk.loc[bad, "reason"].to_list())
        good = chunk[~bad]
        self.stats.accepted += len(good)
        if len(good):
            yield _to_arrow(good, self.name)

    def articles(self) -> pa.Table | None:
        """The article rows (``ARTICLES_SCHEMA``): H&M's ``articles.csv`` when there is one
        (name = prod_name, category = index group > product group > product type, no brand
        or list price); for Online Retail, each StockCode with its latest description."""
        if self.name == "online_retail":
            return _retail_articles(self.path)
        if self.articles_path is None:
            return None
        return _hm_articles(self.articles_path)


def _parquet_as_text(batch: pa.RecordBatch) -> pd.DataFrame:
    """A Parquet batch rendered as the CSV's text, so both copies give the same event ids.

    Dates as YYYY-MM-DD, floats by their shortest repr (what H&M's 15-digit CSV prices
    round-trip to), ints as digits; an integer ``article_id`` gets its leading zeros back.
    """
    columns = {}
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        kind = column.type
        if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
            text = column.cast(pa.date32()).cast(pa.string()).to_pandas()
        elif pa.types.is_floating(kind):
            values = column.to_pandas()
            text = values.map(repr).where(values.notna(), None)
        elif pa.types.is_integer(kind):
            text = column.cast(pa.string()).to_pandas()
            if name == "article_id":
                text = text.str.zfill(10)
        else:
            text = column.cast(pa.string()).to_pandas()
        columns[name] = text.fillna("").astype("string[pyarrow]")
    return pd.DataFrame(columns)


def _check_sorted(chunk: pd.DataFrame, last: pd.Timestamp | None, path: Path) -> Any:
    """Refuse an input not in event-time order; return the last event time seen."""
    times = chunk["event_time"].dropna()
    if len(times) == 0:
        return last
    values = times.to_numpy()
    back = np.flatnonzero(values[1:] < values[:-1])
    if last is not None and values[0] < last.to_datetime64():
        first_bad = times.index[0]
    elif len(back):
        first_bad = times.index[back[0] + 1]
    else:
        return times.iloc[-1]
    row = int(chunk.loc[first_bad, "row"])
    raise PulseError(f"{path} is not sorted by event time at row {row:,}; sort it first")


def _to_arrow(good: pd.DataFrame, source: str) -> pa.Table:
    n = len(good)
    return pa.table(
        {
            "event_id": pa.array(good["event_id"].to_numpy(), pa.string()),
            "event_time": pa.array(good["event_time"].to_numpy(), pa.timestamp("us")).cast(
                pa.timestamp("us", tz="UTC")
            ),
            "customer_id": pa.array(good["customer_id"].to_numpy(), pa.string()),
            "article_id": pa.array(good["article_id"].to_numpy(), pa.string()),
            "quantity": pa.array(good["quantity"].to_numpy(), pa.int32()),
            "unit_price": pa.array(good["unit_price"].to_numpy(), pa.float64()),
            "sales_channel_id": pa.array(good["sales_channel_id"], pa.int32(), from_pandas=True),
            "source": pa.array([source] * n, pa.string()),
            "produced_at": pa.nulls(n, pa.timestamp("us", tz="UTC")),
        },
        schema=ARROW_SCHEMA,
    )


def _normalise_hm(raw: pd.DataFrame) -> pd.DataFrame:
    """H&M rows -> contract columns; one row per unit bought, so quantity is 1."""
    out = pd.DataFrame(index=raw.index)
    out["event_time"] = pd.to_datetime(raw["t_dat"], format="%Y-%m-%d", errors="coerce")
    out["customer_id"] = raw["customer_id"].str.strip()
    out["article_id"] = raw["article_id"].str.strip()
    out["quantity"] = 1
    price = pd.to_numeric(raw["price"], errors="coerce")
    out["unit_price"] = price
    channel_text = raw["sales_channel_id"].str.strip()
    channel = pd.to_numeric(channel_text, errors="coerce")  # empty: null, which is allowed
    out["sales_channel_id"] = channel
    out["reason"] = _reasons(
        out,
        {
            "event_time": [("t_dat: not a date", out["event_time"].isna())],
            "unit_price": [("price: not a number", price.isna())],
            "sales_channel_id": [
                ("sales_channel_id: not a number", (channel_text != "") & channel.isna())
            ],
        },
    )
    out["sales_channel_id"] = channel.where(channel.isin([1, 2])).astype("Int32")
    out["key"] = (
        raw["t_dat"]
        + "\x1f"
        + raw["customer_id"]
        + "\x1f"
        + raw["article_id"]
        + "\x1f"
        + raw["price"]
        + "\x1f"
        + raw["sales_channel_id"]
    )
    return out


def _parse_invoice_date(text: pd.Series) -> pd.Series:
    """UK local time without a zone, taken as UTC; ISO or ``12/1/2010 8:26`` style."""
    iso = pd.to_datetime(text, format="ISO8601", errors="coerce")
    if iso.isna().any():
        us = pd.to_datetime(text, format="%m/%d/%Y %H:%M", errors="coerce")
        iso = iso.fillna(us)
    return iso


def _normalise_retail(raw: pd.DataFrame, names: dict[str, str]) -> pd.DataFrame:
    """Online Retail lines -> contract columns; cancellations stay as returns."""
    col = {k: raw[v].str.strip() for k, v in names.items()}
    out = pd.DataFrame(index=raw.index)
    out["event_time"] = _parse_invoice_date(col["invoice_date"])
    # CustomerID is float-like in some exports ("17850.0"): keep the integer text.
    out["customer_id"] = col["customer_id"].str.replace(r"\.0+$", "", regex=True)
    out["article_id"] = col["stock_code"]
    quantity = pd.to_numeric(col["quantity"], errors="coerce")
    price = pd.to_numeric(col["price"], errors="coerce")
    out["quantity"] = quantity
    out["unit_price"] = price
    out["sales_channel_id"] = pd.Series(pd.NA, index=raw.index, dtype="Int32")  # no channel
    out["reason"] = _reasons(
        out,
        {
            "event_time": [(f"{names['invoice_date']}: not a date", out["event_time"].isna())],
            "quantity": [
                (
                    f"{names['quantity']}: not an integer",
                    quantity.isna() | (quantity != quantity.round()),
                )
            ],
            "unit_price": [(f"{names['price']}: not a number", price.isna())],
        },
    )
    out["quantity"] = quantity.where(out["reason"].isna(), 0).astype("int64")
    key = col["invoice"]
    for name in ("stock_code", "quantity", "invoice_date", "price", "customer_id"):
        key = key + "\x1f" + col[name]
    out["key"] = key
    return out


# -- articles ---------------------------------------------------------------------

HM_ARTICLE_COLUMNS = (
    "article_id",
    "prod_name",
    "index_group_name",
    "product_group_name",
    "product_type_name",
)


def _hm_articles(path: Path) -> pa.Table:
    """H&M ``articles.csv[.gz]`` (or ``.parquet``) as ``ARTICLES_SCHEMA`` rows."""
    import pyarrow.compute as pc

    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            present = set(pq.read_schema(path).names)
            read = pq.read_table(path, columns=[c for c in HM_ARTICLE_COLUMNS if c in present])
            raw = pa.table({
                c: read.column(c).cast(pa.string()) if c in present else pa.nulls(len(read))
                for c in HM_ARTICLE_COLUMNS
            })  # fmt: skip
            if pa.types.is_integer(read.schema.field("article_id").type):
                raw = raw.set_column(0, "article_id", pc.utf8_lpad(raw["article_id"], 10, "0"))
        else:
            from pyarrow import csv

            raw = csv.read_csv(
                path,
                convert_options=csv.ConvertOptions(
                    column_types=dict.fromkeys(HM_ARTICLE_COLUMNS, pa.string()),
                    include_columns=list(HM_ARTICLE_COLUMNS),
                    include_missing_columns=True,
                    strings_can_be_null=True,
                ),
            )
    except (pa.ArrowInvalid, KeyError, OSError) as exc:
        raise PulseError(f"{path}: cannot read articles ({exc})") from None
    ids = pc.utf8_trim_whitespace(raw.column("article_id").cast(pa.string()))
    if raw.num_rows and ids.null_count == raw.num_rows:
        raise PulseError(f"{path}: not an articles file (no article_id column)")
    table = pa.table(
        {
            "article_id": ids,
            "name": raw.column("prod_name"),
            "category": category_path(
                [raw.column(c) for c in HM_ARTICLE_COLUMNS[2:]]  # outermost first
            ),
            "brand": pa.nulls(raw.num_rows, pa.string()),
            "price": pa.nulls(raw.num_rows, pa.float64()),
        }
    )
    return first_rows(table.filter(pc.invert(pc.equal(pc.fill_null(ids, ""), ""))))


def _retail_articles(path: Path) -> pa.Table | None:
    """Online Retail's StockCodes as ``ARTICLES_SCHEMA`` rows: name = the latest non-empty
    Description by InvoiceDate (an unparseable date counts as the oldest); no category,
    brand or list price. None when the file has no StockCode column."""
    try:
        header = list(pd.read_csv(path, nrows=0).columns)
        if "StockCode" not in header:
            return None
        wanted = ["StockCode", "Description", "InvoiceDate"]
        frame = pd.read_csv(
            path,
            usecols=[c for c in wanted if c in header],
            dtype="string[pyarrow]",
            keep_default_na=False,
        )
    except (pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError) as exc:
        raise PulseError(f"{path}: cannot read as CSV ({exc})") from None
    code = frame["StockCode"].str.strip()
    blank = pd.Series("", index=frame.index, dtype="string[pyarrow]")
    name = frame["Description"].str.strip() if "Description" in frame else blank
    when = _parse_invoice_date(
        frame["InvoiceDate"].str.strip() if "InvoiceDate" in frame else blank
    )
    rows = pd.DataFrame({"article_id": code, "name": name, "when": when})[code != ""]
    named = rows[rows["name"] != ""].sort_values("when", kind="stable", na_position="first")
    latest = named.groupby("article_id", sort=False)["name"].last()
    ids = pd.Series(sorted(rows["article_id"].unique()), dtype=object)
    names = ids.map(latest)
    n = len(ids)
    return pa.table(
        {
            "article_id": pa.array(ids.to_numpy(), pa.string()),
            "name": pa.array(names.to_numpy(), pa.string(), from_pandas=True),
            "category": pa.nulls(n, pa.string()),
            "brand": pa.nulls(n, pa.string()),
            "price": pa.nulls(n, pa.float64()),
        },
        schema=ARTICLES_SCHEMA,
    )


# -- opening a source -------------------------------------------------------------


def _find(folder: Path, stem: str) -> Path | None:
    for suffix in (".csv", ".csv.gz", ".parquet"):
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _articles_near(folder: Path) -> Path | None:
    """articles.csv in the folder, else in a sibling ``hm_articles/`` (the shared data layout)."""
    return _find(folder, "articles") or _find(folder.parent / "hm_articles", "articles")


def open_source(spec: str, *, start: date | None = None, end: date | None = None) -> EventSource:
    """Open ``spec`` (``hm:``/``online_retail:``/``synthetic:``/``amazon:`` + path, or a
    bare path).

    Raises PulseError for a missing path, an unknown kind or a folder without
    transactions. Column checks happen when iteration starts (reading the header).
    """
    kind, sep, rest = spec.partition(":")
    if sep and kind in KINDS:
        path = Path(rest).expanduser()
    else:
        kind, path = "", Path(spec).expanduser()
    if not path.exists():
        raise PulseError(f"source not found: {path}")
    if kind == "amazon":
        return open_amazon(path, start=start, end=end)
    if not kind:
        if path.is_dir():
            kind = "synthetic" if (path / GENERATED_MARKER).is_file() else "hm"
        else:
            kind = "online_retail"
    if kind in ("hm", "synthetic"):
        if path.is_dir():
            transactions = _find(path, "transactions_train")
            if transactions is None:
                raise PulseError(
                    f"{path}: no transactions_train.csv[.gz] or .parquet in this folder"
                )
            folder = path
        else:
            transactions, folder = path, path.parent
        return Source(
            kind,
            transactions,
            start=start,
            end=end,
            customers_path=_find(folder, "customers"),
            articles_path=_articles_near(folder),
        )
    if path.is_dir():
        raise PulseError(f"{path}: online_retail expects a CSV file, got a folder")
    return Source("online_retail", path, start=start, end=end)

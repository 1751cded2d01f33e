"""Amazon product reviews (the McAuley lab's 2014, 2018 and 2023 releases) as contract events.

``amazon:PATH``: a folder holding one reviews file and, optionally, one metadata file
(JSON lines, gzipped or not), or the reviews file itself (its metadata is then looked
for next to it). A file whose name starts with ``meta`` is the metadata; the other
``*.json``, ``*.jsonl`` (``.gz`` or not) file is the reviews: ``reviews_Books_5.json.gz``,
``Books_5.json.gz``, ``Books.jsonl.gz`` with ``meta_Books.json.gz`` or
``meta_Books.jsonl.gz``. Names starting with ``_`` or ``.`` are not data (the
generator's ``_pulse_generated.json``). With several metadata files, the one named
after the reviews (``meta_<Category>``) is taken.

The layout is told by the keys of the first line that parses as an object:

- 2014 and 2018 reviews: ``reviewerID``, ``asin``, ``unixReviewTime`` (seconds, a whole
  day), ``reviewTime`` (``"09 13, 2009"``, read when ``unixReviewTime`` is absent);
  metadata ``asin``, ``title``, ``price``, ``brand``, ``categories`` (2014: a list of
  category paths, the first is taken) or ``category`` (2018: one path), ``main_cat``.
  2014 metadata lines are Python dict literals (single quotes): a line is parsed as
  JSON first, then with ``ast.literal_eval``. A 2018 price is text: ``"$12.99"`` is
  12.99; ``""``, a range (``"$5.99 - $9.99"``) or anything else is no price.
- 2023 reviews: ``user_id``, ``parent_asin``, ``asin``, ``timestamp`` (milliseconds);
  metadata ``parent_asin``, ``title``, ``main_category``, ``categories``, ``price`` (a
  number, null or ``"None"``), ``store``. The article is the ``parent_asin``: a
  product's variants (sizes, colours) are one article.

A review is one event: ``customer_id`` = the reviewer, ``article_id`` = the asin (the
parent_asin in 2023), ``event_time`` = the review time (UTC), quantity 1, ``unit_price``
= the metadata's price, ``sales_channel_id`` null (unknown), source ``amazon``. A review
stands in for a purchase: Amazon asks a reviewer to have used the product, and 2018
and 2023 mark verified purchases, which are not required here (a review of a product
bought elsewhere is still an interaction with it).

Every non-blank line of the reviews file is accepted or rejected (blank lines are not
records), and ``stats.accepted + stats.n_rejected == stats.rows_read``. Rejected, in
this order, with the reason counted:

- ``line: malformed JSON``, ``line: not a JSON object``;
- ``<time field>: not a time`` (absent, not a whole number, before 1970 or after 2199);
  ``<reviewer field>: missing``; ``<article field>: missing`` (absent or null; an empty
  string gets the contract's ``customer_id: is empty``);
- ``price: no metadata file``, ``price: <article field> not in metadata``, ``price:
  missing in metadata`` (listed without a usable price), then the contract's rules
  (``unit_price: is negative``, ...);
- ``duplicate review``: the same reviewer, article and time as an earlier valid line
  (the first in file order is kept). The 2018 files repeat some reviews verbatim, and
  in 2023 one review can appear under several variants of one parent_asin. A second
  review of the same article by the same reviewer at *another* time is kept as a second
  event: Amazon allows one review per product, so that is rare outside 2023, where it
  is a review of another variant (another purchase of the article); dropping it would
  throw away a purchase, while keeping an edited re-post only adds one repeat.

Event ids are deterministic: ``make_event_id("amazon", reviewer SEP article SEP time in
µs, 0)``, unique once duplicates are rejected and independent of the file's order, so
a file split at a date (``write_reviews_before``, the demo's backfill) gives the same
ids as the whole.

Memory: Amazon files are sorted by product, not time, so the reviews are read whole
before the first batch is yielded: per valid review its reviewer, article, time, price
and line number in Arrow, sorted (a copy) and deduplicated. Measured on generated 2018
files (14-character reviewer ids): about 190 bytes per review at the peak (236 MiB peak
RSS for 0.27M reviews, 424 MiB for 1.31M). 10M reviews need about 2 GB; the largest 2018
category (Books, 51M reviews) about 10 GB, so split such a file by date first (2023's
28-character ids add about 14 bytes a review). The metadata is held too (one row per
product), for the prices and ``articles()``. Lines are parsed ``CHUNK_LINES`` at a time,
about 120,000 lines/s on one core (JSON; a 2014 metadata line through ``literal_eval``
is several times slower).
"""

from __future__ import annotations

import ast
import gzip
import html
import json
import math
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from producers.source_base import (
    ARROW_SCHEMA,
    ARTICLES_SCHEMA,
    CATEGORY_SEP,
    SEP,
    EventSource,
    SourceStats,
    event_ids,
    first_rows,
    row_reasons,
)
from runtime.errors import PulseError

NAME = "amazon"
JSON_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")
CHUNK_LINES = 100_000

MALFORMED = "line: malformed JSON"
NOT_AN_OBJECT = "line: not a JSON object"
DUPLICATE = "duplicate review"
NO_METADATA = "price: no metadata file"
NO_PRICE = "price: missing in metadata"

# Review times outside [1970, 2200) are no times: both ends of pandas' datetime range
# are near, and no review is dated there.
_MAX_US = int(datetime(2200, 1, 1, tzinfo=UTC).timestamp()) * 1_000_000
_PRICE_TEXT = re.compile(r"\$?\s*(\d[\d,]*(?:\.\d+)?)")


@dataclass(frozen=True)
class ReviewLayout:
    """Where a release keeps a review's reviewer, article and time."""

    name: str
    reviewer: str
    article: str
    time: str
    us_per_unit: int  # microseconds per unit of ``time``
    day_text: str | None = None  # a "MM DD, YYYY" field read when ``time`` is absent


CLASSIC = ReviewLayout("2014/2018", "reviewerID", "asin", "unixReviewTime", 1_000_000, "reviewTime")
RECENT = ReviewLayout("2023", "user_id", "parent_asin", "timestamp", 1_000)


def layout_of(record: dict[str, Any], path: Path) -> ReviewLayout:
    """The reviews layout a record's keys show; PulseError when it is neither."""
    if "user_id" in record or "parent_asin" in record:
        return RECENT
    if "reviewerID" in record:
        return CLASSIC
    keys = ", ".join(sorted(map(str, record))[:8])
    raise PulseError(
        f"{path}: not an Amazon reviews file, its first record has keys {keys} (expected "
        f"reviewerID, asin, unixReviewTime (2014/2018) or user_id, parent_asin, timestamp (2023))"
    )


def parse_record(line: bytes) -> Any:
    """One line's value: JSON, else a Python literal (2014 metadata); ValueError if neither."""
    try:
        return json.loads(line)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError both are
        pass
    try:
        return ast.literal_eval(line.decode().strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise ValueError("neither JSON nor a Python literal") from None


def _text(value: Any) -> str | None:
    """An id as text (stripped); None when absent or not text or a whole number."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _whole(value: Any) -> int | None:
    """A whole number given as an int, an integral float or digits; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def review_time_us(record: dict[str, Any], layout: ReviewLayout) -> int | None:
    """A review's time in µs since the epoch (UTC), or None when it has no valid one."""
    value = record.get(layout.time)
    if value is None and layout.day_text is not None:
        text = record.get(layout.day_text)
        if not isinstance(text, str):
            return None
        try:
            day = datetime.strptime(text.strip(), "%m %d, %Y").replace(tzinfo=UTC)
        except ValueError:
            return None
        return int(day.timestamp()) * 1_000_000
    number = _whole(value)
    if number is None:
        return None
    us = number * layout.us_per_unit
    return us if 0 <= us < _MAX_US else None


def parse_price(value: Any) -> float | None:
    """A metadata price: a number, or text like ``"$1,299.00"``; None for none, ``""``,
    ``"None"``, a range or other text (and NaN)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        price = float(value)
        return None if math.isnan(price) else price
    if isinstance(value, str):
        match = _PRICE_TEXT.fullmatch(value.strip())
        return float(match.group(1).replace(",", "")) if match else None
    return None


def _clean(value: Any) -> str | None:
    """A metadata text (HTML entities decoded, stripped); None when absent or empty."""
    if not isinstance(value, str):
        return None
    text = html.unescape(value).strip() if "&" in value else value.strip()
    return text or None


def _category(record: dict[str, Any]) -> str | None:
    """The category path, outermost first: 2014's first path, 2018's ``category``, 2023's
    ``categories``; the main category when the path is empty."""
    levels = record.get("categories")
    if levels is None:
        levels = record.get("category")
    if isinstance(levels, list) and levels and isinstance(levels[0], list):
        levels = levels[0]  # 2014: a list of paths
    parts = [c for c in map(_clean, levels if isinstance(levels, list) else []) if c]
    if parts:
        return CATEGORY_SEP.join(parts)
    return _clean(record.get("main_category") or record.get("main_cat"))


# -- files ---------------------------------------------------------------------------


def _is_data(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and not name.startswith((".", "_")) and name.endswith(JSON_SUFFIXES)


def _is_meta(path: Path) -> bool:
    return path.name.lower().startswith("meta")


def _stem(path: Path) -> str:
    """The category a file name names: ``reviews_Books_5.json.gz`` and
    ``meta_Books.jsonl`` both name ``books``."""
    name = path.name.lower()
    for suffix in sorted(JSON_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    for prefix in ("meta_", "meta-", "meta", "reviews_"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    return name.removesuffix("_5")


def find_files(path: Path) -> tuple[Path, Path | None]:
    """``(reviews file, metadata file or None)`` of ``amazon:PATH``; PulseError otherwise."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if _is_data(p))
        reviews = [p for p in files if not _is_meta(p)]
        if not reviews:
            raise PulseError(
                f"{path}: no Amazon reviews file in this folder (JSON lines: *.json, *.jsonl, "
                "gzipped or not; a meta_* file is the metadata)"
            )
        if len(reviews) > 1:
            names = ", ".join(p.name for p in reviews)
            raise PulseError(f"{path}: {len(reviews)} reviews files ({names}); give one as FILE")
        review, folder = reviews[0], path
    else:
        if _is_meta(path):
            raise PulseError(f"{path} is a metadata file: give the reviews file or its folder")
        review, folder = path, path.parent
    metas = sorted(p for p in folder.iterdir() if _is_data(p) and _is_meta(p))
    if len(metas) > 1:
        named = [p for p in metas if _stem(p) == _stem(review)]
        if len(named) != 1:
            names = ", ".join(p.name for p in metas)
            raise PulseError(
                f"{folder}: {len(metas)} metadata files ({names}), none named after {review.name}"
            )
        metas = named
    return review, (metas[0] if metas else None)


def _lines(path: Path) -> Iterator[bytes]:
    """The file's non-blank lines (gunzipped when its name ends in .gz)."""
    try:
        with gzip.open(path, "rb") if path.name.endswith(".gz") else path.open("rb") as f:
            for line in f:
                if line.strip():
                    yield line
    except (OSError, EOFError, zlib.error) as exc:
        raise PulseError(f"{path}: cannot read ({exc})") from None


def _first_record(path: Path) -> dict[str, Any]:
    """The first line that parses as an object; PulseError for a file without one."""
    seen = False
    for line in _lines(path):
        seen = True
        try:
            record = parse_record(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            return record
    if not seen:
        raise PulseError(f"{path}: the file is empty")
    raise PulseError(f"{path}: not JSON lines, no line is a JSON object")


def _chunks(path: Path, size: int) -> Iterator[list[bytes]]:
    chunk: list[bytes] = []
    for line in _lines(path):
        chunk.append(line)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# -- metadata ------------------------------------------------------------------------


def read_metadata(path: Path, layout: ReviewLayout) -> pa.Table:
    """The metadata file as ``ARTICLES_SCHEMA`` rows, one per article: of repeated lines
    for one article (the 2018 files have some), the first with a price, else the first.
    Lines that do not parse or name no article are skipped: their reviews are then
    rejected as not in the metadata."""
    first = _first_record(path)
    key = "parent_asin" if "parent_asin" in first else "asin" if "asin" in first else None
    if key is None:
        raise PulseError(f"{path}: not an Amazon metadata file (no asin or parent_asin)")
    if key != layout.article:
        raise PulseError(
            f"{path}: metadata keyed by {key} but the reviews are the {layout.name} layout "
            f"(keyed by {layout.article}): give the metadata of the same release"
        )
    columns: dict[str, list[Any]] = {f.name: [] for f in ARTICLES_SCHEMA}
    for line in _lines(path):
        try:
            record = parse_record(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        article = _text(record.get(key))
        if not article:
            continue
        columns["article_id"].append(article)
        columns["name"].append(_clean(record.get("title")))
        columns["category"].append(_category(record))
        columns["brand"].append(_clean(record.get("brand") or record.get("store")))
        columns["price"].append(parse_price(record.get("price")))
    table = pa.table(columns, schema=ARTICLES_SCHEMA)
    priced_first = pc.sort_indices(
        pa.table({"unpriced": pc.is_null(table["price"]), "row": np.arange(table.num_rows)}),
        sort_keys=[("unpriced", "ascending"), ("row", "ascending")],
    )
    return first_rows(table.take(priced_first))


# -- the source ----------------------------------------------------------------------


class AmazonSource(EventSource):
    """An Amazon reviews file (and its metadata) as contract events in event-time order."""

    def __init__(
        self,
        reviews: Path,
        metadata: Path | None,
        *,
        start: date | None = None,
        end: date | None = None,
    ) -> None:
        super().__init__(NAME, reviews, start=start, end=end, articles_path=metadata)
        self.layout: ReviewLayout | None = None
        self._metadata: pa.Table | None = None  # parsed once: prices and articles()

    def detect(self) -> ReviewLayout:
        """The reviews' layout, from the first record (PulseError for a wrong file)."""
        if self.layout is None:
            self.layout = layout_of(_first_record(self.path), self.path)
        return self.layout

    def articles(self) -> pa.Table | None:
        """The metadata's articles (``ARTICLES_SCHEMA``), or None without a metadata file."""
        if self.articles_path is None:
            return None
        if self._metadata is None:
            self._metadata = read_metadata(self.articles_path, self.detect())
        return self._metadata

    def iter_batches(self, batch_rows: int = 100_000) -> Iterator[pa.Table]:
        """Yield contract tables (``ARROW_SCHEMA``) of accepted reviews, in event-time order
        (ties by reviewer, then article). The whole file is read before the first batch."""
        self.stats = SourceStats()
        layout = self.detect()
        articles = self.articles()
        if articles is None:
            prices = None
        else:
            prices = (pd.Index(articles["article_id"].to_numpy(zero_copy_only=False)),
                      articles["price"].to_numpy(zero_copy_only=False))  # fmt: skip
        window = self._window_us()
        kept: list[pa.Table] = []
        row = 0
        for lines in _chunks(self.path, CHUNK_LINES):
            kept.append(self._read(lines, layout, prices, window, row))
            row += len(lines)
        reviews = pa.concat_tables(kept) if kept else _valid_schema().empty_table()
        del kept
        reviews = reviews.sort_by(
            [("time", "ascending"), ("customer_id", "ascending"),
             ("article_id", "ascending"), ("row", "ascending")]
        )  # fmt: skip
        repeat = _repeats(reviews)
        n_repeats = pc.sum(repeat).as_py() or 0
        if n_repeats:
            self.stats.rejected[DUPLICATE] += n_repeats
            reviews = reviews.filter(pc.invert(repeat))
        for lo in range(0, reviews.num_rows, batch_rows):
            part = reviews.slice(lo, batch_rows)
            self.stats.accepted += part.num_rows
            yield _to_arrow(part)

    def _window_us(self) -> tuple[int | None, int | None]:
        """[start, end + 1 day) in µs since the epoch (None: open)."""

        def us(day: date) -> int:
            return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 10**6

        end = us(self.end) + 86_400 * 10**6 if self.end is not None else None
        return (us(self.start) if self.start is not None else None), end

    def _read(
        self,
        lines: list[bytes],
        layout: ReviewLayout,
        prices: tuple[pd.Index, np.ndarray] | None,
        window: tuple[int | None, int | None],
        first_row: int,
    ) -> pa.Table:
        """One chunk of lines: count its rejected and skipped rows, return the valid ones."""
        customers: list[str | None] = []
        articles: list[str | None] = []
        times: list[int] = []
        line_reasons: list[str | None] = []
        for line in lines:
            problem: str | None = None
            try:
                record = parse_record(line)
            except ValueError:
                problem = MALFORMED
            else:
                if not isinstance(record, dict):
                    problem = NOT_AN_OBJECT
            if problem is not None:
                customers.append(None)
                articles.append(None)
                times.append(-1)
                line_reasons.append(problem)
                continue
            customers.append(_text(record.get(layout.reviewer)))
            articles.append(_text(record.get(layout.article)))
            when = review_time_us(record, layout)
            times.append(-1 if when is None else when)
            line_reasons.append(None)
        n = len(lines)
        time_us = np.array(times, dtype=np.int64)
        has_time = time_us >= 0
        out = pd.DataFrame(
            {
                "event_time": pd.Series(time_us.astype("datetime64[us]")).where(has_time),
                "customer_id": pd.Series(customers, dtype="string[pyarrow]"),
                "article_id": pd.Series(articles, dtype="string[pyarrow]"),
                "quantity": 1,
            }
        )
        missing_customer = out["customer_id"].isna()
        missing_article = out["article_id"].isna()
        price_checks: list[tuple[str, pd.Series]]
        if prices is None:
            out["unit_price"] = np.nan
            price_checks = [(NO_METADATA, pd.Series(True, index=out.index))]
        else:
            index, price = prices
            at = index.get_indexer(out["article_id"].fillna("").to_numpy(object))
            listed = at >= 0
            out["unit_price"] = np.where(listed, price[np.where(listed, at, 0)], np.nan)
            price_checks = [
                (f"price: {layout.article} not in metadata", pd.Series(~listed)),
                (NO_PRICE, out["unit_price"].isna()),
            ]
        reason = pd.Series(line_reasons, dtype="string[pyarrow]").fillna(
            row_reasons(
                out,
                {
                    "event_time": [(f"{layout.time}: not a time", pd.Series(~has_time))],
                    "customer_id": [(f"{layout.reviewer}: missing", missing_customer)],
                    "article_id": [(f"{layout.article}: missing", missing_article)],
                    "unit_price": price_checks,
                },
            )
        )
        start, end = window
        outside = np.zeros(n, dtype=bool)
        if start is not None:
            outside |= has_time & (time_us < start)
        if end is not None:
            outside |= has_time & (time_us >= end)
        self.stats.skipped += int(outside.sum())
        inside = ~outside
        bad = reason.notna().to_numpy() & inside
        self.stats.rows_read += int(inside.sum())
        self.stats.rejected.update(reason[bad].to_list())
        good = inside & ~bad
        return pa.table(
            {
                "time": pa.array(time_us[good], pa.int64()),
                "customer_id": pa.array(out["customer_id"][good], pa.string()),
                "article_id": pa.array(out["article_id"][good], pa.string()),
                "unit_price": pa.array(out["unit_price"].to_numpy(np.float64)[good], pa.float64()),
                "row": pa.array(np.arange(first_row, first_row + n)[good], pa.int64()),
            },
            schema=_valid_schema(),
        )


def _valid_schema() -> pa.Schema:
    return pa.schema(
        [
            ("time", pa.int64()),
            ("customer_id", pa.string()),
            ("article_id", pa.string()),
            ("unit_price", pa.float64()),
            ("row", pa.int64()),
        ]
    )


def _repeats(reviews: pa.Table) -> pa.Array:
    """Per row of reviews sorted by (time, customer, article, row): whether it repeats the
    row before it (same time, reviewer and article), i.e. is a duplicate review."""
    n = reviews.num_rows
    if n < 2:
        return pa.array([False] * n, pa.bool_())
    same = None
    for name in ("time", "customer_id", "article_id"):
        column = reviews.column(name).combine_chunks()
        equal = pc.equal(column.slice(1), column.slice(0, n - 1))
        same = equal if same is None else pc.and_(same, equal)
    return pa.concat_arrays([pa.array([False]), same])


def _to_arrow(part: pa.Table) -> pa.Table:
    """Valid reviews as contract events (ids from reviewer, article and time)."""
    n = part.num_rows
    customers, articles = part.column("customer_id"), part.column("article_id")
    times = part.column("time")
    keys = pc.binary_join_element_wise(customers, articles, pc.cast(times, pa.string()), SEP)
    ids = event_ids(NAME, keys.to_numpy(zero_copy_only=False), np.zeros(n, dtype=np.int64))
    return pa.table(
        {
            "event_id": pa.array(ids, pa.string()),
            "event_time": pc.cast(times, pa.timestamp("us", tz="UTC")),
            "customer_id": customers,
            "article_id": articles,
            "quantity": pa.array(np.ones(n, dtype=np.int32)),
            "unit_price": part.column("unit_price"),
            "sales_channel_id": pa.nulls(n, pa.int32()),
            "source": pa.array([NAME] * n, pa.string()),
            "produced_at": pa.nulls(n, pa.timestamp("us", tz="UTC")),
        },
        schema=ARROW_SCHEMA,
    )


def open_amazon(path: Path, *, start: date | None = None, end: date | None = None) -> AmazonSource:
    """``amazon:PATH`` (a folder or its reviews file) as a source; PulseError when the
    folder holds no reviews file, several, or several metadata files none named after it.
    The reviews' first record is read at once: a file of another layout fails here."""
    reviews, metadata = find_files(path)
    source = AmazonSource(reviews, metadata, start=start, end=end)
    source.detect()
    return source


def write_reviews_before(path: Path, out_dir: Path, before: date) -> Path:
    """Copy ``amazon:PATH`` keeping the reviews dated before ``before`` (UTC), lines
    verbatim and in file order, so they give the same event ids as in the whole file.
    Lines without a valid time are left out (the whole file's replay rejects them); the
    metadata is linked as it is. Returns ``out_dir``, an ``amazon:`` folder."""
    source = open_amazon(path)
    layout = source.detect()
    limit = int(datetime(before.year, before.month, before.day, tzinfo=UTC).timestamp()) * 10**6
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / source.path.name
    gzipped = target.name.endswith(".gz")
    with gzip.open(target, "wb", compresslevel=1) if gzipped else target.open("wb") as out:
        for line in _lines(source.path):
            try:
                record = parse_record(line)
            except ValueError:
                continue
            when = review_time_us(record, layout) if isinstance(record, dict) else None
            if when is not None and when < limit:
                out.write(line if line.endswith(b"\n") else line + b"\n")
    if source.articles_path is not None:
        link = out_dir / source.articles_path.name
        if not link.exists():
            link.symlink_to(source.articles_path.resolve())
    return out_dir

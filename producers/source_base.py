"""What every dataset adapter shares: the contract as Arrow, the counts, ids, reasons.

``producers.adapters`` (the CSV and Parquet layouts) and ``producers.amazon`` (JSON
lines) both build on it; ``producers.adapters.open_source`` picks one. A source is an
``EventSource``: ``iter_batches`` yields ``ARROW_SCHEMA`` tables of accepted events in
event-time order and fills ``stats`` (rows read = accepted + rejected, by reason);
``articles()`` gives its article dimension rows (``ARTICLES_SCHEMA``) when it has one.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from schemas.transaction import FIELD_NAMES, FIELDS, NULL, rules_for

SEP = "\x1f"  # joins the parts of an event id, as schemas.transaction.make_event_id does

#: The contract columns as Arrow types: what ``iter_batches`` yields.
ARROW_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("event_time", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("article_id", pa.string(), nullable=False),
        pa.field("quantity", pa.int32(), nullable=False),
        pa.field("unit_price", pa.float64(), nullable=False),
        pa.field("sales_channel_id", pa.int32(), nullable=True),
        pa.field("source", pa.string(), nullable=False),
        pa.field("produced_at", pa.timestamp("us", tz="UTC"), nullable=True),
    ]
)
assert tuple(ARROW_SCHEMA.names) == FIELD_NAMES

#: A source's article rows, one per article_id: the columns of the lake's article
#: dimension (``storage.lake.ARTICLE_COLUMNS``; a unit test holds the two equal), each
#: null where the source does not say. ``category`` is the path, outermost first, " > ".
ARTICLES_SCHEMA = pa.schema(
    [
        pa.field("article_id", pa.string(), nullable=False),
        pa.field("name", pa.string()),
        pa.field("category", pa.string()),
        pa.field("brand", pa.string()),
        pa.field("price", pa.float64()),
    ]
)
CATEGORY_SEP = " > "


@dataclass
class SourceStats:
    """Counts filled in as a source is iterated.

    ``rows_read`` counts rows inside the date window; rows outside it are
    ``skipped`` (not read as events). ``rejected`` maps a reason to a count.
    """

    rows_read: int = 0
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    skipped: int = 0

    @property
    def n_rejected(self) -> int:
        """Total rejected rows, all reasons."""
        return sum(self.rejected.values())

    def summary(self) -> str:
        """One printable line: read = accepted + rejected, with reasons."""
        reasons = ", ".join(f"{r}: {n:,}" for r, n in self.rejected.most_common())
        text = (
            f"rows read {self.rows_read:,} = accepted {self.accepted:,}"
            f" + rejected {self.n_rejected:,}"
        )
        if reasons:
            text += f" ({reasons})"
        if self.skipped:
            text += f"; {self.skipped:,} outside the date window skipped"
        return text


class EventSource:
    """A dataset readable as contract events in event-time order.

    ``start``/``end`` (inclusive UTC dates) limit the events to a date window.
    Iterating twice reads the file twice and restarts ``stats``. Subclasses implement
    ``iter_batches`` and, when they know their articles, ``articles``.
    """

    def __init__(
        self,
        name: str,
        path: Path,
        *,
        start: date | None = None,
        end: date | None = None,
        customers_path: Path | None = None,
        articles_path: Path | None = None,
    ) -> None:
        self.name = name
        self.path = path
        self.start = start
        self.end = end
        self.customers_path = customers_path
        self.articles_path = articles_path
        self.stats = SourceStats()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {str(self.path)!r})"

    def iter_batches(self, batch_rows: int = 100_000) -> Iterator[pa.Table]:
        """Yield contract tables (``ARROW_SCHEMA``) of accepted events, in event-time order."""
        raise NotImplementedError

    def events(self, batch_rows: int = 100_000) -> Iterator[dict[str, Any]]:
        """Typed contract events (timestamps as UTC datetimes), in event-time order."""
        for table in self.iter_batches(batch_rows):
            yield from table.to_pylist()

    def articles(self) -> pa.Table | None:
        """The source's article rows (``ARTICLES_SCHEMA``), or None when it has none."""
        return None


def event_ids(source: str, keys: np.ndarray, occurrence: np.ndarray) -> list[str]:
    """``make_event_id(source, key, n)`` per row, inlined: it is the adapters' hot loop.

    A unit test proves both give the same ids (``"\\x1f".join`` of the same parts).
    """
    blake2b = hashlib.blake2b
    prefix = f"{source}\x1f"
    return [
        f"{source}-{blake2b(f'{prefix}{key}{SEP}{n}'.encode(), digest_size=12).hexdigest()}"
        for key, n in zip(keys.tolist(), occurrence.tolist(), strict=True)
    ]


# Per contract field, the adapter's checks of the source text that field comes from:
# (reason, failed mask) pairs, the reason naming the source column.
SourceChecks = dict[str, list[tuple[str, pd.Series]]]


def first_reason(checks: list[tuple[str, pd.Series]], index: pd.Index) -> pd.Series:
    """Per row, the first failing check's reason (None when all pass)."""
    reason = pd.Series(pd.NA, index=index, dtype="string[pyarrow]")
    for text, failed in reversed(checks):  # earlier checks overwrite later ones
        reason = reason.mask(failed.to_numpy(dtype=bool, na_value=False), text)
    return reason


def row_reasons(out: pd.DataFrame, source_checks: SourceChecks) -> pd.Series:
    """Per row, why it is rejected (None when it is a valid event).

    Per contract field in contract order: the adapter's source checks for that field,
    then the contract's own checks, derived from ``schemas.transaction``: a null in a
    non-nullable field, then the field's ``RULES``, with the reasons ``validate`` gives.
    Fields the adapters fill themselves (event_id, source, produced_at) are not in ``out``.
    """
    checks: list[tuple[str, pd.Series]] = []
    for spec in FIELDS:
        if spec.name not in out.columns:
            continue
        value = out[spec.name]
        checks += source_checks.get(spec.name, [])
        if not spec.nullable:
            checks.append((f"{spec.name}: {NULL}", value.isna()))
        checks += [(rule.message, rule.broken_series(value)) for rule in rules_for(spec.name)]
    return first_reason(checks, out.index)


def category_path(parts: list[pa.ChunkedArray | pa.Array]) -> pa.ChunkedArray | pa.Array:
    """Category levels (outermost first) joined with " > ", skipping null or empty levels;
    null where every level is."""
    import pyarrow.compute as pc

    blank = pa.scalar(None, pa.string())
    cleaned = [pc.if_else(pc.equal(pc.utf8_trim_whitespace(p), ""), blank, p) for p in parts]
    joined = pc.binary_join_element_wise(*cleaned, CATEGORY_SEP, null_handling="skip")
    return pc.if_else(pc.equal(joined, ""), blank, joined)


def first_rows(articles: pa.Table) -> pa.Table:
    """``articles`` with the first row of each article_id only (nulls dropped), sorted by
    article_id, as ``ARTICLES_SCHEMA``."""
    import pyarrow.compute as pc

    articles = articles.filter(pc.is_valid(articles.column("article_id")))
    ids = articles.column("article_id").combine_chunks()
    first = pc.equal(pc.index_in(ids, value_set=ids), pa.array(np.arange(len(ids)), pa.int32()))
    kept = articles.filter(first).sort_by("article_id")
    return pa.table([kept.column(f.name) for f in ARTICLES_SCHEMA], schema=ARTICLES_SCHEMA)

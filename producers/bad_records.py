"""Records a replay mixes in to test the stream's quarantine and time rules (``--inject-bad``).

``BAD_KINDS`` are malformed records the contract must reject; ``DATED_KINDS`` are
well-formed events with an unusual date. Which source rows get one, and which kind,
is decided from (seed, row) alone, so a resumed replay injects the same records after
its position as an uninterrupted one.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from schemas.transaction import (
    MAX_STRING_LEN,
    encode,
    format_timestamp,
    now_utc,
    parse_timestamp,
)

BAD_KINDS = ("broken_json", "wrong_type", "missing_field", "negative_price", "oversized")
#: Well-formed events with an unusual date, injected like bad records (``kinds=``): one
#: dated a month after the producer's clock (the contract rejects it) and one dated ten
#: years before its source row (valid; older than the stream's lateness: lake only).
DATED_KINDS = ("future", "far_past")
FUTURE_BY = timedelta(days=30)
FAR_PAST_BY = timedelta(days=3650)


def bad_record(event: Mapping[str, Any], kind: str) -> bytes:
    """A malformed variant of ``event`` that the contract must reject, with its own id.

    The ``DATED_KINDS`` are well-formed copies with their own id (``<id>-dated-<kind>``),
    ``produced_at`` set to now and the event time moved (``FUTURE_BY`` after now, or
    ``FAR_PAST_BY`` before the row's own time).
    """
    wire = json.loads(encode(event))
    if kind in DATED_KINDS:
        produced = now_utc()
        when = parse_timestamp(wire["event_time"])
        when = produced + FUTURE_BY if kind == "future" else when - FAR_PAST_BY
        wire.update(
            event_id=f"{wire['event_id']}-dated-{kind}",
            event_time=format_timestamp(when),
            produced_at=format_timestamp(produced),
        )
        return json.dumps(wire, separators=(",", ":")).encode()
    wire["event_id"] = f"{wire['event_id']}-bad-{kind}"
    if kind == "broken_json":
        return encode(wire)[:-7]  # cut mid-object: not parseable JSON
    if kind == "wrong_type":
        wire["quantity"] = str(wire["quantity"])
    elif kind == "missing_field":
        del wire["customer_id"]
    elif kind == "negative_price":
        wire["unit_price"] = -abs(wire["unit_price"]) - 1.0
    elif kind == "oversized":
        wire["article_id"] = "9" * (MAX_STRING_LEN * 4)
    else:
        raise ValueError(f"unknown bad-record kind {kind}")
    return json.dumps(wire, separators=(",", ":")).encode()


def bad_kind_for_row(
    row: int, fraction: float, seed: int, kinds: Sequence[str] = BAD_KINDS
) -> str | None:
    """Whether a bad record goes before source row ``row``, and which kind (deterministic).

    Decided from (seed, row) alone, so a resumed replay injects the same bad
    records after its position as an uninterrupted one. ``kinds``: the kinds drawn
    from (``BAD_KINDS``, optionally with ``DATED_KINDS``).
    """
    if fraction <= 0:
        return None
    rng = random.Random(seed * 1_000_003 + row)
    if rng.random() >= fraction:
        return None
    return kinds[rng.randrange(len(kinds))]

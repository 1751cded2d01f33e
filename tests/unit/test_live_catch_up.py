"""A run killed between a batch's fold and its online write: at the next start the live
view rewrites every customer, so the online store equals the stream's state again."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from runtime.settings import Settings
from serving import read
from serving.live import LiveView
from storage.columnar_store import CustomerStateStore


def _batch(*events: tuple[str, str, str, float, int]) -> pa.Table:
    """Purchases of one unit as (event_id, customer_id, 'YYYY-MM-DD', price, channel)."""
    ids, customers, days, prices, channels = zip(*events, strict=True)
    return pa.table({
        "event_id": list(ids), "customer_id": list(customers),
        "event_time": pa.array([datetime.fromisoformat(d).replace(tzinfo=UTC) for d in days],
                               pa.timestamp("us", tz="UTC")),
        "quantity": pa.array([1] * len(ids), pa.int32()),
        "unit_price": pa.array(prices, pa.float64()),
        "sales_channel_id": pa.array(channels, pa.int32()),
    })  # fmt: skip


def test_a_store_behind_the_stream_is_rewritten_at_start(tmp_path: Path) -> None:
    settings = Settings(data_root=tmp_path / "root")
    state = CustomerStateStore(tmp_path / "state", allowed_lateness_days=3)
    live = LiveView(settings, log=lambda _: None)
    first = state.apply_batch(0, _batch(("e1", "c1", "2020-09-01", 10.0, 1)))
    live.batch(state, first)
    live.flush()
    # batch 1 is folded (a new customer, and c1 again) but the run dies before the live
    # view writes it: the online store stays at batch 0
    state.apply_batch(1, _batch(("e2", "c1", "2020-09-03", 5.0, 1),
                                ("e3", "c2", "2020-09-03", 2.0, 2)))  # fmt: skip
    live.close()
    assert read.lookup(settings, "c1")["n_events"] == 1

    logs: list[str] = []
    restarted = LiveView(settings, log=logs.append)
    try:
        restarted.catch_up(state)
        assert any("the online store was at batch 0, the stream at 1" in line for line in logs)
        c1, c2 = read.lookup(settings, "c1"), read.lookup(settings, "c2")
        assert (c1["n_events"], c1["monetary"], c1["recency_days"]) == (2, 15.0, 0)
        assert (c2["n_events"], c2["monetary"]) == (1, 2.0)
        logs.clear()
        restarted.catch_up(state)  # caught up: nothing to do
        assert logs == []
    finally:
        restarted.close()

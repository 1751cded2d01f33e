"""The keyed state store's fold, on hand-made batches (no JVM)."""

from __future__ import annotations

from datetime import UTC, date, datetime

import numpy as np
import pyarrow as pa
import pytest

from storage.columnar_store import CustomerStateStore
from storage.stream_clock import day_number, robust_clock


def _batch(*events: tuple[str, str, str, int, float, int | None]) -> pa.Table:
    """Events as (event_id, customer_id, 'YYYY-MM-DD[Thh:mm]', quantity, price, channel)."""
    ids, customers, times, qty, price, channel = zip(*events, strict=True)
    return pa.table(
        {
            "event_id": list(ids),
            "customer_id": list(customers),
            "event_time": pa.array(
                [datetime.fromisoformat(t).replace(tzinfo=UTC) for t in times],
                pa.timestamp("us", tz="UTC"),
            ),
            "quantity": pa.array(qty, pa.int32()),
            "unit_price": pa.array(price, pa.float64()),
            "sales_channel_id": pa.array(channel, pa.int32()),
        }
    )


def _customers(store: CustomerStateStore) -> dict[str, dict]:  # type: ignore[type-arg]
    customers, _ = store.read()
    return {r["customer_id"]: r for r in customers.to_pylist()}


def _days(store: CustomerStateStore, customer: str) -> dict[str, tuple]:  # type: ignore[type-arg]
    _, days = store.read([customer])
    return {
        str(date.fromordinal(date(1970, 1, 1).toordinal() + r["day"])): (
            r["n_events"],
            r["n_purchases"],
            r["spend"],
        )
        for r in days.to_pylist()
    }


@pytest.fixture
def store(tmp_path):  # type: ignore[no-untyped-def]
    s = CustomerStateStore(tmp_path / "state", allowed_lateness_days=3)
    yield s
    s.close()


def test_two_batches_move_only_the_touched_customers(store) -> None:  # type: ignore[no-untyped-def]
    first = store.apply_batch(
        0,
        _batch(
            ("e1", "c1", "2020-09-01", 1, 10.0, 1),
            ("e2", "c1", "2020-09-01", 2, 5.0, 2),
            ("e3", "c2", "2020-09-02", 1, 7.5, None),
            ("e3", "c2", "2020-09-02", 1, 7.5, None),  # the same id twice in one batch
        ),
    )
    assert (first.counted, first.duplicates, first.late, first.touched) == (3, 1, 0, 2)
    second = store.apply_batch(
        1,
        _batch(
            ("e4", "c1", "2020-09-03", -1, 5.0, 2),  # a return: an event, not a purchase day
            ("e2", "c1", "2020-09-01", 2, 5.0, 2),  # re-sent from the first batch
            ("e5", "c3", "2020-09-03T12:00", 1, 1.0, 1),
        ),
    )
    assert (second.counted, second.duplicates, second.touched) == (2, 1, 2)
    assert second.duplicate_ids == ("e2",)
    replayed = store.apply_batch(1, _batch(("e4", "c1", "2020-09-03", -1, 5.0, 2)))
    assert (replayed.applied, replayed.duplicate_ids) == (False, ("e2",))  # for the lake
    got = _customers(store)
    assert got["c1"] == {
        "customer_id": "c1",
        "first_purchase_date": day_number(date(2020, 9, 1)),
        "last_purchase_date": day_number(date(2020, 9, 1)),
        "purchase_days": 1,
        "n_events": 3,
        "monetary": 10.0 + 10.0 - 5.0,
        "n_online": 2,
        "n_with_channel": 3,
        "max_event_time": int(datetime(2020, 9, 3, tzinfo=UTC).timestamp() * 1e6),
    }
    assert got["c2"]["n_with_channel"] == 0 and got["c2"]["monetary"] == 7.5
    assert _days(store, "c1") == {"2020-09-01": (2, 2, 20.0), "2020-09-03": (1, 0, -5.0)}
    assert store.clock() == datetime(2020, 9, 3, 12, tzinfo=UTC)
    assert second.touched_ids == ("c1", "c3")


def test_a_replayed_batch_id_changes_nothing(store) -> None:  # type: ignore[no-untyped-def]
    batch = _batch(("e1", "c1", "2020-09-01", 1, 10.0, 1))
    assert store.apply_batch(0, batch).applied
    again = store.apply_batch(0, _batch(("e9", "c9", "2020-09-01", 1, 99.0, 1)))
    assert not again.applied
    assert set(_customers(store)) == {"c1"}


def test_late_events_are_counted_out_and_a_late_purchase_day_is_new(store) -> None:  # type: ignore[no-untyped-def]
    store.apply_batch(0, _batch(("e1", "c1", "2020-09-10", 1, 1.0, 1)))
    result = store.apply_batch(
        1,
        _batch(
            ("e2", "c1", "2020-09-06", 1, 2.0, 1),  # 4 days before the clock: too late
            ("e3", "c1", "2020-09-07", 1, 3.0, 1),  # exactly the watermark: in time
        ),
    )
    assert (result.counted, result.late) == (1, 1)
    c1 = _customers(store)["c1"]
    assert (c1["purchase_days"], c1["n_events"], c1["monetary"]) == (2, 2, 4.0)
    assert c1["first_purchase_date"] == day_number(date(2020, 9, 7))


def test_one_event_far_ahead_does_not_move_the_clock() -> None:
    def us(*ymd: int) -> int:
        return int(datetime(*ymd, tzinfo=UTC).timestamp() * 1_000_000)

    def clock(days: list[tuple[int, int, int]], previous: tuple[int, int, int] | None = None):  # type: ignore[no-untyped-def]
        return robust_clock(np.array([us(*d) for d in days]), us(*previous) if previous else None)

    assert clock([(2020, 9, 1), (2020, 9, 2), (2020, 9, 3), (2030, 1, 1)]) == us(2020, 9, 3)
    assert clock([(2030, 1, 1)], previous=(2020, 9, 3)) == us(2020, 9, 3)
    # A gap of weeks after the current clock is data; so is months of history at once.
    assert clock([(2020, 10, 1)], previous=(2020, 9, 3)) == us(2020, 10, 1)
    history = [(2020, m, d) for m in range(1, 9) for d in (1, 15)]
    assert clock(history) == us(2020, 8, 15)
    # A jump two events agree on is believed.
    assert clock([(2021, 6, 1), (2021, 6, 2)], previous=(2020, 9, 3)) == us(2021, 6, 2)


def test_days_beyond_the_history_are_forgotten(store) -> None:  # type: ignore[no-untyped-def]
    store.apply_batch(0, _batch(("e1", "c1", "2020-01-01", 1, 1.0, 1)))
    # 121 days later: a jump of the clock, which takes two events to believe
    store.apply_batch(
        1, _batch(("e2", "c2", "2020-05-01", 1, 1.0, 1), ("e3", "c3", "2020-05-01", 1, 1.0, 1))
    )
    assert _days(store, "c1") == {}
    assert _customers(store)["c1"]["n_events"] == 1  # the totals stay


def test_a_reopened_store_has_the_same_state(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Snapshot + the changelogs after it give back exactly the state in memory."""
    import storage.columnar_store as module

    monkeypatch.setattr(module, "SNAPSHOT_EVERY", 2)  # batch 1 writes a snapshot
    store = CustomerStateStore(tmp_path / "s", allowed_lateness_days=3)
    batches = [
        _batch(("e1", "c1", "2020-09-01", 1, 10.0, 1), ("e2", "c2", "2020-09-01", 2, 1.5, None)),
        _batch(("e3", "c1", "2020-09-02", -1, 10.0, 2), ("e4", "c3", "2020-09-02", 1, 3.0, 2)),
        _batch(("e5", "c4", "2020-09-03", 1, 1.0, 1), ("e1", "c1", "2020-09-01", 1, 10.0, 1)),
    ]
    for n, batch in enumerate(batches):
        store.apply_batch(n, batch)
    assert [p.name for p in (tmp_path / "s" / "changelog").iterdir()] == ["000000000002"]
    reopened = CustomerStateStore(tmp_path / "s", allowed_lateness_days=3)
    assert reopened.read() == store.read()
    assert (reopened.last_batch, reopened.clock_us) == (2, store.clock_us)
    # Its seen ids survived: a re-send is still a duplicate, and a replay is skipped.
    assert reopened.apply_batch(2, batches[2]).duplicate_ids == ("e1",)
    again = reopened.apply_batch(3, _batch(("e4", "c3", "2020-09-02", 1, 3.0, 2)))
    assert (again.counted, again.duplicate_ids) == (0, ("e4",))


def test_ids_kept_only_for_their_arrival_are_capped(store, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import storage.columnar_store as module

    monkeypatch.setattr(module, "RESEND_MAX_IDS", 2)
    store.apply_batch(0, _batch(*[(f"e{i}", "c1", "2020-01-01", 1, 1.0, 1) for i in range(5)]))
    # Two events a month later move the clock: e0..e4 leave the lateness window, and of
    # those only the newest two arrivals stay remembered.
    store.apply_batch(
        1, _batch(("f1", "c2", "2020-02-01", 1, 1.0, 1), ("f2", "c2", "2020-02-01", 1, 1.0, 1))
    )
    again = store.apply_batch(
        2, _batch(("e4", "c1", "2020-01-01", 1, 1.0, 1), ("e0", "c1", "2020-01-01", 1, 1.0, 1))
    )
    assert again.duplicate_ids == ("e4",)  # e0 is forgotten: late, so it is not counted
    assert (again.counted, again.late) == (0, 1)


def test_the_changelog_lists_only_whole_entries_and_drops_what_a_snapshot_covers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from storage.changelog import Changelog

    log = Changelog(tmp_path / "s")
    assert (log.newest_snapshot(), log.changelog_ids(), log.size_bytes()) == (None, [], 0)
    for batch_id in range(3):
        log.write_changelog(batch_id, {"t": pa.table({"x": [batch_id]})}, {"batch_id": batch_id})
    (tmp_path / "s" / "changelog" / "000000000003").mkdir()  # no meta.json: not written whole
    assert log.changelog_ids() == [0, 1, 2]
    assert log.read_changelog(1) == ({"t": pa.table({"x": [1]})}, {"batch_id": 1})
    log.write_snapshot(-1, {"t": pa.table({"x": [-1]})}, {"batch_id": -1})
    log.write_snapshot(1, {"t": pa.table({"x": [9]})}, {"batch_id": 1})
    assert log.newest_snapshot() == ({"t": pa.table({"x": [9]})}, {"batch_id": 1})
    log.drop_covered(1)
    assert [p.name for p in (tmp_path / "s" / "snapshot").iterdir()] == ["000000000002"]
    assert log.changelog_ids() == [2] and log.size_bytes() > 0
    log.drop_changelogs()
    assert log.changelog_ids() == []

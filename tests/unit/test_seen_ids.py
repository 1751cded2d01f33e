"""The seen-id set: exact membership by hash then string, in arrival order, forgettable."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from storage import seen_ids
from storage.seen_ids import SeenIds, id_hashes


def _add(seen: SeenIds, ids: list[str], day: int, arrived: int) -> None:
    arr = np.array(ids, dtype=object)
    seen.add(pa.array(ids, pa.string()), id_hashes(arr), np.full(len(ids), day), arrived)


def _contains(seen: SeenIds, ids: list[str]) -> list[bool]:
    return seen.contains(np.array(ids, dtype=object)).tolist()


def test_membership_is_exact_over_several_batches() -> None:
    seen = SeenIds()
    assert _contains(seen, ["a"]) == [False]
    _add(seen, ["a", "b", "c"], day=10, arrived=100)
    _add(seen, ["d"], day=11, arrived=200)
    got = _contains(seen, ["a", "x", "d", "c", "ab", ""])
    assert got == [True, False, True, True, False, False]
    assert len(seen) == 4
    assert seen.table().to_pydict() == {
        "event_id": ["a", "b", "c", "d"],
        "day": [10, 10, 10, 11],
        "arrived_us": [100, 100, 100, 200],
    }


def test_a_hash_collision_never_makes_a_new_id_look_seen(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # Every id hashes alike: only the string comparison can tell them apart.
    monkeypatch.setattr(seen_ids, "id_hashes", lambda ids: np.zeros(len(ids), np.uint64))
    seen = SeenIds()
    ids = ["e1", "e2", "e3"]
    seen.add(pa.array(ids), np.zeros(3, np.uint64), np.zeros(3), 1)
    seen.add(pa.array(["e4"]), np.zeros(1, np.uint64), np.zeros(1), 2)
    probe = np.array(["e3", "e9", "e4", "e1", "e5"], dtype=object)
    assert seen.contains(probe).tolist() == [True, False, True, True, False]


def test_keep_forgets_and_the_index_follows() -> None:
    seen = SeenIds()
    _add(seen, ["a", "b"], day=1, arrived=1)
    _add(seen, ["c", "d"], day=2, arrived=2)
    seen.keep(np.array([False, True, False, True]))
    assert seen.table().column("event_id").to_pylist() == ["b", "d"]
    assert _contains(seen, ["a", "b", "c", "d"]) == [False, True, False, True]
    _add(seen, ["a"], day=3, arrived=3)  # forgotten, so it can come back
    assert _contains(seen, ["a"]) == [True]


def test_a_table_round_trip_keeps_every_entry_and_its_order() -> None:
    seen = SeenIds()
    _add(seen, ["x", "y"], day=5, arrived=50)
    _add(seen, ["z"], day=6, arrived=60)
    again = SeenIds.from_table(seen.table())
    assert again.table().equals(seen.table())
    more = SeenIds.from_table(seen.table())
    more.extend(pa.table({"event_id": ["w"], "day": pa.array([7], pa.int64()), "arrived_us": [70]}))
    assert _contains(more, ["w", "x", "q"]) == [True, True, False]

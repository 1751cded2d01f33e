"""The event ids the stream has seen, as NumPy arrays: membership without a Python dict.

The stream must count a re-sent event once, so it remembers the ids it folded (with
each id's event day and arrival time, which decide when it may forget one). A Python
dict of 200k new strings per micro-batch, plus a pass over a million of them to
forget the old ones, was a third of a batch's fold. Here:

- the ids are kept in arrival order as Arrow strings, with their day and arrival
  time in parallel NumPy arrays;
- a sorted array of their 64-bit hashes (``pandas.util.hash_array``, SipHash), with
  each hash's position in arrival order, answers "seen?" for a whole batch with one
  ``searchsorted``;
- a hash match is confirmed by comparing the strings, so a hash collision can never
  make a new event look like a re-send.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


def id_hashes(ids: np.ndarray) -> np.ndarray:
    """64-bit hashes of an object array of strings (vectorised)."""
    return pd.util.hash_array(ids, categorize=False)


class SeenIds:
    """Event id -> (event day, arrival time in microseconds), in arrival order."""

    def __init__(self) -> None:
        self._ids: list[pa.Array] = []  # arrival order, in chunks
        self._n = 0
        self.day = np.zeros(0, np.int64)
        self.arrived_us = np.zeros(0, np.int64)
        self._hash = np.zeros(0, np.uint64)  # arrival order
        self._sorted = np.zeros(0, np.uint64)  # the hashes, sorted
        self._at = np.zeros(0, np.int64)  # arrival position of each sorted hash

    def __len__(self) -> int:
        return self._n

    def _id_at(self, position: int) -> str:
        for chunk in self._ids:
            if position < len(chunk):
                return str(chunk[position].as_py())
            position -= len(chunk)
        raise IndexError(position)

    def contains(self, ids: np.ndarray, hashes: np.ndarray | None = None) -> np.ndarray:
        """Which of ``ids`` (an object array of strings) were seen; a bool array."""
        if hashes is None:
            hashes = id_hashes(ids)
        out = np.zeros(len(ids), bool)
        if not self._n or not len(ids):
            return out
        pos = np.searchsorted(self._sorted, hashes)
        inside = pos < len(self._sorted)
        match = np.zeros(len(ids), bool)
        match[inside] = self._sorted[pos[inside]] == hashes[inside]
        for i in np.flatnonzero(match):  # a re-send (or, rarely, a collision): compare
            p = int(pos[i])
            while p < len(self._sorted) and self._sorted[p] == hashes[i]:
                if self._id_at(int(self._at[p])) == ids[i]:
                    out[i] = True
                    break
                p += 1
        return out

    def add(self, ids: pa.Array, hashes: np.ndarray, days: np.ndarray, arrived_us: int) -> None:
        """Append ids not seen before (the caller checked) with their days and arrival."""
        if not len(ids):
            return
        self._ids.append(ids)
        positions = np.arange(self._n, self._n + len(ids), dtype=np.int64)
        self._n += len(ids)
        self.day = np.concatenate([self.day, np.asarray(days, np.int64)])
        self.arrived_us = np.concatenate([self.arrived_us, np.full(len(ids), arrived_us, np.int64)])
        self._hash = np.concatenate([self._hash, hashes])
        order = np.argsort(hashes, kind="stable")
        new_sorted = hashes[order]
        at = np.searchsorted(self._sorted, new_sorted, side="right")
        self._sorted = np.insert(self._sorted, at, new_sorted)
        self._at = np.insert(self._at, at, positions[order])

    def keep(self, mask: np.ndarray) -> None:
        """Keep only the entries where ``mask`` (arrival order) is True."""
        if mask.all():
            return
        ids = self.ids().filter(pa.array(mask))
        days, arrived, hashes = self.day[mask], self.arrived_us[mask], self._hash[mask]
        self._rebuild(ids, days, arrived, hashes)

    def _rebuild(
        self, ids: pa.Array, days: np.ndarray, arrived: np.ndarray, hashes: np.ndarray
    ) -> None:
        self._ids = [ids] if len(ids) else []
        self._n = len(ids)
        self.day, self.arrived_us, self._hash = days, arrived, hashes
        order = np.argsort(hashes, kind="stable")
        self._sorted, self._at = hashes[order], order.astype(np.int64)

    def ids(self) -> pa.Array:
        """Every id kept, in arrival order."""
        if not self._ids:
            return pa.array([], pa.string())
        if len(self._ids) > 1:
            self._ids = [pa.concat_arrays(self._ids)]
        return self._ids[0]

    def table(self) -> pa.Table:
        """event_id, day, arrived_us (arrival order): what the changelogs store."""
        return pa.table(
            {
                "event_id": self.ids(),
                "day": pa.array(self.day, pa.int64()),
                "arrived_us": pa.array(self.arrived_us, pa.int64()),
            }
        )

    def extend(self, table: pa.Table) -> None:
        """Append the rows of a ``table()``-shaped table (ids not held yet)."""
        ids = pc.cast(table.column("event_id").combine_chunks(), pa.string())
        if not len(ids):
            return
        hashes = id_hashes(ids.to_numpy(zero_copy_only=False))
        days = table.column("day").to_numpy()
        arrived = table.column("arrived_us").to_numpy()
        if not self._n:
            self._rebuild(ids, days.astype(np.int64), arrived.astype(np.int64), hashes)
            return
        for value in np.unique(arrived):  # add() takes one arrival time per call
            at = arrived == value
            self.add(ids.filter(pa.array(at)), hashes[at], days[at], int(value))

    @classmethod
    def from_table(cls, table: pa.Table) -> SeenIds:
        """A ``table()``-shaped table -> the set."""
        seen = cls()
        seen.extend(table)
        return seen

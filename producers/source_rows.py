"""A replay's source as chunks of rows: event times, record keys and open bodies, events.

The source yields Arrow tables or batches (``Source.iter_batches``: each is one chunk,
encoded at once by ``producers.arrow_encode``) or single event mappings (grouped into
chunks, each event encoded by ``open_body``). Either way a chunk gives the replay what
it needs: every row's event time (pacing and the order check), the keys and open bodies
of a range of rows, and one row as an event (a bad record is made from it).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from producers.arrow_encode import encode_bodies, event_keys, open_body
from runtime.errors import PulseError

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

EVENTS_PER_CHUNK = 1000  # mapping events gathered into one chunk before sending

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)


def micros(ts: datetime) -> int:
    """Microseconds since the Unix epoch of an event time (naive means UTC)."""
    return ((ts if ts.tzinfo else ts.replace(tzinfo=UTC)) - _EPOCH) // _ONE_US


def from_micros(us: int) -> datetime:
    """The UTC time ``us`` microseconds after the Unix epoch."""
    return _EPOCH + timedelta(microseconds=us)


def first_disorder(times: np.ndarray, previous: int | None) -> int | None:
    """Index of the first time earlier than the one before it (``previous`` before index 0)."""
    import numpy as np

    if not len(times):
        return None
    if previous is not None and times[0] < previous:
        return 0
    later = np.flatnonzero(times[1:] < times[:-1])
    return int(later[0]) + 1 if len(later) else None


class TableRows:
    """A chunk of source rows given as an Arrow table: encoded for all its rows at once."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table

    def __len__(self) -> int:
        return self.table.num_rows

    def times(self, row: int) -> np.ndarray:
        """Event times in µs since the epoch (``row``: the first row's index, for errors)."""
        import pyarrow as pa

        column = self.table.column("event_time")
        if not pa.types.is_timestamp(column.type):
            raise PulseError(f"event_time is {column.type}, not a timestamp (rows from {row:,})")
        if column.null_count:
            raise PulseError(f"event_time is null in the rows from {row:,}")
        tz = column.type.tz or "UTC"
        us = column.cast(pa.timestamp("us", tz=tz), safe=False).cast(pa.int64())
        return us.to_numpy()

    def encode(self, lo: int, hi: int) -> tuple[list[bytes], list[bytes]]:
        """Keys and open bodies of rows ``lo .. hi-1``."""
        part = self.table.slice(lo, hi - lo)
        return event_keys(part), encode_bodies(part)

    def event(self, i: int) -> dict[str, Any]:
        """Row ``i`` as a contract event."""
        return self.table.slice(i, 1).to_pylist()[0]


class EventRows:
    """A chunk of source rows given as mappings: encoded one by one."""

    def __init__(self, events: Sequence[Mapping[str, Any]]) -> None:
        self.events = events

    def __len__(self) -> int:
        return len(self.events)

    def times(self, row: int) -> np.ndarray:
        """Event times in µs since the epoch."""
        import numpy as np

        return np.array([micros(e["event_time"]) for e in self.events], dtype=np.int64)

    def encode(self, lo: int, hi: int) -> tuple[list[bytes], list[bytes]]:
        """Keys and open bodies of rows ``lo .. hi-1``."""
        part = self.events[lo:hi]
        return [str(e["customer_id"]).encode() for e in part], [open_body(e) for e in part]

    def event(self, i: int) -> Mapping[str, Any]:
        """Row ``i`` as given."""
        return self.events[i]


def chunks(events: Iterable[Any]) -> Iterator[TableRows | EventRows]:
    """The source as chunks: each Arrow table or batch is one, mappings are grouped."""
    import pyarrow as pa

    pending: list[Mapping[str, Any]] = []
    for item in events:
        if isinstance(item, pa.Table | pa.RecordBatch):
            if pending:
                yield EventRows(pending)
                pending = []
            table = item if isinstance(item, pa.Table) else pa.Table.from_batches([item])
            if table.num_rows:
                yield TableRows(table)
            continue
        pending.append(item)
        if len(pending) >= EVENTS_PER_CHUNK:
            yield EventRows(pending)
            pending = []
    if pending:
        yield EventRows(pending)

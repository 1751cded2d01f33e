"""The live view: keeps the online store current as the stream runs (a ``streaming.output.Sink``).

Per micro-batch, for the customers the batch touched only: their absolute state is read
from the stream's store on the stream's thread (it changes with the next batch), and
handed to one worker thread, which upserts their records into the online store with the
clock. Nothing is scored here: the store holds state, and the read path evaluates the
features and the scores as of the stream clock (``serving.read``), so a customer's
served churn probability is never older than the clock, touched or not. When the
worker is behind, the queued batches are merged (a customer's latest state wins); at
most two batches wait, then the stream waits.

Before that, it re-resolves every CURRENT pointer (three small files): when a retrain
moved one, the new version's keyed outputs (segments, recommendation lists, the
popularity list) are loaded into the store once, with its scorers in the store's meta,
and the stream logs the pick-up. No restart is needed.

On each scheduled full snapshot every customer's record is written again (the lambda
correction and the seed change them all), and the whole view as of the clock is
published as one Parquet snapshot (``serving.view.publish_view``), readable by pandas,
DuckDB and Spark.

The store is derived data: every write is an upsert of absolute values, so a replayed
batch, or a restart, writes the same records again.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from runtime.settings import Settings
from serving.online import STATE_COLUMNS, OnlineStore, open_store
from serving.view import ModelCache, ModelOutputs, assemble, by_id, publish_view, score
from storage.columnar_store import BatchResult, CustomerStateStore
from storage.state_rows import history_json, state_table

TOTALS = STATE_COLUMNS[:7]  # the totals; then max_event_time and the history


def _micros(column: pa.ChunkedArray | pa.Array) -> list[Any]:
    return pc.cast(column, pa.int64()).to_pylist()


def records(state: pa.Table) -> Iterator[tuple[Any, ...]]:
    """State rows -> online-store records (``RECORD_COLUMNS``), one per row."""
    columns = [state["customer_id"].to_pylist()]
    for c in TOTALS:
        col = state[c]
        columns.append(
            pc.cast(col, pa.int32()).to_pylist() if pa.types.is_date(col.type) else col.to_pylist()
        )
    columns.append(_micros(state["max_event_time"]))
    columns.append(history_json(state).to_pylist())
    return zip(*columns, strict=True)


class LiveView:
    """The stream's sink: online-store upserts per batch, a full view per snapshot."""

    def __init__(
        self,
        settings: Settings,
        log: Callable[[str], None] = print,
        online: OnlineStore | None = None,
    ) -> None:
        self.settings = settings
        self.log = log
        self.online = online if online is not None else open_store(settings)
        self.models = ModelCache()
        self.read_seconds: float | None = None  # the stream thread's part of the last batch
        self.update_seconds: float | None = None  # the worker's last round
        # One worker thread stores the touched customers while the stream goes on to its
        # next batch; at most two batches wait for it.
        self._queue: queue.Queue[_Update | None] = queue.Queue(maxsize=2)
        self._lock = threading.Lock()  # the online store and models: worker or snapshot
        self._failure: Exception | None = None
        self._stream: dict[str, Any] | None = None  # the last progress report, summarised
        self._events_total = 0
        self._worker = threading.Thread(target=self._work, name="pulse-live-view", daemon=True)
        self._worker.start()

    def current_models(self) -> ModelOutputs:
        """The CURRENT models; loads a newly promoted version's outputs into the store."""
        models = self.models.current(self.settings)
        if self.models.loaded_now:
            self._load_outputs(models, self.models.loaded_now)
        return models

    def _load_outputs(self, models: ModelOutputs, names: list[str]) -> None:
        t0 = time.perf_counter()
        if "segments" in names and models.segments is not None:
            seg = models.segments
            values = (
                json.dumps({"segment_id": i, "segment_name": n})
                for i, n in zip(
                    seg["segment_id"].to_pylist(), seg["segment_name"].to_pylist(), strict=True
                )
            )
            self.online.replace_output(
                "segments",
                models.segments_version or "",
                zip(seg["customer_id"].to_pylist(), values, strict=True),
            )
        if "recommendations" in names and models.recommendations is not None:
            recs = models.recommendations
            self.online.replace_output(
                "recommendations",
                models.recs_version or "",
                zip(
                    recs["customer_id"].to_pylist(),
                    (json.dumps(r) for r in recs["recommendations"].to_pylist()),
                    strict=True,
                ),
            )
        self.online.set_meta(
            {
                "versions": models.versions(),
                "popular": list(models.popular or ()),
                "scorers": models.scorers(),
            }
        )
        picked = ", ".join(f"{n} {models.versions()[n]}" for n in names)
        self.log(f"model picked up: {picked} ({time.perf_counter() - t0:.1f} s, no restart)")

    def batch(self, store: CustomerStateStore, result: BatchResult) -> None:
        """Hand the touched customers' new state to the worker (read here: the store is
        the stream's, and changes with its next batch). Blocks only when the worker is
        two batches behind; raises the worker's error, if it had one."""
        self._raise_failure()
        clock = store.clock()
        if clock is None:
            return
        t0 = time.perf_counter()
        state = state_table(*store.read(list(result.touched_ids))) if result.touched_ids else None
        self.read_seconds = time.perf_counter() - t0
        self._queue.put(_Update(state, clock, result.batch_id))

    def _work(self) -> None:
        """The worker: merge what is queued, upsert it."""
        while True:
            updates = [self._queue.get()]
            while not self._queue.empty():
                updates.append(self._queue.get_nowait())
            try:
                if any(u is None for u in updates):
                    return  # closing (None is queued last)
                with self._lock:
                    self._apply([u for u in updates if u is not None])
            except Exception as exc:  # surfaced on the stream thread at its next batch
                self._failure = exc
            finally:
                for _ in updates:
                    self._queue.task_done()

    def _apply(self, updates: list[_Update]) -> None:
        t0 = time.perf_counter()
        last = updates[-1]
        states = [u.state for u in updates if u.state is not None and u.state.num_rows]
        self.current_models()  # a newly promoted version goes into the store first
        meta = {"clock_us": _clock_us(last.clock), "last_batch": last.batch_id,
                "written_at": time.time(), "stream": self._stream}  # fmt: skip
        if states:  # the records and their clock in one transaction
            self.online.write_records(records(_latest_rows(states)), meta)
        else:
            self.online.set_meta(meta)
        self.update_seconds = time.perf_counter() - t0
        self.log(
            f"live view: {sum(0 if u.state is None else u.state.num_rows for u in updates):,} "
            f"customers of {len(updates)} batch(es) stored, "
            f"{self.update_seconds * 1000:.0f} ms"
        )

    def progress(self, progress: dict[str, Any]) -> None:
        """Keep Spark's report of a micro-batch in the store's meta (``stream``: rates,
        duration, end offsets), for the API's /health and /metrics. Written now unless
        the worker holds the store, which then writes it with its next round."""
        self._events_total += int(progress.get("numInputRows") or 0)
        self._stream = stream_summary(progress, self._events_total)
        if self._lock.acquire(blocking=False):
            try:
                self.online.set_meta({"stream": self._stream})
            finally:
                self._lock.release()

    def catch_up(self, store: CustomerStateStore) -> None:
        """If the online store is behind the stream's state (a SIGKILL between a batch's
        fold and its online write: those customers would stay stale until a snapshot),
        rewrite every customer once, with the store's clock and last batch."""
        stream_last, clock = store.last_batch, store.clock()
        online_last = self.online.meta().get("last_batch")
        if stream_last is None or stream_last < 0 or clock is None:
            return  # nothing folded yet beyond the seed (its snapshot wrote everyone)
        if online_last is not None and online_last >= stream_last:
            return
        self.log(f"live view: the online store was at batch {online_last}, the stream at "
                 f"{stream_last}: every customer is rewritten")  # fmt: skip
        self._queue.put(_Update(state_table(*store.read()), clock, stream_last))
        self.flush()

    def flush(self) -> None:
        """Wait until every queued update is in the online store."""
        self._queue.join()
        self._raise_failure()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise RuntimeError(f"the live view's update failed: {failure}") from failure

    def snapshot(self, state: pa.Table, features: pa.Table, as_of: datetime) -> None:
        """Write every customer's record; publish the whole view as of ``as_of``."""
        self.flush()
        with self._lock:
            models = self.current_models()
            self.online.write_records(
                records(state), {"clock_us": _clock_us(as_of), "written_at": time.time()}
            )
            features = by_id(state["customer_id"], features)  # the view in state order
            publish_view(self.settings, assemble(features, score(features, models), models))

    def close(self) -> None:
        """Finish the queued updates, stop the worker, close the online store."""
        try:
            self.flush()
        finally:
            self._queue.put(None)
            self._worker.join(timeout=60)
            self.online.close()


@dataclass(frozen=True)
class _Update:
    state: pa.Table | None  # the touched customers' state after the batch (None: none)
    clock: datetime
    batch_id: int


def stream_summary(progress: dict[str, Any], events_total: int) -> dict[str, Any]:
    """The parts of a Spark progress report the API serves: the batch, its events and
    rates, its duration, the Kafka end offsets it read to, and when it was reported."""
    try:
        end = json.loads(progress["sources"][0]["endOffset"])
    except (KeyError, IndexError, TypeError, ValueError):
        end = None
    duration = (progress.get("durationMs") or {}).get("triggerExecution")
    return {
        "batch_id": progress.get("batchId"),
        "events": int(progress.get("numInputRows") or 0),
        "events_total": events_total,
        "input_per_s": progress.get("inputRowsPerSecond"),
        "processed_per_s": progress.get("processedRowsPerSecond"),
        "batch_seconds": None if duration is None else duration / 1000,
        "end_offsets": end if isinstance(end, dict) else None,
        "reported_at": time.time(),
    }


def _latest_rows(states: list[pa.Table]) -> pa.Table:
    """The tables concatenated, keeping each customer's row from the last table holding it."""
    if len(states) == 1:
        return states[0]
    table = pa.concat_tables(states)
    last = {cid: i for i, cid in enumerate(table["customer_id"].to_pylist())}
    return table.take(pa.array(sorted(last.values()), pa.int64()))


def _clock_us(clock: datetime) -> int:
    return int(pa.scalar(clock, pa.timestamp("us", tz="UTC")).value)

"""Paced, resumable, lossless replay of contract events into Kafka.

``replay(events, settings, options)`` reads contract events in event-time order, as
Arrow tables (``producers.adapters.open_source(spec).iter_batches()`` in production)
or as typed event mappings (a list in tests), and writes each one to
``settings.topic_transactions``: key = customer_id (so one customer's events keep
their order within a partition), value = ``schemas.transaction.encode`` of the event
with ``produced_at`` set to the producer's clock at send time (to the ms).

This module is the loop; each of its parts has its own module:

- ``producers.source_rows``: the source as chunks (event times, keys, open bodies);
- ``producers.arrow_encode``: a table's record bytes at once, from the contract's
  wire format; only ``produced_at`` is appended per record at send;
- ``producers.delivery``: the lossless producer and the one path a record is sent by;
- ``producers.resume``: the confirmed prefix of source rows and its durable file;
- ``producers.bad_records``: the records ``--inject-bad`` mixes in.

Guarantees and their mechanics:

- *Lossless*: idempotent producer (acks=all, enable.idempotence), every
  delivery report counted; any failure makes the run fail (non-zero exit).
- *Resumable*: the position — the index of the last source row whose delivery,
  and that of every row before it, is confirmed — is saved durably under
  ``data_root/producer/<source-hash>.json``. A restart with ``resume=True`` skips
  rows up to it. Rows after it may have been delivered already, so a crash can
  duplicate events but never lose one; the stream deduplicates on ``event_id``.
- *Paced*: ``Pacing(speedup=X)`` plays X simulated seconds per wall second,
  ``Pacing(rate=N)`` N events per second, ``Pacing()`` as fast as possible.
- *Fails fast*: an unreachable broker or a missing topic is a one-line
  ``PulseError`` after a bounded metadata request, before anything is sent.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from producers.arrow_encode import closing
from producers.bad_records import BAD_KINDS, DATED_KINDS, bad_kind_for_row, bad_record
from producers.delivery import RowSender
from producers.resume import ResumePosition
from producers.source_rows import EventRows, TableRows, chunks, first_disorder, from_micros
from runtime.errors import PulseError
from runtime.settings import Settings
from schemas.transaction import format_timestamp

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

HOUSEKEEPING_EVERY = 1000  # rows between progress/position updates at full speed


@dataclass(frozen=True)
class Pacing:
    """How fast to replay: ``speedup`` simulated s per wall s, or ``rate`` events/s, or max."""

    speedup: float | None = None
    rate: float | None = None

    def __post_init__(self) -> None:
        if self.speedup is not None and self.rate is not None:
            raise PulseError("choose one of --speedup and --rate, not both")
        for name, value in (("speedup", self.speedup), ("rate", self.rate)):
            if value is not None and value <= 0:
                raise PulseError(f"--{name} must be positive, got {value}")

    @property
    def paced(self) -> bool:
        """False when every event is due at once (as fast as possible)."""
        return self.speedup is not None or self.rate is not None

    def due(self, sent: int, simulated_s: float) -> float:
        """Wall seconds after the start at which the ``sent``-th event (0-based) is due.

        ``simulated_s``: its event time, in seconds after the first event's.
        """
        if self.speedup is not None:
            return simulated_s / self.speedup
        if self.rate is not None:
            return sent / self.rate
        return 0.0


@dataclass(frozen=True)
class ReplayOptions:
    """What to replay and how; the defaults replay every row once, as fast as possible.

    ``limit``: only source rows ``0 .. limit-1`` (counted from the start of the source,
    also when resuming). ``identity``: what makes two replays the same one for
    ``resume`` (the topic is added to it); ``resume``: skip the rows its saved position
    confirms. ``inject_bad``: the fraction of rows that get a record of ``bad_kinds``
    sent before them (drawn from ``seed`` and the row). ``progress``: a progress bar on
    a terminal; ``until`` (the window's end) gives it the time left under a speedup.
    """

    pacing: Pacing = Pacing()
    limit: int | None = None
    identity: Mapping[str, Any] | None = None
    resume: bool = False
    inject_bad: float = 0.0
    seed: int = 0
    bad_kinds: Sequence[str] = BAD_KINDS
    progress: bool = True
    until: datetime | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.inject_bad < 1.0:
            raise PulseError(f"--inject-bad must be in [0, 1), got {self.inject_bad}")
        unknown = sorted(set(self.bad_kinds) - set(BAD_KINDS) - set(DATED_KINDS))
        if unknown or not self.bad_kinds:
            raise PulseError(f"unknown bad-record kinds: {', '.join(unknown) or '(none given)'}")


@dataclass
class ReplayStats:
    """What a replay did; ``sent = good + bad`` and ``sent = delivered + failed`` at the end."""

    skipped: int = 0  # source rows skipped because a resumed position covered them
    good: int = 0  # contract events sent
    bad: int = 0  # malformed records injected and sent
    delivered: int = 0
    failed: int = 0
    bytes: int = 0  # value bytes delivered
    elapsed_s: float = 0.0
    confirmed_rows: int = 0  # resume position after the run (rows confirmed from row 0)
    interrupted: bool = False
    first_error: str | None = None
    bad_by_kind: dict[str, int] = field(default_factory=dict)

    @property
    def sent(self) -> int:
        """Records handed to the producer (good + bad)."""
        return self.good + self.bad

    def summary(self) -> str:
        """Human-readable closing lines."""
        secs = max(self.elapsed_s, 1e-9)
        lines = [
            f"sent {self.sent:,} (good {self.good:,}, bad {self.bad:,})"
            + (f", skipped {self.skipped:,} already delivered (resume)" if self.skipped else ""),
            f"delivered {self.delivered:,}, failed {self.failed:,}, "
            f"{self.bytes / 1e6:,.2f} MB in {self.elapsed_s:,.1f} s: "
            f"{self.delivered / secs:,.0f} events/s, {self.bytes / 1e6 / secs:,.2f} MB/s",
            f"resume position: {self.confirmed_rows:,} source rows confirmed",
        ]
        if self.bad_by_kind:
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.bad_by_kind.items()))
            lines.append(f"bad records by kind: {kinds}")
        if self.interrupted:
            lines.append("interrupted: rerun with --resume to continue")
        if self.first_error:
            lines.append(f"first delivery error: {self.first_error}")
        return "\n".join(lines)


def replay(
    events: Iterable[Mapping[str, Any]] | Iterable[pa.Table],
    settings: Settings,
    options: ReplayOptions = ReplayOptions(),
    *,
    stop: threading.Event | None = None,
    log: Callable[[str], None] = print,
) -> ReplayStats:
    """Send ``events`` (contract events in event-time order) to the transactions topic.

    ``events`` yields Arrow tables of contract rows (``Source.iter_batches``: each
    table is encoded at once, the fast path) or single event mappings (encoded one
    by one). Reads: ``events``; the saved position when ``options.resume``. Writes:
    Kafka records and the resume position (``producers.resume``). Time semantics:
    pacing follows ``event_time``; ``produced_at`` is the wall clock at send. Returns
    the stats; the caller decides the exit code. SIGINT/SIGTERM (or ``stop.set()``)
    end the loop; deliveries are flushed and the position saved either way.
    """
    identity = {**(options.identity or {"source": "events"}), "topic": settings.topic_transactions}
    position = ResumePosition(settings, identity, resume=options.resume)
    sender = RowSender(settings, position.prefix)
    if position.start:
        log(f"resuming after row {position.start - 1:,} ({position.path})")
    run = _Run(options, stop or threading.Event(), sender, position)
    with stop_on_signals(run.stop):
        try:
            run.send_all(events)
        finally:
            run.finish()
    return run.stats


class _Run:
    """One replay while it runs: which rows to send, pacing, bad records, progress."""

    def __init__(
        self,
        options: ReplayOptions,
        stop: threading.Event,
        sender: RowSender,
        position: ResumePosition,
    ) -> None:
        self.options, self.stop, self.sender, self.position = options, stop, sender, position
        self.stats = ReplayStats(skipped=position.start)
        limit = options.limit
        total = None if limit is None else max(limit - position.start, 0)
        self.bar = _progress(options.progress, total)
        self.started = time.monotonic()
        self.sent_rows = 0  # contract events sent
        self.shown = 0  # of them, already counted on the progress bar
        self.first_us: int | None = None  # event time of the first row sent (µs since the epoch)

    def send_all(self, events: Iterable[Any]) -> None:
        """Send the source's rows after the resume position and before the limit, in order.

        Stops at ``stop``, or with a PulseError at the first row out of event-time order.
        """
        limit, start = self.options.limit, self.position.start
        previous_us: int | None = None  # event time of the last row read
        base = 0  # source row index of the chunk's first row
        for chunk in chunks(events):
            n = len(chunk)
            # rows to check for order (row `limit` too: it is read before the loop stops)
            checked = n if limit is None else min(n, max(limit - base + 1, 0))
            times = chunk.times(base)[:checked]
            disorder = first_disorder(times, previous_us)
            end = checked if disorder is None else disorder
            if limit is not None:
                end = min(end, max(limit - base, 0))
            lo = min(max(start - base, 0), end)
            if end > lo:
                self._send_rows(chunk, base, lo, end, times)
            if self.stats.interrupted:
                return
            if disorder is not None and (limit is None or base + disorder <= limit):
                # disorder 0 means earlier than the previous chunk's last row
                before = int(times[disorder - 1]) if disorder else previous_us or 0
                raise PulseError(
                    f"source is not in event-time order at row {base + disorder:,} "
                    f"({format_timestamp(from_micros(int(times[disorder])))} after "
                    f"{format_timestamp(from_micros(before))}): sort it by time first"
                )
            if checked:
                previous_us = int(times[checked - 1])
            base += n
            if limit is not None and base > limit:
                return

    def _send_rows(
        self, chunk: TableRows | EventRows, base: int, lo: int, end: int, times: np.ndarray
    ) -> None:
        """Send rows ``lo .. end-1`` of ``chunk`` (source rows from ``base``), each when due."""
        options, stop, stats = self.options, self.stop, self.stats
        send, poll = self.sender.send, self.sender.poll
        paced = options.pacing.paced
        keys, bodies = chunk.encode(lo, end)
        kinds = (
            [
                bad_kind_for_row(base + i, options.inject_bad, options.seed, options.bad_kinds)
                for i in range(lo, end)
            ]
            if options.inject_bad > 0
            else None
        )
        micros = times[lo:end].tolist() if paced or options.progress else None
        time_ns = time.time_ns
        stamp_ms, end_of_value = -1, b""  # produced_at's millisecond and its closing
        sent_rows = self.sent_rows
        try:
            for j in range(end - lo):
                row = base + lo + j
                if (paced or not sent_rows & 63) and stop.is_set():
                    stats.interrupted = True
                    break
                if paced:
                    assert micros is not None
                    if not self._wait_until_due(sent_rows, micros[j]):
                        stats.interrupted = True
                        break
                key = keys[j]
                if kinds is not None and (kind := kinds[j]) is not None:
                    self.position.prefix.expect(row, 2)  # the bad record and the event
                    send(row, key, bad_record(chunk.event(lo + j), kind))
                    stats.bad += 1
                    stats.bad_by_kind[kind] = stats.bad_by_kind.get(kind, 0) + 1
                ms = time_ns() // 1_000_000
                if ms != stamp_ms:  # cheaper per record than even closing's own cache
                    stamp_ms, end_of_value = ms, closing(ms)
                send(row, key, bodies[j] + end_of_value)
                sent_rows += 1
                if paced or not sent_rows & 63:  # serve reports without a call per row
                    poll(0)
                # housekeeping every HOUSEKEEPING_EVERY rows, or every row when paced
                if paced or sent_rows - self.shown >= HOUSEKEEPING_EVERY:
                    self.sent_rows = sent_rows
                    self._housekeeping(None if micros is None else micros[j])
        finally:
            self.sent_rows = sent_rows

    def _wait_until_due(self, sent: int, event_us: int) -> bool:
        """Serve delivery reports until the event at ``event_us`` is due; False if stopped."""
        if self.first_us is None:
            self.first_us = event_us
        due = self.started + self.options.pacing.due(sent, (event_us - self.first_us) / 1e6)
        while (wait := due - time.monotonic()) > 0 and not self.stop.is_set():
            self.sender.poll(min(wait, 0.1))
            self.position.save_if_due()  # long gaps
        return not self.stop.is_set()

    def _housekeeping(self, event_us: int | None) -> None:
        """Move the progress bar to the rows sent and save the position when due."""
        self.bar.update(self.sent_rows - self.shown)
        self.shown = self.sent_rows
        if event_us is not None:
            clock = _clock(from_micros(event_us), self.options.until, self.options.pacing)
            self.bar.set_postfix_str(clock, refresh=False)
        self.position.save_if_due()

    def finish(self) -> None:
        """Flush the deliveries, fill in the stats and save the position."""
        stats, sender = self.stats, self.sender
        stats.good = self.sent_rows
        self.bar.update(self.sent_rows - self.shown)
        self.bar.close()
        sender.close()
        stats.delivered, stats.failed, stats.bytes = sender.delivered, sender.failed, sender.bytes
        stats.first_error = sender.first_error
        stats.elapsed_s = time.monotonic() - self.started
        stats.confirmed_rows = self.position.prefix.rows
        self.position.save()


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Turn SIGINT/SIGTERM into ``stop.set()`` (main thread only), restoring handlers after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda *_: stop.set())
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _progress(enabled: bool, total: int | None) -> Any:
    from tqdm import tqdm

    # disable=None: shown on a terminal, silent in pipes and tests
    return tqdm(
        total=total,
        unit="ev",
        unit_scale=True,
        dynamic_ncols=True,
        disable=None if enabled else True,
    )


def _clock(event_time: datetime, until: datetime | None, pacing: Pacing) -> str:
    """Progress-bar postfix: the simulated clock and, when knowable, the wall time left."""
    text = f"sim {format_timestamp(event_time)[:16]}"
    if until is not None and pacing.speedup is not None:
        left = max((until - event_time).total_seconds() / pacing.speedup, 0.0)
        text += f", left {left:,.0f} s"
    return text

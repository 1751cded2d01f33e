"""Paced, resumable, lossless replay of contract events into Kafka.

``replay(events, settings, ...)`` reads any iterator of typed contract events
(``producers.adapters.open_source(spec).events()`` in production, a list in
tests) in event-time order and writes each one to ``settings.topic_transactions``:
key = customer_id (so one customer's events keep their order within a
partition), value = ``schemas.transaction.encode`` of the event with
``produced_at`` set to the producer's clock at send time.

Guarantees and their mechanics:

- *Lossless*: idempotent producer (acks=all, enable.idempotence), every
  delivery report counted; any failure makes the run fail (non-zero exit).
- *Resumable*: the position — the index of the last source row whose delivery,
  and that of every row before it, is confirmed — is saved durably (temp file,
  fsync, ``os.replace``) under ``data_root/producer/<source-hash>.json``. A
  restart with ``resume=True`` skips rows up to it. Rows after it may have been
  delivered already, so a crash can duplicate events but never lose one; the
  stream deduplicates on ``event_id``.
- *Paced*: ``Pacing(speedup=X)`` plays X simulated seconds per wall second,
  ``Pacing(rate=N)`` N events per second, ``Pacing()`` as fast as possible.
- *Fails fast*: an unreachable broker or a missing topic is a one-line
  ``PulseError`` after a bounded metadata request, before anything is sent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from runtime.errors import PulseError
from runtime.settings import Settings
from schemas.transaction import MAX_STRING_LEN, encode, format_timestamp, now_utc

METADATA_TIMEOUT_S = 5.0  # broker/topic check before producing: fail within seconds
DELIVERY_TIMEOUT_MS = 30_000  # a record not acknowledged by then is a failed delivery
SAVE_EVERY_S = 0.5  # how often the resume position is made durable while running
HOUSEKEEPING_EVERY = 1000  # rows between progress/position updates at full speed
BAD_KINDS = ("broken_json", "wrong_type", "missing_field", "negative_price", "oversized")

log_kafka = logging.getLogger("pulse.kafka")


# --------------------------------------------------------------------------- pacing


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

    def due(self, sent: int, event_time: datetime, first_event_time: datetime) -> float:
        """Wall seconds after the start at which the ``sent``-th event (0-based) is due."""
        if self.speedup is not None:
            return (event_time - first_event_time).total_seconds() / self.speedup
        if self.rate is not None:
            return sent / self.rate
        return 0.0


# ------------------------------------------------------------------ resume position


def position_path(settings: Settings, identity: Mapping[str, Any]) -> Path:
    """Where the resume position of one replay (source, window, topic) is kept."""
    blob = json.dumps(dict(identity), sort_keys=True, default=str).encode()
    digest = hashlib.sha256(blob).hexdigest()[:16]
    return settings.data_root / "producer" / f"{digest}.json"


def load_position(path: Path) -> int:
    """The number of source rows already confirmed (0 when there is no saved position)."""
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        return 0
    except (OSError, ValueError) as exc:
        raise PulseError(f"cannot read the resume position {path}: {exc}") from None
    return int(saved["last_confirmed_row"]) + 1


def save_position(path: Path, confirmed_rows: int, identity: Mapping[str, Any]) -> None:
    """Durably record that rows ``0 .. confirmed_rows-1`` are delivered (temp+fsync+replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        **{k: str(v) if v is not None else None for k, v in identity.items()},
        "last_confirmed_row": confirmed_rows - 1,
        "saved_at": format_timestamp(now_utc()),
    }
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(payload, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    # fsync the directory too, so the rename itself survives a power cut
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class ConfirmedPrefix:
    """Tracks the longest prefix of source rows whose every record is delivered.

    Delivery reports arrive in order per partition but interleaved across
    partitions, so a row is confirmed out of order; ``rows`` only advances over
    a gap-free run. A failed delivery is never confirmed, so the prefix stops
    before it and a resume re-sends it.
    """

    def __init__(self, start: int = 0) -> None:
        self.rows = start  # rows 0 .. rows-1 are confirmed
        self._several: dict[int, int] = {}  # row -> records outstanding, rows with > 1 only
        self._done: set[int] = set()  # confirmed rows beyond the prefix

    def expect(self, row: int, records: int = 1) -> None:
        """``row`` will be sent as ``records`` records; call before sending any of them."""
        if records > 1:  # the common single-record row costs no bookkeeping here
            self._several[row] = records

    def delivered(self, row: int) -> None:
        """A record of ``row`` was acknowledged by the broker."""
        if self._several and row in self._several:
            left = self._several[row] - 1
            if left:
                self._several[row] = left
                return
            del self._several[row]
        if row != self.rows:
            self._done.add(row)
            return
        self.rows += 1
        while self.rows in self._done:
            self._done.remove(self.rows)
            self.rows += 1


# -------------------------------------------------------------------- bad records


def bad_record(event: Mapping[str, Any], kind: str) -> bytes:
    """A malformed variant of ``event`` that the contract must reject, with its own id."""
    wire = json.loads(encode(event))
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


def bad_kind_for_row(row: int, fraction: float, seed: int) -> str | None:
    """Whether a bad record goes before source row ``row``, and which kind (deterministic).

    Decided from (seed, row) alone, so a resumed replay injects the same bad
    records after its position as an uninterrupted one.
    """
    if fraction <= 0:
        return None
    rng = random.Random(seed * 1_000_003 + row)
    if rng.random() >= fraction:
        return None
    return BAD_KINDS[rng.randrange(len(BAD_KINDS))]


# ------------------------------------------------------------------ wire timestamps


class TimestampText:
    """``format_timestamp`` with a memory of one value, since formatting dominates encoding.

    Consecutive events mostly share their event time (H&M has one per day), and
    ``produced_at`` has millisecond precision on the wire, so each text is
    computed once per distinct value rather than once per event.
    """

    def __init__(self) -> None:
        self._event: tuple[datetime | None, str] = (None, "")
        self._produced: tuple[int, str] = (-1, "")

    def event_time(self, ts: datetime) -> str:
        """The wire text of an event time."""
        if ts != self._event[0]:
            self._event = (ts, format_timestamp(ts))
        return self._event[1]

    def produced_at(self) -> str:
        """The wire text of the producer's clock now (``now_utc``), to the millisecond."""
        now = now_utc()
        ms = now.microsecond // 1000
        key = int(now.timestamp()) * 1000 + ms
        if key != self._produced[0]:
            self._produced = (key, format_timestamp(now.replace(microsecond=ms * 1000)))
        return self._produced[1]


# ------------------------------------------------------------------------ summary


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


# ------------------------------------------------------------------------ producer


def producer_config(settings: Settings) -> dict[str, Any]:
    """confluent-kafka settings: lossless (idempotent, acks=all) and batched for throughput."""
    return {
        **settings.kafka_client_config(),
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 20,  # small delay buys full batches
        "batch.size": 1_000_000,
        "batch.num.messages": 50_000,
        "queue.buffering.max.messages": 500_000,
        "queue.buffering.max.kbytes": 512 * 1024,
        "message.timeout.ms": DELIVERY_TIMEOUT_MS,
        "allow.auto.create.topics": False,
        # the Java client's key hashing, so any client puts a customer on the same partition
        "partitioner": "murmur2_random",
        "logger": log_kafka,
    }


def check_topic(producer: Any, settings: Settings) -> int:
    """Number of partitions of the topic; PulseError if the broker or topic is missing."""
    from confluent_kafka import KafkaException

    name = settings.topic_transactions
    try:
        metadata = producer.list_topics(topic=name, timeout=METADATA_TIMEOUT_S)
    except KafkaException as exc:
        raise PulseError(
            f"Kafka at {settings.kafka_bootstrap} is unreachable ({exc.args[0].str()}): "
            "start it with `pulse broker start` or set PULSE_KAFKA_BOOTSTRAP"
        ) from None
    topic = metadata.topics.get(name)
    if topic is None or topic.error is not None or not topic.partitions:
        raise PulseError(
            f"topic {name} does not exist on {settings.kafka_bootstrap}: "
            "create it with `pulse topics create`"
        )
    return len(topic.partitions)


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


def replay(
    events: Iterable[Mapping[str, Any]],
    settings: Settings,
    *,
    pacing: Pacing = Pacing(),
    limit: int | None = None,
    identity: Mapping[str, Any] | None = None,
    resume: bool = False,
    inject_bad: float = 0.0,
    seed: int = 0,
    progress: bool = True,
    until: datetime | None = None,
    stop: threading.Event | None = None,
    log: Callable[[str], None] = print,
) -> ReplayStats:
    """Send ``events`` (contract events in event-time order) to the transactions topic.

    Reads: ``events``; the saved position when ``resume``. Writes: Kafka records
    and ``position_path(settings, identity)``. ``limit`` bounds the source rows
    (rows ``0 .. limit-1``, counted from the start of the source even when
    resuming). Time semantics: pacing follows ``event_time``; ``produced_at`` is
    the wall clock at send; ``until`` (the window's end) only feeds the progress
    bar's time left under ``--speedup``. Returns the stats; the caller decides
    the exit code. SIGINT/SIGTERM (or ``stop.set()``) end the loop; deliveries
    are flushed and the position saved either way.
    """
    from confluent_kafka import KafkaError, KafkaException, Producer

    if not 0.0 <= inject_bad < 1.0:
        raise PulseError(f"--inject-bad must be in [0, 1), got {inject_bad}")
    identity = dict(identity or {"source": "events"})
    identity["topic"] = settings.topic_transactions
    pos_file = position_path(settings, identity)
    start_row = load_position(pos_file) if resume else 0
    stop = stop or threading.Event()
    stats = ReplayStats(skipped=start_row)
    prefix = ConfirmedPrefix(start_row)
    topic = settings.topic_transactions

    producer = Producer(producer_config(settings))
    check_topic(producer, settings)

    def on_delivery(err: KafkaError | None, msg: Any, row: int) -> None:
        if err is not None:
            stats.failed += 1
            stats.first_error = stats.first_error or err.str()
            return
        stats.delivered += 1
        stats.bytes += len(msg.value())
        prefix.delivered(row)

    def send(row: int, key: bytes, value: bytes) -> None:
        while True:
            try:
                producer.produce(
                    topic,
                    key=key,
                    value=value,
                    on_delivery=lambda err, msg: on_delivery(err, msg, row),
                )
                return
            except BufferError:  # local queue full: let deliveries drain it
                producer.poll(0.05)
            except KafkaException as exc:  # refused before sending (e.g. too large): a failure
                stats.failed += 1
                stats.first_error = stats.first_error or exc.args[0].str()
                return

    if start_row:
        log(f"resuming after row {start_row - 1:,} ({pos_file})")
    bar = _progress(progress, None if limit is None else max(limit - start_row, 0))
    started = time.monotonic()
    last_save = started
    first_time: datetime | None = None
    previous_time: datetime | None = None
    sent_rows = shown = 0  # rows sent; rows already counted on the progress bar
    paced = pacing.speedup is not None or pacing.rate is not None
    stamps = TimestampText()
    with stop_on_signals(stop):
        try:
            for row, event in enumerate(events):
                event_time = event["event_time"]
                if previous_time is not None and event_time < previous_time:
                    raise PulseError(
                        f"source is not in event-time order at row {row:,} "
                        f"({format_timestamp(event_time)} after {format_timestamp(previous_time)})"
                        ": sort it by time first"
                    )
                previous_time = event_time
                if row < start_row:
                    continue
                if limit is not None and row >= limit:
                    break
                if stop.is_set():
                    stats.interrupted = True
                    break
                if first_time is None:
                    first_time = event_time
                # wait until the event is due, serving delivery reports meanwhile
                due = started + pacing.due(sent_rows, event_time, first_time)
                while (wait := due - time.monotonic()) > 0 and not stop.is_set():
                    producer.poll(min(wait, 0.1))
                    if time.monotonic() - last_save >= SAVE_EVERY_S:  # long gaps in paced time
                        save_position(pos_file, prefix.rows, identity)
                        last_save = time.monotonic()
                if stop.is_set():
                    stats.interrupted = True
                    break
                key = str(event["customer_id"]).encode()
                kind = bad_kind_for_row(row, inject_bad, seed)
                prefix.expect(row, 1 if kind is None else 2)
                if kind is not None:
                    send(row, key, bad_record(event, kind))
                    stats.bad += 1
                    stats.bad_by_kind[kind] = stats.bad_by_kind.get(kind, 0) + 1
                wire = {**event, "event_time": stamps.event_time(event_time)}
                wire["produced_at"] = stamps.produced_at()
                send(row, key, encode(wire))
                stats.good += 1
                sent_rows += 1
                if sent_rows % 64 == 0 or paced:  # serve delivery reports without a call per row
                    producer.poll(0)
                # housekeeping every HOUSEKEEPING_EVERY rows, or every row when paced (slow)
                if sent_rows - shown >= HOUSEKEEPING_EVERY or paced:
                    bar.update(sent_rows - shown)
                    shown = sent_rows
                    bar.set_postfix_str(_clock(event_time, until, pacing), refresh=False)
                    now = time.monotonic()
                    if now - last_save >= SAVE_EVERY_S:
                        save_position(pos_file, prefix.rows, identity)
                        last_save = now
        finally:
            bar.update(sent_rows - shown)
            bar.close()
            # flush in short slices so a second Ctrl-C is not needed and deliveries keep counting
            deadline = time.monotonic() + DELIVERY_TIMEOUT_MS / 1000 + 5
            while producer.flush(0.5) > 0 and time.monotonic() < deadline:
                pass
            if len(producer) == 0:  # close now (not at garbage collection): no late log noise
                producer.close()
            stats.elapsed_s = time.monotonic() - started
            stats.confirmed_rows = prefix.rows
            save_position(pos_file, prefix.rows, identity)
    return stats

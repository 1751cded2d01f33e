"""Paced, resumable, lossless replay of contract events into Kafka.

``replay(events, settings, ...)`` reads contract events in event-time order, as
Arrow tables (``producers.adapters.open_source(spec).iter_batches()`` in
production) or as typed event mappings (a list in tests), and writes each one to
``settings.topic_transactions``: key = customer_id (so one customer's events keep
their order within a partition), value = ``schemas.transaction.encode`` of the
event with ``produced_at`` set to the producer's clock at send time (to the ms).
A table's values are built for the whole table at once (``encode_bodies``, the
same bytes as ``encode``); only ``produced_at`` is appended per record at send.

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
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime.errors import PulseError
from runtime.settings import Settings
from schemas.transaction import (
    FIELD_NAMES,
    MAX_STRING_LEN,
    encode,
    format_timestamp,
    now_utc,
    parse_timestamp,
)

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

METADATA_TIMEOUT_S = 5.0  # broker/topic check before producing: fail within seconds
DELIVERY_TIMEOUT_MS = 30_000  # a record not acknowledged by then is a failed delivery
SAVE_EVERY_S = 0.5  # how often the resume position is made durable while running
HOUSEKEEPING_EVERY = 1000  # rows between progress/position updates at full speed
EVENTS_PER_CHUNK = 1000  # mapping events gathered into one chunk before sending
BAD_KINDS = ("broken_json", "wrong_type", "missing_field", "negative_price", "oversized")
#: Well-formed events with an unusual date, injected like bad records (``kinds=``): one
#: dated a month after the producer's clock (the contract rejects it) and one dated ten
#: years before its source row (valid; older than the stream's lateness: lake only).
DATED_KINDS = ("future", "far_past")
FUTURE_BY = timedelta(days=30)
FAR_PAST_BY = timedelta(days=3650)

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
        return self.due_after(sent, (event_time - first_event_time).total_seconds())

    def due_after(self, sent: int, simulated_s: float) -> float:
        """``due`` for an event ``simulated_s`` event-time seconds after the first one."""
        if self.speedup is not None:
            return simulated_s / self.speedup
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
        self._closing: tuple[int, bytes] = (-1, b"")

    def event_time(self, ts: datetime) -> str:
        """The wire text of an event time."""
        if ts != self._event[0]:
            self._event = (ts, format_timestamp(ts))
        return self._event[1]

    def produced_at(self) -> str:
        """The wire text of the producer's clock now (``now_utc``), to the millisecond."""
        now = now_utc()
        ms = now.microsecond // 1000
        return self.produced_at_ms(int(now.timestamp()) * 1000 + ms)

    def produced_at_ms(self, ms: int) -> str:
        """The wire text of ``ms`` milliseconds since the Unix epoch (UTC)."""
        if ms != self._produced[0]:
            ts = datetime.fromtimestamp(ms // 1000, UTC).replace(microsecond=ms % 1000 * 1000)
            self._produced = (ms, format_timestamp(ts))
        return self._produced[1]

    def closing(self, ms: int) -> bytes:
        """What ends an open body (``encode_bodies``) sent at ``ms``: produced_at and ``}``."""
        if ms != self._closing[0]:
            self._closing = (ms, close_body(b"", self.produced_at_ms(ms)))
        return self._closing[1]


# ------------------------------------------------------------------ batch encoding
#
# A record's value is ``encode`` of the event with ``produced_at`` set at send time.
# ``produced_at`` is the contract's last field, so the value splits into an *open
# body* (every other field, known before sending, encoded for a whole Arrow batch at
# once) and a closing ``,"produced_at":"...Z"}`` (one per millisecond). Each column
# becomes its JSON text in Arrow: strings are quoted (Python escapes the rare value
# that needs it), other columns are encoded by Python once per distinct value (a day,
# a price, a channel) and spread with ``take``. A row whose text would differ from
# ``encode``'s (a null field, which ``encode`` leaves out) is encoded by ``encode``.

if FIELD_NAMES[-1] != "produced_at":  # the split above relies on it
    raise RuntimeError("the contract's last field must be produced_at")
BODY_FIELDS = FIELD_NAMES[:-1]
_JSON_ESCAPED = r"[\x00-\x1f\"\\]"  # what json.dumps(ensure_ascii=False) escapes in a string


def close_body(body: bytes, produced_at: str) -> bytes:
    """An open body (``encode_bodies``) completed with ``produced_at``: ``encode``'s bytes."""
    return body + b',"produced_at":' + json.dumps(produced_at).encode() + b"}"


def _json_value(value: Any) -> str:
    """One value's JSON text exactly as ``encode`` writes it."""
    if isinstance(value, datetime):
        value = format_timestamp(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _json_strings(column: pa.Array) -> pa.Array:
    """JSON string literals of a string column (nulls stay null)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    quoted = pc.binary_join_element_wise('"', column, '"', "")
    data = column.buffers()[2]
    if data is None or not len(data):
        return quoted
    raw = np.frombuffer(data, dtype=np.uint8)  # may hold bytes outside a slice: only a hint
    if not bool(((raw < 0x20) | (raw == 0x22) | (raw == 0x5C)).any()):
        return quoted
    mask = pc.fill_null(pc.match_substring_regex(column, _JSON_ESCAPED), False)
    if not pc.any(mask).as_py():
        return quoted
    texts = [_json_value(v) for v in column.filter(mask).to_pylist()]
    return pc.replace_with_mask(quoted, mask, pa.array(texts, quoted.type))


def _json_texts(column: pa.Array) -> pa.Array:
    """Each value's JSON text as ``encode`` writes it (nulls stay null)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return _json_strings(column)
    try:  # few distinct values (days, prices, channels): encode each once
        coded = pc.dictionary_encode(column)
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
        return pa.array([None if v is None else _json_value(v) for v in column.to_pylist()])
    texts = pa.array([_json_value(v) for v in coded.dictionary.to_pylist()], pa.string())
    return texts.take(coded.indices)


def encode_bodies(table: pa.Table) -> list[bytes]:
    """Every row's open body: ``encode(row)`` without ``produced_at`` and the closing ``}``.

    ``close_body(body, text)`` is then byte for byte ``encode({**row, "produced_at": ts})``
    with ``text = format_timestamp(ts)``. Columns other than the contract's are ignored;
    a missing column counts as null, as a missing key does for ``encode``.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    n = table.num_rows
    if n == 0:
        return []
    table = table.combine_chunks()
    parts: list[Any] = []
    for name in BODY_FIELDS:
        parts.append(("{" if not parts else ",") + json.dumps(name) + ":")
        if name in table.column_names:
            column = table.column(name).chunk(0) if table.column(name).num_chunks else None
            texts = _json_texts(column) if column is not None else pa.nulls(n, pa.string())
        else:
            texts = pa.nulls(n, pa.string())
        if name == "sales_channel_id":  # the one field encode writes as null
            texts = pc.fill_null(texts, "null")
        parts.append(texts)
    joined = pc.binary_join_element_wise(*parts, "")
    bodies: list[bytes] = _pylist(joined.cast(pa.binary()))
    if joined.null_count:  # a null field: encode leaves it out
        for i in pc.indices_nonzero(joined.is_null()).to_pylist():
            event = table.slice(i, 1).to_pylist()[0]
            bodies[i] = encode({**event, "produced_at": None})[:-1]
    return bodies


def event_keys(table: pa.Table) -> list[bytes]:
    """Every row's record key: ``str(customer_id)`` in UTF-8."""
    import pyarrow as pa

    column = table.column("customer_id")
    if pa.types.is_string(column.type) and not column.null_count:
        return _pylist(column.cast(pa.binary()))
    return [str(v).encode() for v in column.to_pylist()]


def _pylist(column: pa.Array | pa.ChunkedArray) -> list[Any]:
    """``column.to_pylist()`` of a binary column, several times faster (no scalar per row)."""
    return column.to_numpy(zero_copy_only=False).tolist()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)


def _micros(ts: datetime) -> int:
    """Microseconds since the Unix epoch of an event time (naive means UTC)."""
    return ((ts if ts.tzinfo else ts.replace(tzinfo=UTC)) - _EPOCH) // _ONE_US


def _from_micros(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


class _TableRows:
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
        micros = column.cast(pa.timestamp("us", tz=tz), safe=False).cast(pa.int64())
        return micros.to_numpy()

    def encode(self, lo: int, hi: int) -> tuple[list[bytes], list[bytes]]:
        """Keys and open bodies of rows ``lo .. hi-1``."""
        part = self.table.slice(lo, hi - lo)
        return event_keys(part), encode_bodies(part)

    def event(self, i: int) -> dict[str, Any]:
        """Row ``i`` as a contract event."""
        return self.table.slice(i, 1).to_pylist()[0]


class _EventRows:
    """A chunk of source rows given as mappings: encoded one by one with ``encode``."""

    def __init__(self, events: Sequence[Mapping[str, Any]]) -> None:
        self.events = events

    def __len__(self) -> int:
        return len(self.events)

    def times(self, row: int) -> np.ndarray:
        """Event times in µs since the epoch."""
        import numpy as np

        return np.array([_micros(e["event_time"]) for e in self.events], dtype=np.int64)

    def encode(self, lo: int, hi: int) -> tuple[list[bytes], list[bytes]]:
        """Keys and open bodies of rows ``lo .. hi-1``."""
        part = self.events[lo:hi]
        keys = [str(e["customer_id"]).encode() for e in part]
        return keys, [encode({**e, "produced_at": None})[:-1] for e in part]

    def event(self, i: int) -> Mapping[str, Any]:
        """Row ``i`` as given."""
        return self.events[i]


def _chunks(events: Iterable[Any]) -> Iterator[_TableRows | _EventRows]:
    """The source as chunks: each Arrow table or batch is one, mappings are grouped."""
    import pyarrow as pa

    pending: list[Mapping[str, Any]] = []
    for item in events:
        if isinstance(item, pa.Table | pa.RecordBatch):
            if pending:
                yield _EventRows(pending)
                pending = []
            table = item if isinstance(item, pa.Table) else pa.Table.from_batches([item])
            if table.num_rows:
                yield _TableRows(table)
            continue
        pending.append(item)
        if len(pending) >= EVENTS_PER_CHUNK:
            yield _EventRows(pending)
            pending = []
    if pending:
        yield _EventRows(pending)


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

    from runtime.kafka_admin import admin_client, connection_error

    # The producer's own metadata call raises "transport failure" for a refused SASL
    # login too; the admin client tells that apart from a broker out of reach.
    admin_client(settings, timeout_s=METADATA_TIMEOUT_S)
    name = settings.topic_transactions
    try:
        metadata = producer.list_topics(topic=name, timeout=METADATA_TIMEOUT_S)
    except KafkaException as exc:
        raise connection_error(settings, exc.args[0]) from None
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
    events: Iterable[Mapping[str, Any]] | Iterable[pa.Table],
    settings: Settings,
    *,
    pacing: Pacing = Pacing(),
    limit: int | None = None,
    identity: Mapping[str, Any] | None = None,
    resume: bool = False,
    inject_bad: float = 0.0,
    seed: int = 0,
    bad_kinds: Sequence[str] = BAD_KINDS,
    progress: bool = True,
    until: datetime | None = None,
    stop: threading.Event | None = None,
    log: Callable[[str], None] = print,
) -> ReplayStats:
    """Send ``events`` (contract events in event-time order) to the transactions topic.

    ``events`` yields Arrow tables of contract rows (``Source.iter_batches``: each
    table is encoded at once, the fast path) or single event mappings (encoded one
    by one with ``encode``). Reads: ``events``; the saved position when ``resume``.
    Writes: Kafka records and ``position_path(settings, identity)``. ``limit``
    bounds the source rows (rows ``0 .. limit-1``, counted from the start of the
    source even when resuming). Time semantics: pacing follows ``event_time``;
    ``produced_at`` is the wall clock at send; ``until`` (the window's end) only
    feeds the progress bar's time left under ``--speedup``. Returns the stats; the
    caller decides the exit code. SIGINT/SIGTERM (or ``stop.set()``) end the loop;
    deliveries are flushed and the position saved either way.
    """
    from confluent_kafka import KafkaError, KafkaException, Producer

    if not 0.0 <= inject_bad < 1.0:
        raise PulseError(f"--inject-bad must be in [0, 1), got {inject_bad}")
    unknown = sorted(set(bad_kinds) - set(BAD_KINDS) - set(DATED_KINDS))
    if unknown or not bad_kinds:
        raise PulseError(f"unknown bad-record kinds: {', '.join(unknown) or '(none given)'}")
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
    produce, poll = producer.produce, producer.poll

    # Which source row a delivery report is for: records in flight by the hash of their
    # value (unique: it holds the event_id and produced_at). One shared callback, so a
    # record in flight costs no Python object that the garbage collector must walk.
    in_flight: dict[int, int] = {}  # hash(value) -> row
    same_hash: dict[int, deque[int]] = {}  # rows of further records in flight with that hash

    def on_delivery(err: KafkaError | None, msg: Any) -> None:
        digest = hash(msg.value())
        row = in_flight.pop(digest)
        if same_hash and digest in same_hash:  # an equal value (or hash) was sent after it
            rows = same_hash[digest]
            in_flight[digest] = rows.popleft()
            if not rows:
                del same_hash[digest]
        if err is not None:
            stats.failed += 1
            stats.first_error = stats.first_error or err.str()
            return
        stats.delivered += 1
        stats.bytes += len(msg)  # the value's length
        prefix.delivered(row)

    def sent(row: int, digest: int) -> None:
        if digest in in_flight:
            same_hash.setdefault(digest, deque()).append(row)
        else:
            in_flight[digest] = row

    def send(row: int, key: bytes, value: bytes) -> None:
        while True:
            try:
                produce(topic, value, key, on_delivery=on_delivery)
                sent(row, hash(value))
                return
            except BufferError:  # local queue full: let deliveries drain it
                poll(0.05)
            except KafkaException as exc:  # refused before sending (e.g. too large): a failure
                stats.failed += 1
                stats.first_error = stats.first_error or exc.args[0].str()
                return

    if start_row:
        log(f"resuming after row {start_row - 1:,} ({pos_file})")
    bar = _progress(progress, None if limit is None else max(limit - start_row, 0))
    started = time.monotonic()
    last_save = started
    first_us: int | None = None  # event time of the first row sent (µs since the epoch)
    previous_us: int | None = None  # event time of the last row read
    sent_rows = shown = 0  # rows sent; rows already counted on the progress bar
    paced = pacing.speedup is not None or pacing.rate is not None
    stamps = TimestampText()
    time_ns = time.time_ns
    with stop_on_signals(stop):
        try:
            base = 0  # source row index of the chunk's first row
            for chunk in _chunks(events):
                n = len(chunk)
                # rows to check for order (row `limit` too: it is read before the loop stops)
                checked = n if limit is None else min(n, max(limit - base + 1, 0))
                times = chunk.times(base)[:checked]
                disorder = _first_disorder(times, previous_us)
                end = checked if disorder is None else disorder
                if limit is not None:
                    end = min(end, max(limit - base, 0))
                lo = min(max(start_row - base, 0), end)
                if end > lo:
                    keys, bodies = chunk.encode(lo, end)
                    kinds = (
                        [
                            bad_kind_for_row(base + i, inject_bad, seed, bad_kinds)
                            for i in range(lo, end)
                        ]
                        if inject_bad > 0
                        else None
                    )
                    micros = times[lo:end].tolist() if paced or progress else None
                    stamp_ms, closing = -1, b""
                    for j in range(end - lo):
                        row = base + lo + j
                        if (paced or not sent_rows & 63) and stop.is_set():
                            stats.interrupted = True
                            break
                        if paced:
                            assert micros is not None
                            if first_us is None:
                                first_us = micros[0]
                            # wait until the event is due, serving delivery reports meanwhile
                            offset_s = (micros[j] - first_us) / 1e6
                            due = started + pacing.due_after(sent_rows, offset_s)
                            while (wait := due - time.monotonic()) > 0 and not stop.is_set():
                                poll(min(wait, 0.1))
                                if time.monotonic() - last_save >= SAVE_EVERY_S:  # long gaps
                                    save_position(pos_file, prefix.rows, identity)
                                    last_save = time.monotonic()
                            if stop.is_set():
                                stats.interrupted = True
                                break
                        key = keys[j]
                        if kinds is not None and (kind := kinds[j]) is not None:
                            prefix.expect(row, 2)
                            send(row, key, bad_record(chunk.event(lo + j), kind))
                            stats.bad += 1
                            stats.bad_by_kind[kind] = stats.bad_by_kind.get(kind, 0) + 1
                        ms = time_ns() // 1_000_000
                        if ms != stamp_ms:
                            stamp_ms, closing = ms, stamps.closing(ms)
                        value = bodies[j] + closing
                        try:  # the common case inline; send() handles a full queue or a refusal
                            produce(topic, value, key, on_delivery=on_delivery)
                        except (BufferError, KafkaException):
                            send(row, key, value)
                        else:
                            digest = hash(value)
                            if digest in in_flight:
                                sent(row, digest)
                            else:
                                in_flight[digest] = row
                        sent_rows += 1
                        if paced or not sent_rows & 63:  # serve reports without a call per row
                            poll(0)
                        # housekeeping every HOUSEKEEPING_EVERY rows, or every row when paced
                        if paced or sent_rows - shown >= HOUSEKEEPING_EVERY:
                            stats.good = sent_rows
                            bar.update(sent_rows - shown)
                            shown = sent_rows
                            if micros is not None:
                                clock = _clock(_from_micros(micros[j]), until, pacing)
                                bar.set_postfix_str(clock, refresh=False)
                            now = time.monotonic()
                            if now - last_save >= SAVE_EVERY_S:
                                save_position(pos_file, prefix.rows, identity)
                                last_save = now
                    stats.good = sent_rows
                if stats.interrupted:
                    break
                if disorder is not None and (limit is None or base + disorder <= limit):
                    at = base + disorder
                    # disorder 0 means earlier than the previous chunk's last row
                    before = int(times[disorder - 1]) if disorder else previous_us or 0
                    raise PulseError(
                        f"source is not in event-time order at row {at:,} "
                        f"({format_timestamp(_from_micros(int(times[disorder])))} after "
                        f"{format_timestamp(_from_micros(before))}): sort it by time first"
                    )
                if checked:
                    previous_us = int(times[checked - 1])
                base += n
                if limit is not None and base > limit:
                    break
        finally:
            stats.good = sent_rows
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


def _first_disorder(times: np.ndarray, previous: int | None) -> int | None:
    """Index of the first time earlier than the one before it (``previous`` before index 0)."""
    import numpy as np

    if not len(times):
        return None
    if previous is not None and times[0] < previous:
        return 0
    later = np.flatnonzero(times[1:] < times[:-1])
    return int(later[0]) + 1 if len(later) else None

"""The campaign's cases: each injects one fault into real parts and measures the outcome.

A case returns a ``CaseResult``: what it produced into Kafka, what the stream accepted
(valid records whose event is in the lake), quarantined and wrote to the lake, whether
the published features equal the batch recompute over the lake, and what was lost or
doubled. A case that cannot finish (a component that dies on its own, a time-out) is a
result with its error, and counts as a failure.
"""

from __future__ import annotations

import math
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pulse.chaos import lab
from pulse.oracle import served_equals_batch
from runtime.errors import PulseError
from runtime.settings import Settings

WAIT_S = 900.0  # the longest wait for one step (a JVM start on a busy 2-core machine)


@dataclass
class CaseResult:
    """One row of the campaign's table."""

    case: str
    injected: str
    produced: int = 0  # records delivered to Kafka (valid + injected)
    accepted: int = 0  # valid records whose event is in the lake
    quarantined: int = 0  # records in quarantine
    in_lake: int = 0  # rows in the lake
    #: the feature snapshot and every customer's look-up and the at-risk lists equal the
    #: batch recompute with the served models (``pulse.oracle``); None: not checked
    served_equal: bool | None = None
    seconds: float = 0.0
    lost: int = 0  # records neither in the lake nor in quarantine as expected
    doubled: int = 0  # lake rows beyond one per event, quarantine rows beyond one per record
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)  # the case's own figures

    @property
    def ok(self) -> bool:
        """Nothing lost, nothing doubled, served = batch (when checked), no error."""
        return (
            self.error is None
            and self.lost == 0
            and self.doubled == 0
            and self.served_equal is not False
        )

    def as_json(self) -> dict[str, Any]:
        """The row as plain JSON values."""
        return {
            "case": self.case,
            "injected": self.injected,
            "produced": self.produced,
            "accepted": self.accepted,
            "quarantined": self.quarantined,
            "in_lake": self.in_lake,
            "served_equal_batch": self.served_equal,
            "lost": self.lost,
            "doubled": self.doubled,
            "seconds": round(self.seconds, 1),
            "ok": self.ok,
            "notes": self.notes,
            "error": self.error,
            "details": self.details,
        }


@dataclass
class Context:
    """What every case gets: the user's settings, a work directory, sizes, a seed."""

    base: Settings
    root: Path
    events: int  # case 1's replay; the other cases replay events // 10
    seed: int
    log: Callable[[str], None]
    kills: int = 10
    #: None: the user's PULSE_ALLOWED_LATENESS_DAYS. Small replays spread over the same
    #: 90 days are sparse (3,000 events: 33 a day), so partitions read at even offsets
    #: can be days apart in event time, and a late event (lake only, by design) makes
    #: the live features differ from the batch recompute; tests at such sizes set 60.
    lateness_days: int | None = None
    _spark: Any = None
    _models: Settings | None = None

    @property
    def small(self) -> int:
        """The other cases' replay size."""
        return max(self.events // 10, 1000)

    def spark(self) -> Any:
        """One local Spark session for the checks (built on first use)."""
        if self._spark is None:
            from runtime.spark import build_spark

            self._spark = build_spark(
                self.base.model_copy(update={"data_root": self.root}),
                app_name="pulse-chaos-checks",
                with_kafka=False,
            )
        return self._spark

    def models(self) -> Settings:
        """The campaign's served models: one small retrain (churn, segments,
        recommendations) on a lake of generated events like the cases' own, made on
        first use; every case's stream serves them, so "served = batch" compares scores,
        segments and lists, not only features."""
        if self._models is None:
            from batch.ingest import append_new
            from batch.params import ChurnParams, RecParams
            from batch.retrain import RetrainOptions, retrain
            from storage import registry

            settings = self.base.model_copy(update={"data_root": self.root / "models"})
            events = (  # the lake keeps produced_at: a backfill's is its event time
                t.append_column("produced_at", t["event_time"])
                for t in lab.generate(self.small, self.seed + 1)
            )
            append_new(settings, events, progress=False)
            opts = RetrainOptions(rec=RecParams(rank=8, max_iter=5), k_min=3, k_max=5,
                                  churn=ChurnParams(max_iter=10), progress=False)  # fmt: skip
            for name, meta in retrain(self.spark(), settings, opts).items():
                if name in registry.MODELS:  # served whatever the gate said: a fixture
                    registry.promote(settings, name, meta["version"])
            self.log(f"campaign models trained on {self.small:,} generated events")
            self._models = settings
        return self._models

    def install_models(self, settings: Settings) -> Settings:
        """Copy the campaign's models (not its speed-layer state) into ``settings``' root."""
        import shutil

        from storage import registry

        source = self.models()
        for name in registry.MODELS:
            shutil.copytree(source.models_dir / name, settings.models_dir / name,
                            dirs_exist_ok=True)  # fmt: skip
        for table in source.outputs_dir.iterdir():
            if table.name != "state":
                shutil.copytree(table, settings.outputs_dir / table.name, dirs_exist_ok=True)
        return settings

    def stream_settings(self, kafka: Settings, name: str, events: int) -> Settings:
        """Settings of one case's stream: its own data root (with the campaign's models)
        and topic, batches of ~1/40."""
        return self.install_models(
            kafka.model_copy(
                update={
                    "data_root": self.root / name / "data",
                    "topic_transactions": f"chaos-{name}",
                    "max_offsets_per_trigger": max(events // 40, 500),
                    "trigger_interval": "1 second",
                    "spark_driver_memory": "2g",
                    "spark_master": "local[2]",
                    # a snapshot after every batch that counted something: a stream stopped
                    # from outside has published what it processed (see lab.caught_up)
                    "snapshot_interval_seconds": 0,
                    "allowed_lateness_days": (
                        self.lateness_days or self.base.allowed_lateness_days
                    ),
                }
            )
        )


def _paced_rate(events: int, seconds: float = 180.0) -> float:
    """A replay rate that spreads ``events`` over about ``seconds`` (at least 2,000/s)."""
    return max(events / seconds, 2000.0)


def _fill(
    result: CaseResult,
    settings: Settings,
    expected: pa.Array,
    spark: Any,
    exclude: pa.Array | None = None,
    require_current: bool = True,
) -> lab.LakeCheck:
    """Lake and served-answer checks shared by the cases."""
    lake = lab.check_lake(settings, expected)
    result.in_lake = lake.rows
    result.accepted = len(expected) - lake.lost
    result.lost += lake.lost
    result.doubled += lake.doubled + lake.unexpected
    if lake.unexpected:
        result.notes.append(f"{lake.unexpected} event ids in the lake were never produced")
    equal, note = lab.features_equal_batch(spark, settings, exclude)
    result.notes.append(f"feature snapshot: {note}")
    verdict = served_equals_batch(spark, settings, exclude_ids=exclude,
                                  require_current=require_current)  # fmt: skip
    result.served_equal = equal and verdict.equal
    result.notes.append(f"served: {verdict.note()}")
    return lake


# ------------------------------------------------------------------ case 1: stream kills


def stream_kills(ctx: Context) -> CaseResult:
    """The stream SIGKILLed ``ctx.kills`` times at random points during a replay."""
    n = ctx.events
    result = CaseResult("1 stream SIGKILL", f"{ctx.kills} SIGKILLs of `pulse stream` (+JVM)")
    rng = random.Random(ctx.seed)
    root = ctx.root / "case1"
    with lab.local_broker(ctx.base, root / "broker", ctx.log) as kafka:
        s = ctx.stream_settings(kafka, "case1", n)
        lab.create_topic(s)
        producer = lab.Producer(
            s, lab.generate(n, ctx.seed), name="case1", seed=ctx.seed, rate=_paced_rate(n)
        )
        stream = lab.Stream(s, root / "stream.log")
        kill_points: list[str] = []
        try:
            for target in lab.random_points(rng, ctx.kills, n):
                stream.start()
                lab.wait_until(
                    lambda t=target: stream.progress() >= t or not stream.alive(),  # type: ignore[misc]
                    WAIT_S,
                    f"the stream to read {target:,} records",
                )
                if not stream.alive():
                    raise PulseError(f"the stream stopped by itself:\n{stream.tail()}")
                time.sleep(rng.uniform(0.0, 1.5))  # somewhere inside the batch's work
                kill_points.append(f"{stream.progress():,}")
                stream.kill(signal.SIGKILL)
                ctx.log(f"case 1: SIGKILL {stream.kills} at {kill_points[-1]} records read")
            stats = producer.result()
            stream.start(until_idle=True)
            stream.wait(WAIT_S)
        finally:
            stream.stop()
        result.produced = stats.delivered
        result.quarantined = len(lab.quarantine(s))
        result.lost += result.quarantined  # every record was valid
        _fill(result, s, lab.expected_ids(ctx.seed, n), ctx.spark())
        result.details = {
            "kills": stream.kills,
            "killed_at_records_read": [int(k.replace(",", "")) for k in kill_points],
            "starts": stream.starts,
            "batches_committed": stream.committed(),
            "late_events": stream.late(),
        }
        result.notes.insert(
            0,
            f"killed at {', '.join(kill_points)} records read; "
            f"{stream.starts} starts, {stream.committed()} batches committed",
        )
    return result


# --------------------------------------------------------------- case 5: bad records

#: The reason each injected kind must be quarantined with (its start: a JSON error
#: names the decoder's exception after it).
EXPECTED_REASON = {
    "broken_json": "malformed JSON",
    "wrong_type": "quantity: wrong type",
    "missing_field": "customer_id: missing",
    "negative_price": "unit_price: is negative",
    "oversized": "article_id: longer than",
    "future": "event_time: after produced_at",
}


def _first_batch_ends(settings: Settings) -> dict[int, int]:
    """Per partition, the end offset of the stream's first micro-batch (checkpoint)."""
    import json

    text = (settings.checkpoint_dir / "stream" / "offsets" / "0").read_text()
    parts = json.loads(text.splitlines()[-1])
    return {int(p): int(o) for topic in parts.values() for p, o in topic.items()}


def _far_past_counted(settings: Settings) -> set[str]:
    """Far-past events the stream rightly counted: those in its first batch (no watermark).

    Read back from Kafka with their partition and offset.
    """
    from confluent_kafka import Consumer, TopicPartition

    ends = _first_batch_ends(settings)
    consumer = Consumer(
        {**settings.kafka_client_config(), "group.id": "pulse-chaos-read",
         "enable.auto.commit": False}
    )  # fmt: skip
    topic = settings.topic_transactions
    found: set[str] = set()
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        left = {p: e for p, e in ends.items() if e > 0}
        deadline = time.monotonic() + 120
        while left and time.monotonic() < deadline:
            for msg in consumer.consume(10_000, timeout=1.0):
                part, offset = msg.partition(), msg.offset()
                if msg.error() is not None or part is None or offset is None or part not in left:
                    continue
                if offset < left[part]:
                    value = msg.value() or b""
                    if b"-dated-far_past" in value:
                        found.add(value.split(b'"event_id":"', 1)[1].split(b'"', 1)[0].decode())
                if offset + 1 >= left[part]:
                    del left[part]
    finally:
        consumer.close()
    return found


def _bad_records(ctx: Context, kafka: Settings, name: str, fraction: float) -> CaseResult:
    from producers.replay import BAD_KINDS, DATED_KINDS, bad_kind_for_row

    t0 = time.monotonic()
    n = ctx.small
    kinds = BAD_KINDS + DATED_KINDS
    label = f"{fraction:.0%} bad: {len(BAD_KINDS)} malformed kinds + future + far past"
    result = CaseResult(f"5 bad records {fraction:.0%}", label)
    s = ctx.stream_settings(kafka, name, n)
    lab.create_topic(s)
    # What the producer will inject, worked out independently of it (same rule).
    planned = [bad_kind_for_row(row, fraction, ctx.seed, kinds) for row in range(n)]
    far_past = [f"{lab.event_id(ctx.seed, r)}-dated-far_past"
                for r, k in enumerate(planned) if k == "far_past"]  # fmt: skip
    producer = lab.Producer(
        s, lab.generate(n, ctx.seed), name=name, inject=fraction, kinds=kinds, seed=ctx.seed,
        rate=_paced_rate(n, 60.0),
    )  # fmt: skip
    stream = lab.Stream(s, ctx.root / name / "stream.log")
    try:
        stream.start()
        stats = producer.result()
        total = lab.end_offsets(s)
        lab.wait_until(
            lambda: lab.caught_up(stream, total) or not stream.alive(), WAIT_S,
            "the stream to read the whole topic",
        )  # fmt: skip
        if not stream.alive():
            raise PulseError(f"the stream stopped on bad input:\n{stream.tail()}")
        time.sleep(3)  # the last batch's work, on the worker thread
        if not stream.alive():
            raise PulseError(f"the stream stopped on bad input:\n{stream.tail()}")
        stream.stop()  # it never stopped by itself, and has published all it processed
    finally:
        stream.stop()
    result.produced = stats.delivered
    injected = {k: planned.count(k) for k in kinds if planned.count(k)}
    if injected != stats.bad_by_kind:
        result.error = f"the producer injected {stats.bad_by_kind}, expected {injected}"
    q = lab.quarantine(s)
    result.quarantined = len(q)
    # Each injected record quarantined once, with its kind's reason.
    keys = pc.binary_join_element_wise(
        pc.cast(q.column("partition"), pa.string()), pc.cast(q.column("offset"), pa.string()), ":"
    )
    result.doubled += len(q) - len(pc.unique(keys))
    by_kind = quarantine_kinds(q)
    for kind in EXPECTED_REASON:
        got, want = by_kind.get(kind, 0), injected.get(kind, 0)
        result.lost += max(want - got, 0)
        result.doubled += max(got - want, 0)
    wrong = _wrong_reasons(q)
    if wrong:
        result.error = f"{len(wrong)} quarantined with another reason than their kind's: {wrong[0]}"
    if by_kind.get("far_past") or by_kind.get("?"):
        result.notes.append(
            f"valid records quarantined: {by_kind.get('far_past', 0)} far-past, "
            f"{by_kind.get('?', 0)} others"
        )
    counted = _far_past_counted(s)
    expected = pa.concat_arrays([lab.expected_ids(ctx.seed, n), pa.array(far_past, pa.string())])
    excluded = pa.array(sorted(set(far_past) - counted), pa.string())
    _fill(result, s, expected, ctx.spark(), exclude=excluded)
    if result.produced != result.accepted + result.quarantined:
        result.notes.append(
            f"produced {result.produced:,} != accepted {result.accepted:,} "
            f"+ quarantined {result.quarantined:,}"
        )
        result.lost += max(result.produced - result.accepted - result.quarantined, 0)
    reasons = _reason_counts(q)
    result.details = {
        "fraction": fraction,
        "injected": injected,
        "quarantined_by_kind": {k: v for k, v in by_kind.items() if k in EXPECTED_REASON},
        "reasons": dict(reasons),
        "far_past_in_lake": len(far_past),
        "far_past_counted_first_batch": len(counted),
        "stream_ran_without_stopping": True,
    }
    result.notes.insert(0, "injected " + ", ".join(f"{k} {v}" for k, v in injected.items()))
    result.notes.insert(1, "quarantined: " + "; ".join(f"{r} {c}" for r, c in reasons))
    result.notes.insert(
        2,
        f"far past: {len(far_past)} in the lake, {len(far_past) - len(counted)} beyond the "
        f"allowed lateness (lake only), {len(counted)} counted in the stream's first batch "
        "(no watermark yet); the stream ran without stopping",
    )
    result.seconds = time.monotonic() - t0
    return result


def _wrong_reasons(q: pa.Table) -> list[str]:
    values = pc.cast(q.column("value"), pa.string(), safe=False).to_pylist()
    wrong = []
    for value, reason in zip(values, q.column("reason").to_pylist(), strict=True):
        kind = quarantine_kinds(pa.table({"value": pa.array([value or ""])})).popitem()[0]
        want = EXPECTED_REASON.get(kind)
        if want is None or not (reason or "").startswith(want):
            wrong.append(f"{kind}: {reason}")
    return wrong


def _reason_counts(q: pa.Table) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for reason in q.column("reason").to_pylist():
        counts[reason] = counts.get(reason, 0) + 1
    return sorted(counts.items(), key=lambda kv: -kv[1])


def bad_records(ctx: Context) -> list[CaseResult]:
    """All bad-record kinds, plus future and far-past dates, at 1 % and 10 %."""
    with lab.local_broker(ctx.base, ctx.root / "case5" / "broker", ctx.log) as kafka:
        return [
            _bad_records(ctx, kafka, "case5-1pct", 0.01),
            _bad_records(ctx, kafka, "case5-10pct", 0.10),
        ]


# ------------------------------------------------------------ case 4: replayed twice


def _snapshot_rows(settings: Settings) -> pa.Table | None:
    """The published feature snapshot, sorted by customer (None if none)."""
    import pyarrow.parquet as pq

    path = lab.snapshot_path(settings)
    if path is None:
        return None
    return pq.read_table(path).sort_by("customer_id")


def replay_twice(ctx: Context) -> CaseResult:
    """The whole dataset replayed a second time: features identical, lake unchanged."""
    n = ctx.small
    result = CaseResult("4 replay twice", "the whole dataset sent again (same event ids)")
    root = ctx.root / "case4"
    with lab.local_broker(ctx.base, root / "broker", ctx.log) as kafka:
        s = ctx.stream_settings(kafka, "case4", n)
        lab.create_topic(s)
        stream = lab.Stream(s, root / "stream.log")
        first = lab.Producer(s, lab.generate(n, ctx.seed), name="case4-first", seed=ctx.seed)
        delivered = first.result().delivered
        stream.start(until_idle=True)
        stream.wait(WAIT_S)
        expected = lab.expected_ids(ctx.seed, n)
        lake_before = lab.check_lake(s, expected)
        features_before = _snapshot_rows(s)
        second = lab.Producer(s, lab.generate(n, ctx.seed), name="case4-again", seed=ctx.seed)
        delivered += second.result().delivered
        stream.start(until_idle=True)
        stream.wait(WAIT_S)
        result.produced = delivered
        result.quarantined = len(lab.quarantine(s))
        result.lost += result.quarantined
        lake_after = _fill(result, s, expected, ctx.spark())
        result.accepted *= 2  # every event was accepted twice, and is in the lake once
        features_after = _snapshot_rows(s)
    if (lake_before.version, lake_before.files) != (lake_after.version, lake_after.files):
        result.error = (
            f"the lake changed: version {lake_before.version} -> {lake_after.version}, "
            f"{len(lake_after.files - lake_before.files)} new files"
        )
    same = features_before is not None and features_after is not None
    same = same and features_before.equals(features_after)  # type: ignore[union-attr]
    if not same:
        result.served_equal = False
        result.notes.append("the feature snapshot changed after the second replay")
    result.details = {
        "lake_version_before": lake_before.version,
        "lake_version_after": lake_after.version,
        "lake_files": len(lake_after.files),
        "features_identical": same,
    }
    result.notes.insert(
        0,
        f"lake: Delta version {lake_after.version} and its {len(lake_after.files)} files "
        f"unchanged by the second replay; features identical: {'yes' if same else 'NO'}",
    )
    return result


#: Cases 2 and 3 stream with the longest allowed lateness. While a partition waits for
#: its broker (or its new leader), the others move the stream clock on; its events,
#: when they come, may be older than the watermark, and are then (by design) in the
#: lake only, not in the live features, which then differ from the batch recompute by
#: exactly those. 60 days of event time is more than any stall in these runs.
LATENESS = {"allowed_lateness_days": 60}


def _start_then_replay(
    ctx: Context, s: Settings, stream: lab.Stream, n: int, name: str, seconds: float = 40.0
) -> tuple[lab.Producer, pa.Table]:
    """Start the stream on the first 2 % of the rows; once it reads, replay the rest paced.

    Returns the producer of the rest, sending over about ``seconds`` (a fault injected
    while it runs hits the producer and the running stream both), and the rest.
    """
    rows = pa.concat_tables(lab.generate(n, ctx.seed))
    head = max(n // 50, 1)
    lab.Producer(s, iter([rows.slice(0, head)]), name=f"{name}-head", seed=ctx.seed).result()
    stream.start()
    lab.wait_until(
        lambda: stream.progress() >= head or not stream.alive(), WAIT_S, "the stream to start"
    )
    if not stream.alive():
        raise PulseError(f"the stream stopped by itself:\n{stream.tail()}")
    rest = rows.slice(head)
    producer = lab.Producer(
        s, iter(rest.to_batches(lab.CHUNK)), name=name, seed=ctx.seed,
        rate=max(len(rest) / seconds, 1.0),
    )  # fmt: skip
    return producer, rest


def _finish_replay(
    ctx: Context, s: Settings, producer: lab.Producer, rest: pa.Table, name: str
) -> tuple[Any, int, int]:
    """The paced replay's stats, resumed once if deliveries failed during the fault.

    A record not acknowledged within the producer's delivery time-out is a failed
    delivery, and the run says so; a user then reruns with ``--resume``, which re-sends
    from the last confirmed row. Returns (stats, failed deliveries, records re-sent).
    """
    stats = producer.result(lossless=False)
    failed = stats.failed
    if not failed:
        return stats, 0, 0
    again = lab.Producer(
        s, iter(rest.to_batches(lab.CHUNK)), name=name, seed=ctx.seed, resume=True
    ).result()
    stats.delivered += again.delivered
    return stats, failed, again.delivered


def _after_fault(
    ctx: Context,
    s: Settings,
    stream: lab.Stream,
    producer: lab.Producer,
    rest: pa.Table,
    name: str,
    result: CaseResult,
    fault: str,
) -> tuple[dict[str, Any], str]:
    """Cases 2 and 3 once their fault is in: does everything carry on, and is anything lost?

    Finishes the replay (resumed once if deliveries timed out), waits until the stream
    has read the whole topic or stopped, stops it, and fills ``result``'s counts from the
    lake, quarantine and features. ``fault`` names the fault in the error if the stream
    stopped. Returns the details both cases record, and the note's "producer: ...;
    stream ..." part.
    """
    n = ctx.small
    stats, failed, resent = _finish_replay(ctx, s, producer, rest, name)
    stats.delivered += max(n // 50, 1)  # the head, delivered before the fault
    total = lab.end_offsets(s)
    lab.wait_until(
        lambda: lab.caught_up(stream, total) or not stream.alive(),
        WAIT_S,
        "the stream to read the whole topic",
    )
    carried_on = stream.alive()
    if not carried_on:
        result.error = f"the stream stopped after {fault}: {stream.tail(3)}"
    stream.stop()
    result.produced = stats.delivered
    result.quarantined = len(lab.quarantine(s))
    result.lost += result.quarantined
    _fill(result, s, lab.expected_ids(ctx.seed, n), ctx.spark())
    details = {
        "producer_failed": failed,
        "producer_resent": resent,
        "stream_carried_on": carried_on,
        "late_events": stream.late(),
    }
    note = (
        f"producer: {stats.delivered:,} delivered, {failed} timed out"
        + (f" and resumed ({resent:,} re-sent); " if failed else "; ")
        + f"stream {'kept running' if carried_on else 'STOPPED'}"
    )
    return details, note


# ------------------------------------------------------------- case 2: broker SIGKILL


def broker_kill(ctx: Context) -> CaseResult:
    """The broker SIGKILLed mid-replay and restarted; producer and stream carry on."""
    from runtime import broker

    n = ctx.small
    result = CaseResult("2 broker SIGKILL", "the broker SIGKILLed mid-replay, restarted")
    root = ctx.root / "case2"
    rng = random.Random(ctx.seed + 2)
    with lab.local_broker(ctx.base, root / "broker", ctx.log) as kafka:
        node = kafka.model_copy(update={"data_root": root / "broker"})
        s = ctx.stream_settings(kafka, "case2", n).model_copy(update=LATENESS)
        lab.create_topic(s)
        stream = lab.Stream(s, root / "stream.log")
        try:
            producer, rest = _start_then_replay(ctx, s, stream, n, "case2")
            time.sleep(rng.uniform(5.0, 20.0))  # some way into the paced replay
            if producer.done():
                raise PulseError("the replay ended before the fault: nothing was mid-replay")
            at = stream.progress()
            t0 = time.monotonic()
            broker.kill(node)
            ctx.log(f"case 2: broker SIGKILLed at {at:,} records read")
            time.sleep(2.0)
            broker.start(node, timeout_s=240, log=ctx.log)
            down = time.monotonic() - t0
            details, note = _after_fault(
                ctx, s, stream, producer, rest, "case2", result, "the broker restart"
            )
        finally:
            stream.stop()
        result.details = {
            "killed_at_records_read": at,
            "broker_down_seconds": round(down, 1),
            **details,
        }
        result.notes.insert(
            0,
            f"broker killed at {at:,} records read, serving again after {down:.0f} s; {note}",
        )
    return result


# ------------------------------------------------------- case 3: three-broker cluster


def _leader_of(settings: Settings, partition: int) -> int:
    """The node id leading ``partition`` of the case's topic."""
    from runtime.kafka_admin import admin_client

    topic = settings.topic_transactions
    meta = admin_client(settings).list_topics(topic, timeout=10).topics[topic]
    return int(meta.partitions[partition].leader)


def cluster_node_kill(ctx: Context) -> CaseResult:
    """A local three-node KRaft cluster (RF 3, min ISR 2, acks=all), one node SIGKILLed."""
    from runtime.cluster import Cluster

    n = ctx.small
    result = CaseResult("3 cluster node SIGKILL", "1 of 3 brokers SIGKILLed (RF 3, min ISR 2)")
    root = ctx.root / "case3"
    rng = random.Random(ctx.seed + 3)
    ports = [(lab.free_port(), lab.free_port()) for _ in range(3)]
    cluster = Cluster.create(ctx.base.model_copy(update={"broker_heap": "512m"}), root, ports)
    cluster.start()
    try:
        kafka = ctx.base.model_copy(update={"kafka_bootstrap": cluster.bootstrap})
        s = ctx.stream_settings(kafka, "case3", n).model_copy(update=LATENESS)
        lab.create_topic(s, replication=3, config={"min.insync.replicas": "2"})
        stream = lab.Stream(s, root / "stream.log")
        try:
            producer, rest = _start_then_replay(ctx, s, stream, n, "case3")
            time.sleep(rng.uniform(5.0, 20.0))  # some way into the paced replay
            if producer.done():
                raise PulseError("the replay ended before the fault: nothing was mid-replay")
            at = stream.progress()
            victim = _leader_of(s, 0)
            cluster.kill(victim)
            ctx.log(f"case 3: node {victim} (leader of partition 0) SIGKILLed at {at:,} read")
            details, note = _after_fault(
                ctx, s, stream, producer, rest, "case3", result, "the node died"
            )
        finally:
            stream.stop()
        result.details = {"killed_node": victim, "killed_at_records_read": at, **details}
        result.notes.insert(
            0,
            f"node {victim} (leader of partition 0) killed at {at:,} records read and left "
            f"down; {note} on the other two",
        )
    finally:
        cluster.stop()
    return result


# -------------------------------------------------------------- case 7: SASL/SCRAM


def _cli(settings: Settings, *argv: str, timeout_s: float = 300.0) -> tuple[int, str, str]:
    """Run `pulse ARGV` configured by ``settings`` alone; (exit code, stdout, stderr)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    env |= lab.settings_env(settings)
    done = subprocess.run(
        [sys.executable, "-m", "pulse.cli", *argv], env=env, cwd=lab.REPO,
        capture_output=True, text=True, timeout=timeout_s,
    )  # fmt: skip
    return done.returncode, done.stdout, done.stderr


def sasl_scram(ctx: Context) -> CaseResult:
    """A SASL/SCRAM broker: the right credentials work; a wrong password is one clear line."""
    import secrets

    from pydantic import SecretStr

    n = ctx.small
    result = CaseResult("7 SASL/SCRAM", "SCRAM-SHA-256 broker; then a wrong password")
    root = ctx.root / "case7"
    password, wrong = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
    secure = ctx.base.model_copy(
        update={
            "kafka_security_protocol": "SASL_PLAINTEXT",
            "kafka_sasl_mechanism": "SCRAM-SHA-256",
            "kafka_sasl_username": "pulse-chaos",
            "kafka_sasl_password": SecretStr(password),
        }
    )
    problems: list[str] = []
    with lab.local_broker(secure, root / "broker", ctx.log) as kafka:
        s = ctx.stream_settings(kafka, "case7", n)
        lab.create_topic(s)
        stats = lab.Producer(s, lab.generate(n, ctx.seed), name="case7", seed=ctx.seed).result()
        stream = lab.Stream(s, root / "stream.log")
        stream.start(until_idle=True)
        stream.wait(WAIT_S)
        bad = s.model_copy(update={"kafka_sasl_password": SecretStr(wrong)})
        outputs: list[str] = []
        shop = root / "shop"  # `pulse produce` stops at the login, before reading a row
        shop.mkdir(parents=True, exist_ok=True)
        (shop / "transactions_train.csv").write_text(
            "t_dat,customer_id,article_id,price,sales_channel_id\n2020-01-01,c1,01,0.01,2\n"
        )
        for argv in (("topics", "create"), ("produce", f"hm:{shop}"), ("stream", "--until-idle")):
            code, out, err = _cli(bad, *argv)
            outputs += [out, err]
            lines = [line for line in err.splitlines() if line.strip()]
            shown = lines[0] if lines else "(nothing)"
            result.notes.append(f"wrong password, `pulse {argv[0]}`: exit {code}, {shown!r}")
            clear = shown.startswith("pulse: error: SASL authentication failed:")
            clear = clear and "unreachable" not in shown
            if code == 0 or len(lines) != 1 or not clear:
                problems.append(f"`pulse {' '.join(argv)}` with a wrong password: {lines[:3]}")
        code, out, err = _cli(s, "--help")
        outputs += [out, err]
    logs = [p for p in root.rglob("*") if p.is_file() and p.suffix in (".log", ".out")]
    texts = outputs + [p.read_text(errors="replace") for p in logs]
    for secret, name in ((password, "the password"), (wrong, "the wrong password")):
        leaks = [i for i, text in enumerate(texts) if secret in text]
        if leaks:
            problems.append(f"{name} appears in {len(leaks)} output(s) or log(s)")
    result.notes.append(
        f"neither password in `pulse --help`, the commands' output or {len(logs)} log files"
        if not problems
        else "; ".join(problems)
    )
    if problems:
        result.error = problems[0]
    result.produced = stats.delivered
    result.quarantined = len(lab.quarantine(s))
    result.lost += result.quarantined
    _fill(result, s, lab.expected_ids(ctx.seed, n), ctx.spark())
    result.details = {"problems": problems, "log_files_scanned": len(logs)}
    return result


# ------------------------------------------------------- case 6: Spark standalone


def _sorted_table(table: pa.Table) -> pa.Table:
    """``table`` in a canonical row order (every column, ascending), for equality.

    Dictionary columns (a partition column read back) are decoded first: Arrow cannot
    sort by them.
    """
    for i, column in enumerate(table.columns):
        if pa.types.is_dictionary(column.type):
            table = table.set_column(i, table.field(i).name, column.cast(column.type.value_type))
    return table.sort_by([(name, "ascending") for name in table.column_names])


def _lake_table(settings: Settings) -> pa.Table:
    """Every lake row, all columns, in canonical order."""
    import pyarrow.parquet as pq

    from storage.lake import live_files

    files = live_files(settings)
    return _sorted_table(pq.ParquetDataset(files).read()) if files else pa.table({})


def _retrain_outputs(settings: Settings) -> dict[str, pa.Table]:
    """The newest retrain's output tables (``outputs/<table>/<version>/``)."""
    import pyarrow.parquet as pq

    from storage import registry

    tables = {}
    for model, table in zip(registry.MODELS, registry.TABLES, strict=True):
        versions = registry.versions(settings, model)
        path = registry.output_path(settings, table, versions[-1]) if versions else None
        if path is not None and path.is_dir():
            tables[table] = _sorted_table(pq.read_table(path))
    return tables


def _retrain_metrics(settings: Settings) -> dict[str, Any]:
    """The newest retrain's metrics per model (``meta.json``)."""
    from storage import registry

    out = {}
    for model in registry.MODELS:
        versions = registry.versions(settings, model)
        if versions:
            out[model] = registry.read_meta(settings, model, versions[-1]).get("metrics")
    return out


FLOAT_REL = 1e-9  # how far a float on the cluster may be from local mode's, relative


def _compare(name: str, local: pa.Table, cluster: pa.Table) -> str | None:
    """None when equal, else one line saying how ``cluster`` differs from ``local``.

    Floats are equal to ``FLOAT_REL`` relative: a model fitted on the cluster sums its
    partitions in another order (churn probabilities differed by 1.1e-15)."""
    if local.equals(cluster):
        return None
    if local.column_names != cluster.column_names or local.num_rows != cluster.num_rows:
        return f"{name}: {local.num_rows:,} rows locally, {cluster.num_rows:,} on the cluster"
    differ = []
    for c in local.column_names:
        if local[c].equals(cluster[c]):
            continue
        if pa.types.is_floating(local[c].type):
            scale = pc.max_element_wise(pc.abs(local[c]), pc.abs(cluster[c]))
            close = pc.less_equal(
                pc.abs(pc.subtract(local[c], cluster[c])), pc.multiply(scale, FLOAT_REL)
            )
            same = pc.or_kleene(close, pc.and_(pc.is_null(local[c]), pc.is_null(cluster[c])))
            rows = pc.sum(pc.cast(pc.invert(pc.fill_null(same, False)), pa.int64())).as_py()
        else:
            rows = pc.sum(pc.cast(pc.not_equal(local[c], cluster[c]), pa.int64())).as_py()
        if not rows:
            continue
        text = f"{c} ({rows} rows"
        if pa.types.is_floating(local[c].type):
            delta = pc.max(pc.abs(pc.subtract(local[c], cluster[c]))).as_py()
            text += f", max |difference| {delta:.3g}"
        differ.append(text + ")")
    if not differ:
        return None
    return f"{name}: same {local.num_rows:,} rows but values differ in {', '.join(differ)}"


def _retrain(settings: Settings, log_path: Path) -> float:
    """`pulse retrain` as a user runs it, configured by ``settings``; its seconds."""
    t0 = time.monotonic()
    code, out, err = _cli(settings, "retrain", timeout_s=WAIT_S)
    log_path.write_text(out + err)
    if code != 0:
        lines = [line for line in err.splitlines() if line.strip()]
        raise PulseError(f"`pulse retrain` exited {code}: {lines[-1] if lines else '(no output)'}")
    return time.monotonic() - t0


def _same_figures(a: object, b: object, rel: float = FLOAT_REL) -> bool:
    """Equal, floats to ``rel``: a sum over partitions adds in another order on a cluster
    (a silhouette differed in its 16th digit)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=rel) or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_figures(a[k], b[k], rel) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_figures(x, y, rel) for x, y in zip(a, b, strict=True))
    return a == b


#: Retrain outputs that need not equal local mode's, and why: none. Segments were here
#: (K-Means followed the lake's row order: two local runs over the same events chose
#: k=3 and k=6) until ``batch.frames.in_fixed_order`` fixed their input's layout.
ORDER_SENSITIVE: dict[str, str] = {}


def spark_cluster(ctx: Context) -> CaseResult:
    """The stream and the retrain on a Spark standalone cluster, against local mode.

    The same topic is streamed (``--until-idle``) and the lake retrained twice, each
    time into its own data root: once with ``PULSE_SPARK_MASTER=local[2]``, once with
    the master of a standalone cluster (a master and two workers of one core and 2g,
    from pyspark's launcher), and ``PULSE_SPARK_EXECUTOR_MEMORY`` small enough for a
    worker. Nothing else differs. The lake, the feature snapshot and every retrain
    output table must be equal, row for row.
    """
    from storage import registry

    n = ctx.small
    result = CaseResult(
        "6 Spark standalone", "master + 2 workers (1 core, 2g) via PULSE_SPARK_MASTER"
    )
    root = ctx.root / "case6"
    seconds: dict[str, float] = {}
    with lab.local_broker(ctx.base, root / "broker", ctx.log) as kafka:
        base = ctx.stream_settings(kafka, "case6", n).model_copy(
            update={"spark_executor_memory": "1g"}
        )
        lab.create_topic(base)
        stats = lab.Producer(base, lab.generate(n, ctx.seed), name="case6", seed=ctx.seed).result()
        runs = {
            mode: ctx.install_models(base.model_copy(update={"data_root": root / mode}))
            for mode in ("local", "cluster")
        }

        def stream_and_retrain(mode: str) -> None:
            s = runs[mode]
            t0 = time.monotonic()
            stream = lab.Stream(s, root / f"stream-{mode}.log")
            try:
                stream.start(until_idle=True)
                stream.wait(WAIT_S)
            finally:
                stream.stop()
            seconds[f"stream_{mode}"] = round(time.monotonic() - t0, 1)
            seconds[f"retrain_{mode}"] = round(_retrain(s, root / f"retrain-{mode}.log"), 1)
            ctx.log(f"case 6: {mode}: stream {seconds[f'stream_{mode}']} s, "
                    f"retrain {seconds[f'retrain_{mode}']} s")  # fmt: skip

        stream_and_retrain("local")
        with lab.spark_standalone(root / "spark", ctx.log) as master:
            runs["cluster"] = runs["cluster"].model_copy(update={"spark_master": master})
            stream_and_retrain("cluster")
    local, cluster = runs["local"], runs["cluster"]
    result.produced = stats.delivered
    result.quarantined = len(lab.quarantine(cluster))
    result.lost += result.quarantined
    # each run retrained after its stream stopped: the store serves the campaign's models
    _fill(result, cluster, lab.expected_ids(ctx.seed, n), ctx.spark(), require_current=False)

    differences = []
    lake_diff = _compare("lake", _lake_table(local), _lake_table(cluster))
    if lake_diff:
        differences.append(lake_diff)
    paths = [lab.snapshot_path(s) for s in (local, cluster)]
    if paths[0] is None or paths[1] is None:
        differences.append("features: a run published no snapshot")
    else:
        import pyarrow.parquet as pq

        feature_diff = _compare(
            "features", *(_sorted_table(pq.read_table(p)) for p in paths if p is not None)
        )
        if feature_diff:
            differences.append(feature_diff)
    outputs = {mode: _retrain_outputs(s) for mode, s in runs.items()}
    metrics = {mode: _retrain_metrics(s) for mode, s in runs.items()}
    known: list[str] = []  # differences ORDER_SENSITIVE explains: reported, not failed
    for table in sorted(set(outputs["local"]) | set(outputs["cluster"])):
        if table not in outputs["local"] or table not in outputs["cluster"]:
            differences.append(f"{table}: written by one run only")
            continue
        diff = _compare(table, outputs["local"][table], outputs["cluster"][table])
        if diff:
            (known if table in ORDER_SENSITIVE else differences).append(diff)
    for model in sorted(set(metrics["local"]) | set(metrics["cluster"])):
        local_m, cluster_m = metrics["local"].get(model), metrics["cluster"].get(model)
        if not _same_figures(local_m, cluster_m):
            table = dict(zip(registry.MODELS, registry.TABLES, strict=True))[model]
            diff = f"{model} metrics: {local_m} locally, {cluster_m} on the cluster"
            (known if table in ORDER_SENSITIVE else differences).append(diff)
    if not outputs["local"]:
        differences.append("the retrain wrote no output table")
    compared = ["lake", "features"] + [
        f"{t} (+ metrics)" for t in sorted(outputs["local"]) if t not in ORDER_SENSITIVE
    ]
    result.notes.insert(
        0,
        f"master {runs['cluster'].spark_master} (2 workers, 1 core and 2g each); "
        f"stream {seconds['stream_local']} s local, {seconds['stream_cluster']} s cluster; "
        f"retrain {seconds['retrain_local']} s local, {seconds['retrain_cluster']} s cluster",
    )
    result.notes.insert(
        1,
        f"identical to local mode: {', '.join(compared)}"
        if not differences
        else "differs from local mode: " + "; ".join(differences),
    )
    for table, why in ORDER_SENSITIVE.items():
        same = not any(k.startswith(table) for k in known)
        result.notes.append(
            f"{table}: {'identical too' if same else 'NOT identical'} "
            f"({why}){'' if same else ': ' + '; '.join(known)}"
        )
    if differences:
        result.error = differences[0]
    result.details = {
        "seconds": seconds,
        "compared": compared,
        "differences": differences,
        "order_sensitive_differences": known,
        "metrics": metrics,
    }
    return result


CASES: dict[str, tuple[str, Callable[[Context], CaseResult | list[CaseResult]]]] = {
    "1": ("the stream SIGKILLed at random points, restarted on its checkpoint", stream_kills),
    "5": ("bad records at 1 % and 10 %, future and far-past dates", bad_records),
    "4": ("the whole dataset replayed a second time", replay_twice),
    "2": ("the broker SIGKILLed mid-replay and restarted", broker_kill),
    "3": ("a three-broker KRaft cluster losing a broker mid-replay", cluster_node_kill),
    "7": ("a SASL/SCRAM broker: right and wrong credentials", sasl_scram),
    "6": ("the stream and the retrain on a Spark standalone cluster", spark_cluster),
}


def quarantine_kinds(table: pa.Table) -> dict[str, int]:
    """Quarantined records by the injected kind their raw value names (``-bad-<kind>``)."""
    values = pc.cast(table.column("value"), pa.string(), safe=False)
    counts: dict[str, int] = {}
    for v in values.to_pylist():
        text = v or ""
        kind = "?"
        for marker in ("-bad-", "-dated-"):
            at = text.find(marker)
            if at >= 0:
                kind = text[at + len(marker) :].split('"', 1)[0]
                break
        counts[kind] = counts.get(kind, 0) + 1
    return counts

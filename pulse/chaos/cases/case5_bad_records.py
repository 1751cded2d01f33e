"""Case 5: bad records (every malformed kind, future and far-past dates) at 1 % and 10 %."""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.compute as pc

from pulse.chaos import lab
from pulse.chaos.cases.common import WAIT_S, CaseResult, Context, fill, paced_rate
from runtime.errors import PulseError
from runtime.settings import Settings

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


def bad_records_at(ctx: Context, kafka: Settings, name: str, fraction: float) -> CaseResult:
    """One run of case 5 on ``kafka``: every bad kind injected at ``fraction`` of the rows."""
    from producers.bad_records import BAD_KINDS, DATED_KINDS, bad_kind_for_row

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
        rate=paced_rate(n, 60.0),
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
    fill(result, s, expected, ctx.spark(), exclude=excluded)
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
            bad_records_at(ctx, kafka, "case5-1pct", 0.01),
            bad_records_at(ctx, kafka, "case5-10pct", 0.10),
        ]


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

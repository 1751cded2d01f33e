"""What cases 2 and 3 share: a fault injected mid-replay, then everything must carry on.

The stream starts on the head of the data, the rest is replayed paced, the case injects
its fault while both run, and ``after_fault`` finishes the replay and fills the result.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from pulse.chaos import lab
from pulse.chaos.cases.common import WAIT_S, CaseResult, Context, fill
from runtime.errors import PulseError
from runtime.settings import Settings

#: Cases 2 and 3 stream with the longest allowed lateness. While a partition waits for
#: its broker (or its new leader), the others move the stream clock on; its events,
#: when they come, may be older than the watermark, and are then (by design) in the
#: lake only, not in the live features, which then differ from the batch recompute by
#: exactly those. 60 days of event time is more than any stall in these runs.
LATENESS = {"allowed_lateness_days": 60}


def start_then_replay(
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


def after_fault(
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
    fill(result, s, lab.expected_ids(ctx.seed, n), ctx.spark())
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

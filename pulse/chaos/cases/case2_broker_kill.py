"""Case 2: the broker SIGKILLed mid-replay and restarted; producer and stream carry on."""

from __future__ import annotations

import random
import time

from pulse.chaos import lab
from pulse.chaos.cases.common import CaseResult, Context
from pulse.chaos.cases.mid_replay import LATENESS, after_fault, start_then_replay
from runtime.errors import PulseError


def broker_kill(ctx: Context) -> CaseResult:
    """The broker SIGKILLed mid-replay and restarted; producer and stream carry on."""
    from pulse.local import broker

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
            producer, rest = start_then_replay(ctx, s, stream, n, "case2")
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
            details, note = after_fault(
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

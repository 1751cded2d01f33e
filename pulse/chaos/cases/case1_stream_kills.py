"""Case 1: the stream SIGKILLed at random points during a replay, restarted on its checkpoint."""

from __future__ import annotations

import random
import signal
import time

from pulse.chaos import lab
from pulse.chaos.cases.common import WAIT_S, CaseResult, Context, fill, paced_rate
from runtime.errors import PulseError


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
            s, lab.generate(n, ctx.seed), name="case1", seed=ctx.seed, rate=paced_rate(n)
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
        fill(result, s, lab.expected_ids(ctx.seed, n), ctx.spark())
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

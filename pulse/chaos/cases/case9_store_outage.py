"""Case 9: the object store down for a minute mid-replay, with the stream's data root in it.

`pulse stream` runs with its whole data root (checkpoint, inbox, state, lake, snapshots,
the campaign's models) in a SeaweedFS bucket while the replay producer sends generated
events with known ids. Some seconds into the paced replay the store is SIGKILLed and
left down for ``OUTAGE_S`` seconds, then started again on the same ports, data
directory and credentials.

SIGKILL, not SIGSTOP: a crashed store refuses connections at once, so every client of
the stream (s3a for Spark's checkpoint, s3fs, pyarrow and delta-rs) meets the failure
it would meet in a real outage and must retry; and the server restarts from what it
had acknowledged, with no shutdown, so what a client was told was written must be
there. A SIGSTOPped server instead accepts connections into the kernel's backlog and
answers nothing until it is thawed, which tests the clients' read time-outs and, when
they are longer than the pause, nothing at all (in-flight requests simply finish).

What is measured: whether the stream rides through (its clients retry; see
docs/faults.md) or exits, and if it exits, that it does so with one ``pulse: error:``
line and a non-zero code, and that a restart (as a supervisor would) resumes from the
checkpoint in the bucket; how long no micro-batch completed. Either way every produced
event must be in the lake exactly once, and the served answers must equal the batch
recompute (``fill``).
"""

from __future__ import annotations

import random
import re
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from pulse.chaos import lab
from pulse.chaos.cases.common import WAIT_S, CaseResult, Context, fill
from pulse.chaos.cases.mid_replay import LATENESS
from runtime.errors import PulseError
from runtime.settings import Settings

OUTAGE_S = 60.0  # how long the store stays down (SIGKILL to the restart command)
REPLAY_S = 60.0  # the paced replay of the rest: it goes on sending through the outage
BUCKET = "chaos9"  # not "pulse": Hadoop caches an s3a client per bucket, not per server
MAX_RESTARTS = 5  # a supervisor's patience: restarts of an exited stream


class BatchClock:
    """When each ``batch N:`` line of the stream's log appeared (read as it is written)."""

    BATCH = re.compile(r"^batch (\d+): ")

    def __init__(self, logfile: Path, poll_s: float = 0.1) -> None:
        self.logfile = logfile
        self.seen: list[tuple[float, int]] = []  # (time.monotonic(), batch id)
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-batch-clock", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        offset, partial = 0, ""
        while not self._stop.is_set():
            try:
                with open(self.logfile, encoding="utf-8", errors="replace") as f:
                    f.seek(offset)
                    text = f.read()
                    offset = f.tell()
            except OSError:
                text = ""
            now = time.monotonic()
            lines = (partial + text).split("\n")
            partial = lines.pop()
            for line in lines:
                m = self.BATCH.match(line)
                if m:
                    self.seen.append((now, int(m.group(1))))
            self._stop.wait(self._poll_s)

    def stop(self) -> None:
        """Stop reading (after one last read)."""
        self._stop.set()
        self._thread.join(5)

    def last_before(self, t: float) -> float | None:
        """When the last batch line before ``t`` appeared."""
        times = [when for when, _ in self.seen if when < t]
        return times[-1] if times else None

    def first_after(self, t: float) -> float | None:
        """When the first batch line after ``t`` appeared."""
        return next((when for when, _ in self.seen if when > t), None)

    def between(self, t0: float, t1: float) -> int:
        """Batch lines that appeared in (t0, t1]."""
        return sum(1 for when, _ in self.seen if t0 < when <= t1)


def _exit_lines(stream: lab.Stream, start: int) -> list[str]:
    """The ``pulse: error:`` lines the stream's run number ``start`` printed."""
    text = stream.logfile.read_text(errors="replace")
    at = text.rfind(f"--- start {start}:")
    return [line for line in text[at:].splitlines() if line.startswith("pulse: error:")]


def _start_then_replay(
    ctx: Context, s: Settings, producer: Settings, stream: lab.Stream, n: int
) -> lab.Producer:
    """The first 2 % of the rows, the stream started on them; once it has committed a
    batch in the bucket, the rest replayed paced over ``REPLAY_S`` (returned)."""
    rows = pa.concat_tables(lab.generate(n, ctx.seed))
    head = max(n // 50, 1)
    lab.Producer(producer, iter([rows.slice(0, head)]), name="case9-head", seed=ctx.seed).result()
    stream.start()
    lab.wait_until(lambda: stream.committed() >= 1 or not stream.alive(), WAIT_S,
                   "the stream's first batch in the bucket", poll_s=0.5)  # fmt: skip
    if not stream.alive():
        raise PulseError(f"the stream stopped by itself:\n{stream.tail()}")
    rest = rows.slice(head)
    return lab.Producer(
        producer, iter(rest.to_batches(lab.CHUNK)), name="case9", seed=ctx.seed,
        rate=max(len(rest) / REPLAY_S, 1.0),
    )  # fmt: skip


def store_outage(ctx: Context, outage_s: float = OUTAGE_S) -> CaseResult:
    """The stream's object store SIGKILLed mid-replay for ``outage_s``, then restarted."""
    from pulse.local.s3 import S3Server

    n = ctx.small
    result = CaseResult(
        "9 object store outage",
        f"the stream's S3 store SIGKILLed mid-replay, down {outage_s:.0f} s, restarted",
    )
    root = ctx.root / "case9"
    rng = random.Random(ctx.seed + 9)
    details: dict[str, Any] = {"outage_seconds": outage_s, "signal": "SIGKILL"}
    with (
        lab.local_broker(ctx.base, root / "broker", ctx.log) as kafka,
        S3Server(ctx.base, root / "s3", bucket=BUCKET) as server,
    ):
        store = server.endpoint.settings("case9")
        s = ctx.stream_settings(kafka, "case9", n, store=store).model_copy(update=LATENESS)
        # the producer is another system: its resume positions on this disk, not in the
        # bucket (`pulse produce` does not run on a store yet), so the outage hits the
        # stream alone
        producer_settings = s.model_copy(update={"data_root": root / "producer"})
        lab.create_topic(s)
        stream = lab.Stream(s, root / "stream.log")
        clock = BatchClock(stream.logfile)
        exits: list[dict[str, Any]] = []

        def restart_if_exited() -> None:
            """A supervisor: an exited stream is recorded, then started again."""
            if stream.alive():
                return
            assert stream.proc is not None
            lab.Stream._reap_group(stream.proc.pid)  # its JVM too, before another starts
            lines = _exit_lines(stream, stream.starts)
            exits.append({
                "code": stream.proc.returncode, "error_lines": lines,
                "noticed_seconds_after_kill": round(time.monotonic() - t0, 1),
            })  # fmt: skip
            ctx.log(f"case 9: the stream exited {stream.proc.returncode}: {lines[-1:] or '?'}")
            if len(exits) > MAX_RESTARTS:
                raise PulseError(f"the stream exited {len(exits)} times:\n{stream.tail()}")
            stream.start()

        try:
            producer = _start_then_replay(ctx, s, producer_settings, stream, n)
            time.sleep(rng.uniform(3.0, 10.0))  # some way into the paced replay
            if producer.done() or not stream.alive():
                raise PulseError("the replay ended (or the stream stopped) before the fault")
            at = stream.progress()
            t0 = time.monotonic()
            server.kill()
            ctx.log(f"case 9: object store SIGKILLed at {at:,} records read")
            exited_during: float | None = None
            while time.monotonic() - t0 < outage_s:
                if exited_during is None and not stream.alive():
                    exited_during = time.monotonic() - t0
                time.sleep(0.2)
            t_start = time.monotonic()
            server.start(timeout=300)
            t1 = time.monotonic()
            ctx.log(f"case 9: object store answering again after {t1 - t0:.0f} s")
            restart_if_exited()
            stats = producer.result()
            stats.delivered += max(n // 50, 1)  # the head, delivered before the fault
            total = lab.end_offsets(s)

            def done() -> bool:
                restart_if_exited()
                return lab.caught_up(stream, total)

            lab.wait_until(done, WAIT_S, "the stream to read the whole topic", poll_s=0.5)
        finally:
            stream.stop()
            clock.stop()
        result.produced = stats.delivered
        result.quarantined = len(lab.quarantine(s))
        result.lost += result.quarantined  # every record was valid
        fill(result, s, lab.expected_ids(ctx.seed, n), ctx.spark())
        committed = stream.committed()  # read while the store runs

    before, after = clock.last_before(t0), clock.first_after(t1)
    blocked = None if after is None else after - t0
    details |= {
        "killed_at_records_read": at,
        "store_restart_seconds": round(t1 - t_start, 1),
        "store_down_seconds": round(t1 - t0, 1),  # SIGKILL to answering again
        "stream_exited": bool(exits),
        "stream_exited_during_outage_at": None if exited_during is None else round(exited_during),
        "exits": exits,
        "restarts": len(exits),
        "starts": stream.starts,
        "batches_during_outage": clock.between(t0, t1),
        "blocked_seconds": None if blocked is None else round(blocked, 1),
        "no_batch_seconds": None if after is None or before is None else round(after - before, 1),
        "first_batch_after_store_back_seconds": None if after is None else round(after - t1, 1),
        "batches_committed": committed,
        "late_events": stream.late(),
    }
    result.details = details
    if exits:
        one_line = all(e["code"] != 0 and len(e["error_lines"]) == 1 for e in exits)
        how = (
            f"the stream EXITED {len(exits)} time(s) (codes "
            f"{', '.join(str(e['code']) for e in exits)}; "
            + ("one `pulse: error:` line each" if one_line else "NOT one clear line")
            + f": {exits[0]['error_lines'][-1:] or '?'}), restarted on its checkpoint"
        )
        if not one_line:
            result.error = f"the stream did not exit with one clear line: {exits}"
    else:
        how = "the stream rode through (no exit, no restart)"
    result.notes.insert(
        0,
        f"store SIGKILLed at {at:,} records read, answering again after {t1 - t0:.0f} s "
        f"({t1 - t_start:.0f} s of it its restart); {how}; no batch completed for "
        + (f"{blocked:.0f} s after the kill" if blocked is not None else "? s")
        + (f", first batch {after - t1:.0f} s after the store was back" if after else ""),
    )
    return result

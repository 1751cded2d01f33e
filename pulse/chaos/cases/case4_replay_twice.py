"""Case 4: the whole dataset replayed a second time: features identical, lake unchanged."""

from __future__ import annotations

import pyarrow as pa

from pulse.chaos import lab
from pulse.chaos.cases.common import WAIT_S, CaseResult, Context, fill
from runtime.settings import Settings


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
        lake_after = fill(result, s, expected, ctx.spark())
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

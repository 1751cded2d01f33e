"""Case 6: the stream and the retrain on a Spark standalone cluster, against local mode."""

from __future__ import annotations

import time
from pathlib import Path

from pulse.chaos import lab
from pulse.chaos.cases.case6_compare import ORDER_SENSITIVE, compare_runs
from pulse.chaos.cases.common import WAIT_S, CaseResult, Context, fill, run_cli
from runtime.errors import PulseError
from runtime.settings import Settings


def _retrain(settings: Settings, log_path: Path) -> float:
    """`pulse retrain` as a user runs it, configured by ``settings``; its seconds."""
    t0 = time.monotonic()
    code, out, err = run_cli(settings, "retrain", timeout_s=WAIT_S)
    log_path.write_text(out + err)
    if code != 0:
        lines = [line for line in err.splitlines() if line.strip()]
        raise PulseError(f"`pulse retrain` exited {code}: {lines[-1] if lines else '(no output)'}")
    return time.monotonic() - t0


def spark_cluster(ctx: Context) -> CaseResult:
    """The stream and the retrain on a Spark standalone cluster, against local mode.

    The same topic is streamed (``--until-idle``) and the lake retrained twice, each
    time into its own data root: once with ``PULSE_SPARK_MASTER=local[2]``, once with
    the master of a standalone cluster (a master and two workers of one core and 2g,
    from pyspark's launcher), and ``PULSE_SPARK_EXECUTOR_MEMORY`` small enough for a
    worker. Nothing else differs. The lake, the feature snapshot and every retrain
    output table must be equal, row for row.
    """
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
    fill(result, cluster, lab.expected_ids(ctx.seed, n), ctx.spark(), require_current=False)

    found = compare_runs(local, cluster)
    differences, known, compared = found.differences, found.known, found.compared
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
        "metrics": found.metrics,
    }
    return result

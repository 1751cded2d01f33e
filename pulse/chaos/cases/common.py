"""What every case shares: its row of the table (``CaseResult``), what it is given
(``Context``: settings, a work directory, sizes, a seed, the campaign's served models),
the lake and served-answer checks that fill the row (``fill``), and `pulse` run as a
user runs it (``run_cli``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from upath import UPath

from pulse.chaos import lab
from pulse.oracle import served_equals_batch
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
        """Copy the campaign's models (not its speed-layer state) into ``settings``' root,
        on a disk or in an object store (uploaded)."""
        from storage import registry

        source = self.models()
        for name in registry.MODELS:
            copy_tree(Path(str(source.models_dir / name)), settings.models_dir / name)
        for table in source.outputs_dir.iterdir():
            if table.name != "state":
                copy_tree(Path(str(table)), settings.outputs_dir / table.name)
        return settings

    def stream_settings(
        self, kafka: Settings, name: str, events: int, store: dict[str, Any] | None = None
    ) -> Settings:
        """Settings of one case's stream: its own data root (with the campaign's models)
        and topic, batches of ~1/40.

        ``store``: settings that put the data root in an object store instead
        (``S3Endpoint.settings(prefix)``); this machine's own files (the online store)
        then go to ``<root>/<name>/local``.
        """
        if store is not None:  # validated again: an s3:// root is parsed, given its keys
            fields = {f: getattr(kafka, f) for f in Settings.model_fields}
            kafka = Settings(**fields | store | {"local_dir": self.root / name / "local"})
        return self.install_models(
            kafka.model_copy(
                update={
                    **({} if store is not None else {"data_root": self.root / name / "data"}),
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


def copy_tree(source: Path, target: UPath) -> None:
    """Copy the local directory ``source`` to ``target``: a local directory (merged into
    one that exists), or a prefix of an object store (each file one upload)."""
    import shutil

    from storage.objects import is_remote

    if not is_remote(target):
        shutil.copytree(source, Path(str(target)), dirs_exist_ok=True)
        return
    for path in sorted(source.rglob("*")):
        if path.is_file():
            (target / path.relative_to(source).as_posix()).write_bytes(path.read_bytes())


def paced_rate(events: int, seconds: float = 180.0) -> float:
    """A replay rate that spreads ``events`` over about ``seconds`` (at least 2,000/s)."""
    return max(events / seconds, 2000.0)


def fill(
    result: CaseResult,
    settings: Settings,
    expected: pa.Array,
    spark: Any,
    exclude: pa.Array | None = None,
    require_current: bool = True,
) -> lab.LakeCheck:
    """Lake and served-answer checks shared by the cases (the data root on a disk or in an
    object store)."""
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


def run_cli(settings: Settings, *argv: str, timeout_s: float = 300.0) -> tuple[int, str, str]:
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

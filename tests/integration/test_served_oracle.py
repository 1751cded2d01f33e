"""Served answers are the models' answers, at every moment the online store changes.

A real broker, `pulse stream` as a process, both online stores. At each moment below,
every customer's look-up (features, churn probability, expected value, value at risk,
segment, recommendations, versions) and both at-risk lists equal an independent
computation: the CURRENT models applied with Spark ML to ``compute_features`` over the
lake as of the store's stream clock (``pulse.oracle``), joined by customer id.

1. the seed's full snapshot (the stream's first start on a backfilled lake);
2. per-batch updates (snapshots off: only the touched customers were written);
3. a retrain that moves every CURRENT while the stream runs, and its lambda correction
   (the retrain's state taken at the next batch);
4. a SIGKILL during a replay and a restart on the checkpoint;
5. the final snapshot of a clean stop (SIGINT), read in-process and over HTTP
   (`pulse serve`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import pytest
from api_server import Server

from pulse.chaos import lab
from pulse.cli import main as pulse_main
from pulse.demo import _date_range, write_backfill
from pulse.oracle import served_equals_batch
from runtime.settings import Settings
from storage import registry

REPO = Path(__file__).resolve().parents[2]


def _retrain(spark, settings: Settings) -> dict[str, str]:  # type: ignore[no-untyped-def]
    from batch.params import ChurnParams, RecParams
    from batch.retrain import RetrainOptions, retrain

    opts = RetrainOptions(rec=RecParams(rank=4, max_iter=3), k_min=3, k_max=4, progress=False,
                          churn=ChurnParams(max_iter=5, max_depth=3))  # fmt: skip
    run = retrain(spark, settings, opts)
    for name, meta in run.items():  # the gate has its own tests: a tiny retrain is served here
        if registry.current_version(settings, name) != meta["version"]:
            registry.promote(settings, name, meta["version"])
    return {name: meta["version"] for name, meta in run.items()}


@pytest.fixture(scope="module")
def world(spark, kafka_settings, tmp_path_factory):  # type: ignore[no-untyped-def]
    """Generated data; a lake backfilled up to 25 days before its end, and a first retrain."""
    from producers.generator import generate

    root = tmp_path_factory.mktemp("oracle")
    gen = root / "gen"
    generate(gen, customers=250, articles=60, start=date(2020, 1, 1), days=170, seed=7,
             progress=False)  # fmt: skip
    first, last = _date_range(gen)
    split = last - timedelta(days=24)
    template = kafka_settings.model_copy(update={"data_root": root / "template"})
    backfill = write_backfill(gen, root / "backfill", before=split)
    assert pulse_main(["--data-root", str(template.data_root), "ingest",
                       f"synthetic:{backfill}"]) == 0  # fmt: skip
    v1 = _retrain(spark, template)
    return gen, split, last, template, v1


class Stream:
    """`pulse stream` as a process on one data root, topic and online store."""

    def __init__(self, settings: Settings, log: Path) -> None:
        self.settings = settings
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, seed: bool = False) -> None:
        env = os.environ | lab.settings_env(self.settings) | {
            "PULSE_SNAPSHOT_INTERVAL_SECONDS": "86400",  # only the seed's and a stop's
            "PULSE_TRIGGER_INTERVAL": "1 second",
            "PULSE_SPARK_DRIVER_MEMORY": "1g",
            "PULSE_SPARK_SHUFFLE_PARTITIONS": "2",
        }  # fmt: skip
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pulse.cli", "stream", *(["--seed-from-lake"] * seed)],
                env=env,
                cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, sig)
        self.proc.wait(timeout=120)

    def alive(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-3000:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.signal(signal.SIGINT)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)


def _meta(settings: Settings) -> dict:
    from serving.online import open_store

    try:
        store = open_store(settings, readonly=True)
    except Exception:
        return {}
    try:
        return store.meta()
    finally:
        store.close()


def _served_up_to_date(settings: Settings, stream: Stream, versions: dict | None = None) -> None:
    """Wait until the stream has read the whole topic, committed it, and written its last
    batch to the online store (with ``versions`` picked up, when given)."""

    def done() -> bool:
        stream.alive()
        end = lab.end_offsets(settings)
        planned = lab._planned(settings)
        meta = _meta(settings)
        return (
            lab.checkpoint_offsets(settings) >= end
            and _committed(settings) == planned
            and (planned == 0 and "clock_us" in meta or meta.get("last_batch") == planned - 1)
            and (
                versions is None
                or all(meta.get("versions", {}).get(k) == v for k, v in versions.items())
            )  # fmt: skip
        )

    lab.wait_until(done, 420, "the stream to serve everything produced", poll_s=1.0)


def _committed(settings: Settings) -> int:
    commits = settings.checkpoint_dir / "stream" / "commits"
    return len(list(commits.glob("[0-9]*"))) if commits.is_dir() else 0


def _produce(settings: Settings, gen: Path, start: date, end: date) -> None:
    flags = ["--data-root", str(settings.data_root), "--bootstrap", settings.kafka_bootstrap,
             "--topic", settings.topic_transactions]  # fmt: skip
    spec = f"synthetic:{gen}"
    assert pulse_main([*flags, "produce", spec, "--start", str(start), "--end", str(end)]) == 0


def _check(spark, settings: Settings, moment: str) -> None:  # type: ignore[no-untyped-def]
    verdict = served_equals_batch(spark, settings, top=15)
    assert verdict.equal, f"{moment}: {verdict.note()}\n" + "\n".join(verdict.differences[:15])
    assert verdict.scored > 100, f"{moment}: {verdict.note()}"


def _check_segments_and_history(spark, settings, api, v1, v2) -> None:  # type: ignore[no-untyped-def]
    """/segments against the registry's Parquet outputs and the oracle's rows, by customer;
    /customers/{id}/history against the lake's events, grouped here in pandas."""
    import pandas as pd

    from pulse.oracle import expected_rows
    from serving.read import clock_of
    from storage.lake import read_lake

    meta = _meta(settings)
    clock = clock_of(meta)
    assert clock is not None
    expected = expected_rows(spark, settings, clock, meta["versions"])

    seg = api.get("/segments")
    assert (seg["version"], seg["previous_version"]) == (v2["segments"], v1["segments"])
    now = pd.read_parquet(registry.output_path(settings, "segments", v2["segments"]))
    before = pd.read_parquet(registry.output_path(settings, "segments", v1["segments"]))
    served = {g["segment_name"]: g["customers"] for g in seg["segments"]}
    assert served == now["segment_name"].value_counts().to_dict()
    moved = before.merge(now, on="customer_id", suffixes=("_from", "_to"))
    counts = moved.groupby(["segment_name_from", "segment_name_to"]).size().to_dict()
    assert {(m["from"], m["to"]): m["customers"] for m in seg["migration"]} == counts
    assert seg["customers_in_both"] == len(moved)

    models = api.get("/models")
    assert {k: m["version"] for k, m in models.items()} == meta["versions"]
    assert models["churn"]["roc"] == registry.read_meta(settings, "churn", v2["churn"])["roc"]

    events = read_lake(spark, settings).select(
        "customer_id", "event_time", "quantity", "unit_price"
    ).toPandas()
    events["date"] = pd.to_datetime(events["event_time"], utc=True).dt.date
    window = events[(events["date"] > clock.date() - timedelta(days=90))
                    & (events["date"] <= clock.date())].copy()  # fmt: skip
    window["spend"] = window["quantity"] * window["unit_price"]
    window["bought"] = window["quantity"] > 0
    days = window.groupby(["customer_id", "date"]).agg(
        n_events=("spend", "size"), n_purchases=("bought", "sum"), spend=("spend", "sum")
    )
    for customer_id in sorted(expected):
        history = api.get(f"/customers/{customer_id}/history")
        mine = days.loc[customer_id] if customer_id in days.index.get_level_values(0) else None
        want = [] if mine is None else [
            (d.isoformat(), int(r.n_events), int(r.n_purchases), float(r.spend))
            for d, r in mine.sort_index().iterrows()
        ]  # fmt: skip
        got = [(d["date"], d["n_events"], d["n_purchases"], d["spend"]) for d in history["days"]]
        assert [g[:3] for g in got] == [w[:3] for w in want], customer_id
        assert [g[3] for g in got] == pytest.approx([w[3] for w in want], rel=1e-9), customer_id
        last_day = expected[customer_id]["last_purchase_date"]
        assert history["last_purchase_date"] == (last_day and last_day.isoformat())


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_served_equals_batch_at_every_moment(spark, world, topic, store, tmp_path, request) -> None:  # type: ignore[no-untyped-def]
    gen, split, last, template, v1 = world
    settings = template.model_copy(
        update={"data_root": tmp_path / "root", "topic_transactions": topic}
    )
    shutil.copytree(template.data_root, settings.data_root)
    if store == "redis":
        import redis

        url = request.getfixturevalue("redis_url").rsplit("/", 1)[0] + "/7"
        redis.Redis.from_url(url).flushdb()
        settings = settings.model_copy(update={"online_store": "redis", "redis_url": url})
    stream = Stream(settings, tmp_path / "stream.log")
    try:
        # 1. The seed's full snapshot: every customer written at once, models v1.
        stream.start(seed=True)
        _served_up_to_date(settings, stream, v1)
        _check(spark, settings, "after the seed's snapshot")

        # 2. Per-batch updates only: 9 days streamed, no snapshot since the seed.
        _produce(settings, gen, split, split + timedelta(days=8))
        _served_up_to_date(settings, stream)
        _check(spark, settings, "after per-batch updates")

        # 3. A retrain while the stream runs moves every CURRENT and writes its state;
        #    the next batch picks up the models and takes the state (lambda correction).
        v2 = _retrain(spark, settings)
        assert all(v2[k] != v1[k] for k in v1)
        _produce(settings, gen, split + timedelta(days=9), split + timedelta(days=12))
        _served_up_to_date(settings, stream, v2)
        assert "batch state" in stream.log.read_text() and "taken" in stream.log.read_text()
        _check(spark, settings, "after a retrain and the lambda correction")

        # 4. SIGKILL while a replay is being consumed, then a restart on the checkpoint.
        _produce(settings, gen, split + timedelta(days=13), split + timedelta(days=18))
        time.sleep(2)
        stream.signal(signal.SIGKILL)
        stream.start()
        _served_up_to_date(settings, stream)
        _check(spark, settings, "after a SIGKILL and a restart")

        # 5. The rest, then a clean stop: its final snapshot writes every customer again.
        #    `pulse serve` runs on the same store meanwhile.
        api = Server([], env=lab.settings_env(settings))
        try:
            _produce(settings, gen, split + timedelta(days=19), last)
            _served_up_to_date(settings, stream)
            # the stream has read everything: its last report's offsets are Kafka's end
            lab.wait_until(lambda: api.get("/health")["kafka_lag"] == 0, 60, "lag 0 in /health")
            stream.signal(signal.SIGINT)
            assert stream.proc is not None and stream.proc.returncode in (0, 130)
            _check(spark, settings, "after the final snapshot")

            # The same answers over HTTP, and the dashboard's other answers.
            verdict = served_equals_batch(spark, settings, top=15, api=api.get)
            assert verdict.equal, "over HTTP: " + "\n".join(verdict.differences[:15])
            _check_segments_and_history(spark, settings, api, v1, v2)
        finally:
            api.stop()
    finally:
        stream.stop()


def _shown(value: object) -> str:
    """A value as the dashboard prints it (app.js ``fmt``: `pulse view`'s rules)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1 else f"{value:,.2f}"
    return str(value)


@pytest.mark.timeout(900)
def test_the_dashboard_in_a_browser_shows_what_is_served(spark, world, topic, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Debian's chromium, driven by Playwright, on `pulse serve` while a stream runs: the
    clock advances on the page, and a clicked at-risk customer's values are the API's,
    which are the batch oracle's. The screenshot is kept under data/test-output/."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (`make setup` installs it)")
    from playwright.sync_api import expect, sync_playwright

    gen, split, last, template, v1 = world
    settings = template.model_copy(
        update={"data_root": tmp_path / "root", "topic_transactions": topic}
    )
    shutil.copytree(template.data_root, settings.data_root)
    stream = Stream(settings, tmp_path / "stream.log")
    api = None
    try:
        stream.start(seed=True)
        _served_up_to_date(settings, stream, v1)
        api = Server([], env=lab.settings_env(settings))
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{api.port}/")
            first = api.get("/health")["clock"]
            expect(page.locator("#clock")).to_have_text(first, timeout=30_000)

            # the stream moves: the page's clock follows without a reload
            _produce(settings, gen, split, split + timedelta(days=4))
            _served_up_to_date(settings, stream)
            now = api.get("/health")["clock"]
            assert now > first
            expect(page.locator("#clock")).to_have_text(now, timeout=30_000)
            expect(page.locator("#lag")).to_have_text("0", timeout=30_000)

            # the at-risk list is the API's, and the API's is the batch oracle's
            page.reload()
            rows = page.locator("#at-risk tbody tr")
            expect(rows).to_have_count(20, timeout=30_000)
            listed = api.get("/at-risk?n=20")["rows"]
            assert [rows.nth(i).get_attribute("data-customer") for i in range(20)] == [
                r["customer_id"] for r in listed
            ]  # fmt: skip
            verdict = served_equals_batch(spark, settings, top=20, api=api.get)
            assert verdict.equal, "\n".join(verdict.differences[:15])

            # a click shows that customer's live view, history and recommendations
            chosen = listed[2]["customer_id"]
            rows.nth(2).click()
            expect(page.locator("#customer")).to_have_attribute("data-customer", chosen)
            served = api.get(f"/customers/{chosen}")
            fields = page.locator("#customer-fields dd")
            shown = {fields.nth(i).get_attribute("data-field"): fields.nth(i).inner_text()
                     for i in range(fields.count())}  # fmt: skip
            versions = (served["segments_model_version"], served["churn_model_version"],
                        served["recs_model_version"])  # fmt: skip
            assert shown.pop("versions") == " / ".join(_shown(v) for v in versions)
            assert shown == {k: _shown(served[k]) for k in shown}
            assert {"churn_probability", "value_at_risk", "segment_name"} <= set(shown)
            history = api.get(f"/customers/{chosen}/history")
            bars = page.locator("#history rect")
            assert [(bars.nth(i).get_attribute("data-date"),
                     float(bars.nth(i).get_attribute("data-spend") or "nan"))
                    for i in range(bars.count())] == [
                (d["date"], d["spend"]) for d in history["days"]]  # fmt: skip
            recs = page.locator("#recs li")
            assert [recs.nth(i).inner_text() for i in range(recs.count())] == (
                served["recommendations"] or []
            )
            segments = page.locator("#segments tbody tr")
            assert segments.count() == len(api.get("/segments")["segments"]) > 0

            out = REPO / "data" / "test-output"
            out.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out / "dashboard.png"), full_page=True)
            print(f"dashboard screenshot: {out / 'dashboard.png'}")
            browser.close()
    finally:
        if api is not None:
            api.stop()
        stream.stop()

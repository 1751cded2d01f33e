"""`pulse produce`, `pulse view`, `pulse serve` and `pulse report` with the data root in an
object store (a SeaweedFS bucket), against the same commands on a local disk.

One world, built once for both data roots from the same generated shop (a few thousand
events):

- `pulse produce` into a topic per root; the bucket's run stops after ``--limit`` rows
  and is resumed from its position, which is an object in the bucket;
- a registry written alike on both: CURRENT versions of the three models with their
  ``meta.json``, ``scorer.json``, ``popular.json`` and Spark-style output folders (the
  numbers a retrain leaves; Spark writing them to a bucket is
  tests/spark/test_object_store_spark.py's);
- each root's topic served as `pulse stream` serves it, without Spark: the records typed
  by the stream's own check, folded into its per-customer store (in the data root) in
  micro-batches, each handed to the live view (``serving.live.LiveView``: it loads the
  CURRENT outputs from the registry into this machine's online store), then the
  scheduled snapshot (features and view, into the data root). The stream's Spark half
  in a bucket is tests/integration/test_stream_restart.py's.

Then every answer a user is served, on the command line and over HTTP, and the report,
must be the same from the bucket as from the disk, customer by customer (by id).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from api_server import Server
from test_producer import consume_all

from pulse.cli import main as pulse_main
from runtime.settings import Settings, load_settings
from schemas.transaction import decode
from storage import registry, snapshots
from storage.objects import read_parquet_file, write_atomically, write_parquet

CUSTOMERS, DAYS = 200, 300  # about 2,600 events
LIMIT = 1_000  # rows the bucket's first produce sends; the resumed run sends the rest
BATCHES = 4  # the stream's micro-batches
VERSIONS = {"segments": "seg-1", "churn": "churn-1", "recommendations": "recs-1"}
NAMES = {0: "Champions", 1: "Lost", 2: "Loyal"}
KAFKA_TS = datetime(2024, 1, 1, tzinfo=UTC)


@dataclass
class World:
    """The two data roots, what was produced and the customers."""

    local: Settings
    s3: Settings
    source: str  # the `pulse produce` SOURCE
    rows: int  # source rows (every one a valid event)
    ids: list[str]  # every customer, sorted
    held: list[str]  # the customers the registry's outputs hold
    popular: list[str]  # the popularity list, for the others
    produced: dict[str, str]  # run name -> its stdout


# --- running `pulse` -----------------------------------------------------------------------------


def env_of(s: Settings) -> dict[str, str]:
    """The ``PULSE_*`` variables a user would export for ``s``."""
    env = {
        "PULSE_DATA_ROOT": str(s.data_root),
        "PULSE_LOCAL_DIR": str(s.local_root),
        "PULSE_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
        "PULSE_TOPIC_TRANSACTIONS": s.topic_transactions,
    }
    if s.on_object_store:
        assert s.s3_endpoint and s.s3_access_key_id and s.s3_secret_access_key
        env |= {
            "PULSE_S3_ENDPOINT": s.s3_endpoint,
            "PULSE_S3_REGION": s.s3_region,
            "PULSE_S3_ACCESS_KEY_ID": s.s3_access_key_id.get_secret_value(),
            "PULSE_S3_SECRET_ACCESS_KEY": s.s3_secret_access_key.get_secret_value(),
        }
    return env


def pulse(s: Settings, *args: str) -> tuple[int, str, str]:
    """`pulse ARGS` in this process, configured by environment alone: (exit, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with (
        pytest.MonkeyPatch.context() as mp,
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        for name in [n for n in os.environ if n.startswith("PULSE_")]:
            mp.delenv(name)
        for name, value in env_of(s).items():
            mp.setenv(name, value)
        code = pulse_main(list(args))
    return code, out.getvalue(), err.getvalue()


def ok(s: Settings, *args: str) -> str:
    code, out, err = pulse(s, *args)
    assert code == 0, (args, out[-2000:], err[-2000:])
    return out


def one_line_error(s: Settings, *args: str) -> str:
    """Run a command that must fail: one line on stderr, a non-zero exit; the line."""
    code, _, err = pulse(s, *args)
    assert code != 0, args
    assert err.startswith("pulse: error: ") and err.strip().count("\n") == 0, err
    return err.strip()


def same(a: Any, b: Any) -> bool:
    """Equal as JSON (so NaN equals NaN, and a tuple its list)."""
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


# --- the world -----------------------------------------------------------------------------------


def new_topic(settings: Settings) -> str:
    from runtime.kafka_admin import create_topics

    name = f"t-{uuid.uuid4().hex[:10]}"
    create_topics(settings.model_copy(update={"topic_transactions": name}), log=lambda *_: None)
    return name


def write_output(s: Settings, table: str, version: str, rows: pa.Table) -> None:
    """An output folder as Spark leaves one: two part files and ``_SUCCESS``."""
    out = registry.output_path(s, table, version)
    half = rows.num_rows // 2
    write_parquet(rows.slice(0, half), out / "part-00000.parquet")
    write_parquet(rows.slice(half), out / "part-00001.parquet")
    write_atomically(out / "_SUCCESS", b"")


def write_registry(s: Settings, held: list[str], articles: list[str]) -> None:
    """The three models' CURRENT versions, the same numbers on every root. The outputs hold
    the customers ``held`` (the retrain's); the others get the segmentation's live
    assignment and the popularity list (the first 12 ``articles``)."""
    from scoring.btyd import BGNBD, GammaGamma
    from scoring.churn import ChurnScorer
    from scoring.segments import SegmentScorer

    seg, churn, recs = VERSIONS["segments"], VERSIONS["churn"], VERSIONS["recommendations"]
    gate = {"metric": "m", "value": 0.7, "baseline": 0.5, "reasons": [], "passed": True}
    window = {"events": 2000, "first_event_date": "2020-01-01", "cutoff_exclusive": "2020-09-01"}

    segmenter = SegmentScorer(seg, mean=[3.63, 0.98, 0.17], std=[1.10, 0.41, 0.16],
                              centers=[[-1.61, 2.22, 2.29], [0.53, -0.57, -0.45],
                                       [-0.72, 0.62, 0.30]], names=NAMES)  # fmt: skip
    registry.write_scorer(s, "segments", seg, segmenter.as_dict())
    write_output(s, "segments", seg, pa.table({
        "customer_id": held,
        "segment_id": pa.array([i % 3 for i in range(len(held))], pa.int32()),
        "segment_name": [NAMES[i % 3] for i in range(len(held))],
    }))  # fmt: skip
    profile = [
        {"segment_id": i, "segment_name": n, "customers": 30 + i, "recency_days": 9.0 + i,
         "frequency": 5.9 - i, "monetary": 0.7 - i / 10}
        for i, n in NAMES.items()
    ]  # fmt: skip
    registry.write_meta(s, "segments", seg, {
        "version": seg, "window": window, "params": {"k": 3}, "profile": profile,
        "metrics": {"silhouette": 0.615, "silhouette_by_k": {"3": 0.615, "4": 0.448}},
        "stability": {"previous_version": "seg-0", "customers_in_both": 90,
                      "adjusted_rand_index": 0.81, "same_segment_name_share": 0.9,
                      "migration": [{"from": a, "to": b, "customers": 10 + 3 * i + j}
                                    for i, a in enumerate(NAMES.values())
                                    for j, b in enumerate(NAMES.values())]},
        "gate": gate, "promoted": True, "output": str(registry.output_path(s, "segments", seg)),
    })  # fmt: skip

    scorer = ChurnScorer(
        churn, 30, BGNBD(r=0.484, alpha=35.87, a=0.189, b=3.317, loglik=-4.8, customers=237),
        GammaGamma(p=1.924, q=9.673, gamma=0.459, customers=99), "logistic",
        coefficients=[0.128, -1.765, 0.302, -0.970, -0.482, -0.516, 0.612, -2.216, 0.0],
        intercept=2.06,
    )  # fmt: skip
    registry.write_scorer(s, "churn", churn, scorer.as_dict())
    auc = {"stack": 0.74, "bgnbd": 0.71, "recency": 0.66, "gbt": 0.69}
    registry.write_meta(s, "churn", churn, {
        "version": churn, "params": {"horizon_days": 30},
        "window": window | {"train_cutoff": "2020-07-03", "eval_cutoff": "2020-08-02"},
        "rows": {"train": 156, "eval": 218, "eval_churn_rate": 0.725},
        "metrics": {n: {"auc_roc": a, "pr_auc": a + 0.1, "brier": 1 - a} for n, a in auc.items()},
        "roc": {n: {"fpr": [0.0, 0.4, 1.0], "tpr": [0.0, a, 1.0]} for n, a in auc.items()},
        "reliability": {n: {"predicted": [0.2, 0.7], "observed": [0.25, a], "customers": [9, 12]}
                        for n, a in auc.items()},
        "stack": {"kind": "logistic", "selection_auc": {"logistic": 0.74, "gbt": 0.72},
                  "weights": {"log_recency": -0.28, "log_frequency": -7.03, "log_spend_90d": 15.9}},
        "value": {"horizon_days": 30, "customers": 237, "expected_spend_total": 41.2,
                  "value_at_risk_total": 11.9,
                  "output": str(registry.output_path(s, "churn_scores", churn)),
                  "eval": {"expected_spend_total": 40.0, "actual_spend_total": 38.5,
                           "pearson_expected_vs_actual": 0.61, "top_decile_share_of_actual": 0.34}},
        "btyd": {"2020-09-01": {"bgnbd": {"r": 0.484, "alpha": 35.87, "a": 0.189, "b": 3.317,
                                          "customers": 237},
                                "gamma_gamma": {"p": 1.924, "q": 9.673, "gamma": 0.459,
                                                "customers": 99}}},
        "gate": gate | {"metric": "auc_roc", "value": 0.74}, "promoted": True,
        "output": str(registry.output_path(s, "churn_scores", churn)),
    })  # fmt: skip

    write_output(s, "recommendations", recs, pa.table({
        "customer_id": [c for c in held for _ in range(12)],
        "rank": pa.array([r for _ in held for r in range(1, 13)], pa.int32()),
        "article_id": [articles[(i * 5 + r * 7) % len(articles)]
                       for i, _ in enumerate(held) for r in range(12)],
    }))  # fmt: skip
    model = registry.model_dir(s, "recommendations", recs)
    write_atomically(model / registry.POPULAR_FILE,
                     json.dumps({"articles": articles[:12]}).encode())  # fmt: skip
    m = {"map@12": 0.18, "precision@12": 0.1, "recall@12": 0.33, "ndcg@12": 0.26,
         "coverage": 0.98, "customers": 21, "revenue@12": 1.01}  # fmt: skip
    registry.write_meta(s, "recommendations", recs, {
        "version": recs, "served": "blend", "params": {"rank": 4, "max_iter": 3, "alpha": 10.0},
        "window": window | {"train_end": "2020-08-25", "holdout": ["2020-08-25", "2020-09-01"]},
        "metrics": {"popularity": m | {"map@12": 0.12, "revenue@12": 0.9}, "blend": m},
        "gate": gate | {"metric": "map@12", "value": 0.18}, "promoted": True,
        "output": str(registry.output_path(s, "recommendations", recs)),
    })  # fmt: skip
    for name, version in VERSIONS.items():
        registry.promote(s, name, version)


def serve_topic(s: Settings) -> None:
    """What `pulse stream` does with the root's topic and its live view, without Spark."""
    from serving.live import LiveView
    from storage.columnar_store import EVENT_COLUMNS, CustomerStateStore
    from streaming.contract_canonical import split_canonical
    from streaming.output import publish_snapshot

    records = consume_all(s.kafka_bootstrap, s.topic_transactions)
    n = len(records)
    kafka = pa.table({
        "value": pa.array([r[3] for r in records], pa.binary()),
        "topic": pa.array([s.topic_transactions] * n, pa.string()),
        "partition": pa.array([r[0] for r in records], pa.int32()),
        "offset": pa.array([r[1] for r in records], pa.int64()),
        "timestamp": pa.array([KAFKA_TS] * n, pa.timestamp("us", tz="UTC")),
    })  # fmt: skip
    typed, others = split_canonical(kafka)  # the stream's contract check, on Arrow
    assert len(others) == 0 and typed["reason"].null_count == n
    events = typed.sort_by([("event_time", "ascending"), ("event_id", "ascending")])
    events = events.select(list(EVENT_COLUMNS))
    state = CustomerStateStore(s.state_dir / "customers", s.allowed_lateness_days)
    live = LiveView(s, log=lambda _: None)
    try:
        step = -(-n // BATCHES)
        for batch_id, start in enumerate(range(0, n, step)):
            live.batch(state, state.apply_batch(batch_id, events.slice(start, step)))
        live.flush()
        assert publish_snapshot(s, state, live) is not None  # features and view snapshots
    finally:
        live.close()


@pytest.fixture(scope="module")
def world(kafka_settings: Settings, s3_endpoint, tmp_path_factory) -> World:  # type: ignore[no-untyped-def]
    from producers.adapters import open_source
    from producers.generator import generate

    root = tmp_path_factory.mktemp("object-store-commands")
    gen = root / "gen"
    generate(gen, customers=CUSTOMERS, articles=60, start=date(2020, 1, 1), days=DAYS, seed=11,
             progress=False)  # fmt: skip
    source = f"synthetic:{gen}"
    table = pa.concat_tables(open_source(source).iter_batches())
    ids = sorted(set(table["customer_id"].to_pylist()))
    articles = sorted(set(table["article_id"].to_pylist()))

    kafka = {"kafka_bootstrap": kafka_settings.kafka_bootstrap}
    local = load_settings(data_root=root / "local", topic_transactions=new_topic(kafka_settings),
                          **kafka)  # fmt: skip
    s3 = load_settings(**s3_endpoint.settings(f"cmds-{uuid.uuid4().hex[:8]}"),
                       local_dir=root / "s3-machine",
                       topic_transactions=new_topic(kafka_settings), **kafka)  # fmt: skip
    produced = {
        "s3 first": ok(s3, "produce", source, "--limit", str(LIMIT)),
        "s3 resumed": ok(s3, "produce", source, "--resume"),
        "s3 resumed again": ok(s3, "produce", source, "--resume"),
        "local": ok(local, "produce", source),
    }
    held = ids[: len(ids) // 2]
    for s in (local, s3):
        write_registry(s, held, articles)
        serve_topic(s)
    return World(local, s3, source, table.num_rows, ids, held, articles[:12], produced)


# --- the tests -----------------------------------------------------------------------------------


def test_produce_resumes_from_its_position_in_the_bucket(world: World) -> None:
    """The first run sends ``LIMIT`` rows, the resumed one only the rest, a third nothing;
    the bucket's topic then holds exactly what the local run sent, event by event."""
    total, rest = world.rows, world.rows - LIMIT
    assert total > 2 * LIMIT
    assert f"sent {LIMIT:,} (good {LIMIT:,}, bad 0)\n" in world.produced["s3 first"]
    assert (f"sent {rest:,} (good {rest:,}, bad 0), skipped {LIMIT:,} already delivered "
            "(resume)") in world.produced["s3 resumed"]  # fmt: skip
    assert (f"sent 0 (good 0, bad 0), skipped {total:,} already delivered (resume)"
            in world.produced["s3 resumed again"])  # fmt: skip
    assert f"sent {total:,} (good {total:,}, bad 0)\n" in world.produced["local"]

    positions = list((world.s3.data_root / "producer").iterdir())
    assert [p.suffix for p in positions] == [".json"]
    assert json.loads(positions[0].read_text())["last_confirmed_row"] == total - 1
    assert not any(world.s3.local_root.rglob("*.json"))  # the position is in the bucket only

    def events(s: Settings) -> dict[str, dict[str, Any]]:
        records = consume_all(s.kafka_bootstrap, s.topic_transactions)
        out = {}
        for _, _, key, value in records:
            event = decode(value)
            assert key.decode() == event["customer_id"]
            event.pop("produced_at")  # the producer's clock at send
            out[event["event_id"]] = event
        assert len(out) == len(records) == total  # each event once
        return out

    assert events(world.s3) == events(world.local)


def test_view_looks_up_every_customer_and_the_at_risk_list_as_on_a_disk(world: World) -> None:
    """`pulse view ID --json` for every customer, and `--at-risk N` (by value, by
    probability, and as a table), from the bucket's root equal the local root's."""
    scored = 0
    for cid in world.ids:
        rows = {name: json.loads(ok(s, "view", cid, "--json"))
                for name, s in (("local", world.local), ("s3", world.s3))}  # fmt: skip
        assert rows["s3"]["customer_id"] == cid
        assert same(rows["s3"], rows["local"]), cid
        row = rows["s3"]
        scored += row["churn_probability"] is not None
        assert row["churn_model_version"] in (VERSIONS["churn"], None)
        if cid in world.held:  # the outputs in the bucket's registry
            assert row["segment_name"] == NAMES[world.held.index(cid) % 3]
            assert len(row["recommendations"]) == 12 and row["recommendations"] != world.popular
        else:  # the live assignment and the popularity list
            assert row["segment_name"] in NAMES.values()
            assert row["recommendations"] == world.popular
    assert scored > len(world.ids) / 2

    for flags in (["--at-risk", "25"], ["--at-risk", "25", "--by-probability"]):
        lists = {name: json.loads(ok(s, "view", *flags, "--json"))
                 for name, s in (("local", world.local), ("s3", world.s3))}  # fmt: skip
        assert len(lists["s3"]) == 25
        by_id = {name: {r["customer_id"]: r for r in rows} for name, rows in lists.items()}
        assert by_id["s3"].keys() == by_id["local"].keys()
        for cid, row in by_id["s3"].items():
            assert same(row, by_id["local"][cid]), cid
        # and ranked alike
        assert [r["customer_id"] for r in lists["s3"]] == [r["customer_id"] for r in lists["local"]]
    assert ok(world.s3, "view", "--at-risk", "10") == ok(world.local, "view", "--at-risk", "10")


def test_the_published_view_and_features_equal_a_local_runs(world: World) -> None:
    """The snapshots the live view and the stream publish into the bucket (Parquet a user
    reads with pandas or DuckDB), customer by customer."""
    for base in ("serving_dir", "features_dir"):
        tables = {}
        for name, s in (("local", world.local), ("s3", world.s3)):
            published = snapshots.current(getattr(s, base))
            assert published is not None, (name, base)
            part = published / "part-00000.parquet"  # not its folder's name as a column
            tables[name] = read_parquet_file(part, partitioning=None).to_pylist()
        rows = {name: {r["customer_id"]: r for r in t} for name, t in tables.items()}
        assert sorted(rows["s3"]) == world.ids
        for cid, row in rows["s3"].items():
            differ = {k: (v, rows["local"][cid].get(k)) for k, v in row.items()
                      if not same(v, rows["local"][cid].get(k))}  # fmt: skip
            assert not differ, (base, cid, differ)
    assert str(snapshots.current(world.s3.serving_dir)).startswith("s3://")


def test_models_stay_served_while_the_registry_is_unreadable(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the live view serves (``ModelCache``, loaded from the bucket) when the registry
    cannot be read for a moment: the versions it holds, and a load that failed is tried
    again at the next call, never kept as "no scorer" until the next retrain."""
    from serving.view import ModelCache

    def unreachable(*_: Any, **__: Any) -> Any:
        raise OSError("the object store does not answer")

    cache = ModelCache()
    before = cache.current(world.s3)
    assert before.versions() == VERSIONS and before.churn is not None
    with monkeypatch.context() as outage:
        outage.setattr(registry, "current_version", unreachable)
        during = cache.current(world.s3)
        assert during == before and cache.loaded_now == []
        assert ModelCache().current(world.s3).versions() == dict.fromkeys(VERSIONS)

    fresh = ModelCache()
    with monkeypatch.context() as outage:  # CURRENT answers, a version's scorer does not
        outage.setattr(registry, "read_scorer", unreachable)
        partly = fresh.current(world.s3)
        assert fresh.loaded_now == ["recommendations"] and partly.churn is None
    after = fresh.current(world.s3)
    assert fresh.loaded_now == ["segments", "churn"] and after == before


def _page(server: Server, path: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=60) as response:
        return response.status, response.read()


def test_serve_answers_every_customer_and_the_dashboard_as_on_a_disk(world: World) -> None:
    """`pulse serve` on each root: every customer's row and history, a batch look-up, the
    at-risk lists, segments, models and health; and the dashboard page. Then with two
    worker processes, the bucket given by the command line."""
    servers = {}
    try:
        for name, s in (("local", world.local), ("s3", world.s3)):
            servers[name] = Server([], env=env_of(s))
        got: dict[str, dict[str, Any]] = {name: {} for name in servers}
        for name, server in servers.items():
            for cid in world.ids:
                got[name][f"row {cid}"] = server.get(f"/customers/{cid}")
                got[name][f"history {cid}"] = server.get(f"/customers/{cid}/history")
            status, body = server.call("POST", "/customers", {"ids": [*world.ids, "nobody"]})
            assert status == 200 and body["unknown"] == ["nobody"]
            got[name]["batch"] = {r["customer_id"]: r for r in body["customers"]}
            for order in ("value", "probability"):
                rows = server.get(f"/at-risk?n=30&order={order}")["rows"]
                got[name][f"at-risk {order}"] = {r["customer_id"]: r for r in rows}
                got[name][f"ranking {order}"] = [r["customer_id"] for r in rows]
            got[name]["segments"] = server.get("/segments")
            got[name]["models"] = server.get("/models")
            health = server.get("/health")
            got[name]["health"] = {k: health[k] for k in ("ok", "clock", "versions")}
            got[name]["page"] = [_page(server, p) for p in ("/", "/static/app.js")]  # bytes
            assert server.call("GET", "/customers/nobody")[0] == 404
        s3, local = got["s3"], got["local"]
        assert s3.keys() == local.keys()
        for key in s3:
            assert s3[key] == local[key] if key == "page" else same(s3[key], local[key]), key
        for cid in world.ids:  # the batch look-up is the single one, by id (to the last bits:
            # NumPy sums a vector of customers in another order than one)
            one, batched = s3[f"row {cid}"], s3["batch"][cid]
            assert batched.keys() == one.keys(), cid
            for key, value in one.items():
                if isinstance(value, float):
                    assert batched[key] == pytest.approx(value, rel=1e-12), (cid, key)
                else:
                    assert batched[key] == value, (cid, key)
        assert len(s3["at-risk value"]) == 30 and s3["health"]["ok"] is True
        assert s3["models"]["churn"]["metrics"]["stack"]["auc_roc"] == 0.74  # from the bucket
        assert s3["segments"]["previous_version"] == "seg-0"
        assert all(status == 200 and len(page) > 500 for status, page in s3["page"])

        # Two worker processes, the bucket named by --data-root alone: each worker reads
        # its settings from the environment, which `pulse serve` gives the flag's root
        env = env_of(world.s3) | {"PULSE_DATA_ROOT": str(world.local.data_root / "elsewhere")}
        servers["workers"] = Server(["--data-root", str(world.s3.data_root)], env=env,
                                    serve=("--workers", "2"))  # fmt: skip
        for _ in range(4):  # requests land on either worker
            assert same(servers["workers"].get("/models"), s3["models"])
            assert same(servers["workers"].get("/segments"), s3["segments"])
        for cid in world.ids[:20]:
            assert same(servers["workers"].get(f"/customers/{cid}"), s3[f"row {cid}"]), cid
    finally:
        for server in servers.values():
            server.stop()


def test_report_is_written_into_the_bucket_as_on_a_disk(world: World) -> None:
    """`pulse report` writes report.md and its six plots under data_root/reports: in the
    bucket the same files, byte for byte, as on a disk, and nothing on this machine."""
    written = {}
    for name, s in (("local", world.local), ("s3", world.s3)):
        out = ok(s, "report")
        reports = s.data_root / "reports"
        assert out == f"report written to {reports / 'report.md'}\n"
        written[name] = {p.name: p.read_bytes() for p in reports.iterdir()}
    assert str(world.s3.data_root).startswith("s3://")
    assert sorted(written["s3"]) == sorted(written["local"]) == [
        "churn_importance.png", "churn_reliability.png", "churn_roc.png",
        "recommendations.png", "report.md", "segments.png", "segments_migration.png",
    ]  # fmt: skip
    for file, data in written["s3"].items():
        assert data == written["local"][file], file
    text = written["s3"]["report.md"].decode()
    assert "(table `churn_scores`" in text and "| blend (served) | 0.1800 |" in text
    assert not (world.s3.local_root / "reports").exists()


def test_bad_input_on_the_bucket_is_one_line(world: World, tmp_path: Path) -> None:
    """An unknown customer, no online store on this machine, an empty registry, a damaged
    resume position: each one line and a non-zero exit."""
    assert "unknown customer 'nobody'" in one_line_error(world.s3, "view", "nobody")
    elsewhere = world.s3.model_copy(update={"local_dir": tmp_path / "another-machine"})
    assert "PULSE_LOCAL_DIR" in one_line_error(elsewhere, "view", world.ids[0])
    fresh = load_settings(**store_of(world.s3), data_root=f"{world.s3.data_root}-empty",
                          local_dir=tmp_path / "m", kafka_bootstrap=world.s3.kafka_bootstrap,
                          topic_transactions=world.s3.topic_transactions)  # fmt: skip
    assert "run `pulse retrain` first" in one_line_error(fresh, "report")
    # the same replay's position (source and topic) on the empty prefix, damaged
    position = next(iter((world.s3.data_root / "producer").iterdir()))
    (fresh.data_root / "producer" / position.name).write_text("{not json")
    assert "cannot read the resume position" in one_line_error(
        fresh, "produce", world.source, "--resume"
    )


def store_of(s: Settings) -> dict[str, str]:
    """The settings of ``s``'s object store but its data root."""
    assert s.s3_endpoint and s.s3_access_key_id and s.s3_secret_access_key
    return {
        "s3_endpoint": s.s3_endpoint,
        "s3_region": s.s3_region,
        "s3_access_key_id": s.s3_access_key_id.get_secret_value(),
        "s3_secret_access_key": s.s3_secret_access_key.get_secret_value(),
    }

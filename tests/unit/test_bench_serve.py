"""`pulse bench serve` on a small store: the JSON's shape, and the check of the served
answers (what makes the figures mean anything) failing on a wrong answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pulse.bench.serve_http import bench_serve, check_body, verify
from pulse.bench.view import fill
from runtime.errors import PulseError
from runtime.settings import Settings
from serving import read

KEYS = {"customers", "store", "clients", "requests_per_s", "p50_ms", "p99_ms", "store_get_p99_ms",
        "goal", "goal_met"}  # fmt: skip


def test_bench_serve_json(base_settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    result = bench_serve(base_settings, customers=2_000, stores=("sqlite",), clients=(1, 2),
                         seconds=2.0, as_json=True, warmup_s=0.5)  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    assert printed == result
    assert [(r["store"], r["clients"]) for r in result["runs"]] == [("sqlite", 1), ("sqlite", 2)]
    for r in result["runs"]:
        assert KEYS <= r.keys()
        assert r["customers"] == 2_000
        assert r["requests_per_s"] > 0 and r["requests"] > 0
        assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["max_ms"]
        assert 0 < r["store_get_p99_ms"] and r["checked_bodies"] > 0
    assert result["runs"][0]["goal"] == "p99 <= 5 ms"
    assert result["runs"][0]["goal_met"] in (True, False)
    assert result["runs"][1]["goal"] is None and result["runs"][1]["goal_met"] is None


def test_a_wrong_answer_fails_the_check(base_settings: Settings, tmp_path: Path) -> None:
    local = base_settings.model_copy(update={"data_root": tmp_path, "online_store": "sqlite"})
    ids, _ = fill(local, 50)
    rows = {c: read.jsonable(read.lookup(local, c, with_value=True)) for c in ids[:3]}
    bodies = [(c, json.dumps(row).encode()) for c, row in rows.items()]
    assert verify(local, bodies) == 3  # the right answers pass

    a, b = ids[0], ids[1]
    wrong = dict(rows[a], churn_probability=rows[a]["churn_probability"] * (1 + 1e-6))
    with pytest.raises(PulseError, match="churn_probability"):
        verify(local, [(a, json.dumps(wrong).encode())])
    with pytest.raises(PulseError, match="differs"):
        verify(local, [(a, bodies[1][1])])  # another customer's answer
    with pytest.raises(PulseError, match="not JSON"):
        verify(local, [(b, b"<html>")])

    row = {"x": 0.25, "n": 3, "ok": True, "recs": ["a", "b"], "t": "2020-09-22", "none": None}
    check_body(row, json.loads(json.dumps(row)))
    check_body(row, row | {"x": 0.25 * (1 + 1e-12)})  # within 1e-9 relative
    for tampered in (row | {"x": 0.2500001}, row | {"n": 4}, row | {"ok": False},
                     row | {"recs": ["a", "c"]}, row | {"recs": ["a"]}, row | {"none": 0},
                     row | {"extra": 1}, {k: v for k, v in row.items() if k != "t"},
                     row | {"n": True}):  # fmt: skip
        with pytest.raises(PulseError):
            check_body(row, tampered)

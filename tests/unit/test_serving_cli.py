"""`pulse view` on a hand-written snapshot, and the demo's helpers (no JVM)."""

from __future__ import annotations

import json
import math
import subprocess
import time
from datetime import date

import pytest

from pulse.cli import main
from pulse.demo import Children, write_backfill

SEP22 = 18527  # 2020-09-22 as a day number (days since 1970-01-01)
US_PER_DAY = 86_400_000_000


def churn_scorer():
    """A logistic stack reading log recency only: P(churn) = sigmoid(3 ln(1 + recency) - 6)."""
    from scoring.btyd import BGNBD, GammaGamma
    from scoring.churn import STACK_FEATURES, ChurnScorer

    coefficients = [0.0] * len(STACK_FEATURES)
    coefficients[STACK_FEATURES.index("log_recency")] = 3.0
    return ChurnScorer(
        "c1", 30, BGNBD(r=0.5, alpha=10.0, a=0.7, b=2.0), GammaGamma(p=2.0, q=3.0, gamma=5.0),
        "logistic", coefficients=coefficients, intercept=-6.0,
    )  # fmt: skip


def by_hand(recency, tenure, frequency, monetary):
    """(churn probability, expected value) without the scorer: the formula, and BG/NBD's
    E[X(H)] through scipy's 2F1 (not the scorer's series) times Gamma-Gamma's mean spend."""
    import numpy as np

    from scoring import btyd

    m = churn_scorer()
    p = 1.0 / (1.0 + math.exp(-(3.0 * math.log(1.0 + recency) - 6.0)))
    x, t_x, T = btyd.summary(np.array([frequency]), np.array([recency]), np.array([tenure]))
    purchases = btyd.expected_purchases(m.bgnbd, x, t_x, T, 30.0)[0]
    spend = btyd.expected_spend_per_purchase(
        m.gamma_gamma, np.array([frequency]), np.array([monetary / frequency])
    )[0]
    return p, purchases * spend


@pytest.fixture
def view_root(tmp_path):
    """An online store with three customers, written by hand (no JVM)."""
    from serving.online import SqliteStore

    write_view(SqliteStore(tmp_path / "online" / "customers.db"))
    return tmp_path


def write_view(store) -> None:  # type: ignore[no-untyped-def]
    """The three customers, their outputs and the meta, into ``store`` (then closed)."""
    clock = SEP22 * US_PER_DAY

    def rec(cid, first, last, freq, n, monetary, history):
        return (cid, first, last, freq, n, monetary, 0, n, (last or SEP22) * US_PER_DAY, history)

    store.write_records(
        [
            # a bought 9 days, the last yesterday (5 events for 1.5 on Sep 21)
            rec("a", SEP22 - 300, SEP22 - 1, 9, 20, 150.0, f"[[{SEP22 - 1},5,5,1.5,0,5]]"),
            rec("b", SEP22 - 200, SEP22 - 80, 2, 2, 0.2, "[]"),  # quiet for 80 days
            rec("c", None, None, 0, 1, -0.4, "[]"),  # a return only: no churn score
        ]
    )
    store.replace_output("recommendations", "r1", [("a", json.dumps(["0001", "0002"]))])
    store.replace_output(
        "segments", "s1", [("a", json.dumps({"segment_id": 0, "segment_name": "Champions"}))]
    )
    store.set_meta(
        {
            "clock_us": clock,
            "versions": {"recommendations": "r1", "segments": "s1", "churn": "c1"},
            "popular": [],
            "scorers": {"churn": churn_scorer().as_dict(), "segments": None},
        }
    )
    store.close()


def test_view_customer_readable_and_json(view_root, capsys):
    assert main(["--data-root", str(view_root), "view", "a"]) == 0
    out = capsys.readouterr().out
    assert "customer a" in out and "Champions" in out and "0001, 0002" in out
    assert "2020-09-21" in out  # the last purchase day, from the stored state
    assert main(["--data-root", str(view_root), "view", "b", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    p, value = by_hand(recency=80, tenure=200, frequency=2, monetary=0.2)
    assert (row["customer_id"], row["recency_days"]) == ("b", 80)
    assert row["churn_probability"] == pytest.approx(p, rel=1e-12)
    assert row["expected_value"] == pytest.approx(value, rel=1e-9)
    assert row["value_at_risk"] == pytest.approx(p * value, rel=1e-9)


def test_view_unknown_customer_is_one_clear_error(view_root, capsys):
    assert main(["--data-root", str(view_root), "view", "nobody"]) != 0
    err = capsys.readouterr().err
    assert err.startswith("pulse: error: unknown customer 'nobody'")


def test_view_without_store_is_one_clear_error(tmp_path, capsys):
    assert main(["--data-root", str(tmp_path), "view", "a"]) != 0
    assert "no online store at" in capsys.readouterr().err


def test_at_risk_orders_by_value_at_risk_or_by_probability(view_root, capsys):
    root = ["--data-root", str(view_root), "view", "--at-risk", "5"]
    pa_, va = by_hand(recency=1, tenure=300, frequency=9, monetary=150.0)
    pb, vb = by_hand(recency=80, tenure=200, frequency=2, monetary=0.2)
    assert pa_ * va > pb * vb and pb > pa_  # a has more at risk, b is likelier to churn
    assert main([*root, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["customer_id"] for r in rows] == ["a", "b"]  # c has no churn score
    assert [r["value_at_risk"] for r in rows] == pytest.approx([pa_ * va, pb * vb], rel=1e-9)
    assert main([*root, "--by-probability", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["customer_id"] for r in rows] == ["b", "a"]
    assert [r["churn_probability"] for r in rows] == pytest.approx([pb, pa_], rel=1e-12)
    assert main(root) == 0
    out = capsys.readouterr().out
    assert out.startswith("ranked by value at risk") and f"{pa_ * va:,.2f}" in out
    assert main(["--data-root", str(view_root), "view", "a"]) == 0
    assert f"{va:,.2f}" in capsys.readouterr().out  # the expected value, from the same scorer


def test_write_backfill_keeps_rows_before_split_verbatim(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    lines = [
        "t_dat,customer_id,article_id,price,sales_channel_id",
        "2020-01-01,c1,0100000001,0.0101694915254237,2",
        "2020-01-01,c1,0100000001,0.0101694915254237,2",
        "2020-01-02,c2,0200000002,0.02,1",
        "2020-01-03,c1,0300000003,0.03,2",
    ]
    (src / "transactions_train.csv").write_text("\n".join(lines) + "\n")
    (src / "customers.csv").write_text("customer_id,age\nc1,30\n")
    out = write_backfill(src, tmp_path / "out", before=date(2020, 1, 3))
    assert (out / "transactions_train.csv").read_text().splitlines() == lines[:4]
    assert (out / "customers.csv").read_text() == "customer_id,age\nc1,30\n"


def test_children_stop_ends_the_whole_process_group(tmp_path):
    children = Children(tmp_path / "logs")
    # A shell with a grandchild that ignores SIGINT: only the group kill reaches it.
    proc = children.start("sleepy", ["sh", "-c", "trap '' INT; sleep 300 & wait"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(_group(proc.pid)) < 2:
        time.sleep(0.1)
    assert len(_group(proc.pid)) >= 2
    children.stop("sleepy", grace=1.0)
    assert proc.poll() is not None
    assert _group(proc.pid) == []


def _group(pgid):
    out = subprocess.run(["ps", "-e", "-o", "pid=,pgid=,stat="], capture_output=True, text=True)
    return [
        line
        for line in out.stdout.splitlines()
        if int(line.split()[1]) == pgid and not line.split()[2].startswith("Z")
    ]

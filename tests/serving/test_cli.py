"""`pulse view` on a hand-written snapshot, and the demo's helpers (no JVM)."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import date

import pytest

from pulse.cli import main
from pulse.demo import Children, write_backfill

pytestmark = pytest.mark.unit


SEP22 = 18527  # 2020-09-22 as a day number (days since 1970-01-01)
US_PER_DAY = 86_400_000_000


@pytest.fixture
def view_root(tmp_path):
    """An online store with three customers, written by hand (no JVM)."""
    from serving.online import SqliteStore

    store = SqliteStore(tmp_path / "online" / "customers.db")
    clock = SEP22 * US_PER_DAY

    def rec(cid, first, last, freq, n, monetary, history, p, seg, value=None):
        return (cid, first, last, freq, n, monetary, 0, n, last * US_PER_DAY, history,
                p, None if p is None else clock, "v1", seg and 0, seg, seg and "s1",
                value)  # fmt: skip

    store.write_records(
        [
            # a bought 9 days, the last yesterday (5 events for 1.5 on Sep 21)
            rec(
                "a",
                SEP22 - 300,
                SEP22 - 1,
                9,
                20,
                1.5,
                f"[[{SEP22 - 1},5,5,1.5,0,5]]",
                0.1,
                "Champions",
                500.0,  # value at risk 0.1 x 500 = 50
            ),
            # value at risk 0.9 x 10 = 9: likelier to churn, less to lose
            rec("b", SEP22 - 200, SEP22 - 80, 2, 2, 0.2, "[]", 0.9, "Hibernating", 10.0),
            rec("c", SEP22 - 90, SEP22 - 40, 3, 3, 0.4, "[]", None, None),
        ]  # fmt: skip
    )
    store.replace_output("recommendations", "r1", [("a", json.dumps(["0001", "0002"]))])
    store.set_meta({"clock_us": clock, "versions": {"recommendations": "r1"}, "popular": []})
    store.close()
    return tmp_path


def test_view_customer_readable_and_json(view_root, capsys):
    assert main(["--data-root", str(view_root), "view", "a"]) == 0
    out = capsys.readouterr().out
    assert "customer a" in out and "Champions" in out and "0001, 0002" in out
    assert "2020-09-21" in out  # the last purchase day, from the stored state
    assert main(["--data-root", str(view_root), "view", "b", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert (row["customer_id"], row["churn_probability"], row["recency_days"]) == ("b", 0.9, 80)


def test_view_unknown_customer_is_one_clear_error(view_root, capsys):
    assert main(["--data-root", str(view_root), "view", "nobody"]) != 0
    err = capsys.readouterr().err
    assert err.startswith("pulse: error: unknown customer 'nobody'")


def test_view_without_store_is_one_clear_error(tmp_path, capsys):
    assert main(["--data-root", str(tmp_path), "view", "a"]) != 0
    assert "no online store at" in capsys.readouterr().err


def test_at_risk_orders_by_value_at_risk_or_by_probability(view_root, capsys):
    root = ["--data-root", str(view_root), "view", "--at-risk", "5"]
    assert main([*root, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    # a: 0.1 x 500 = 50 before b: 0.9 x 10 = 9; c has no churn score
    assert [(r["customer_id"], r["value_at_risk"]) for r in rows] == [("a", 50.0), ("b", 9.0)]
    assert main([*root, "--by-probability", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["customer_id"], r["churn_probability"]) for r in rows] == [("b", 0.9), ("a", 0.1)]
    assert main(root) == 0
    out = capsys.readouterr().out
    assert out.startswith("ranked by value at risk") and "50.00" in out
    assert main(["--data-root", str(view_root), "view", "a"]) == 0
    assert "500.00" in capsys.readouterr().out  # the expected value, from the same record


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

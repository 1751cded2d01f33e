"""`pulse serve` as a process on a hand-written online store: each answer against a
computation by hand, the same rows as `pulse view --json`, and every bad request.

The store is test_cli's (three customers, a churn scorer that reads log recency only);
``by_hand`` computes the churn probability from its formula and the expected value with
scipy's 2F1, not with the scorer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_server import Server, free_port
from test_serving_cli import SEP22, US_PER_DAY, by_hand, view_root, write_view  # noqa: F401 - fixture

from pulse.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def server(view_root: Path) -> Iterator[Server]:  # noqa: F811
    s = Server(["--data-root", str(view_root)])
    yield s
    s.stop()


def _cli_json(root: Path, *args: str, capsys) -> object:  # type: ignore[no-untyped-def]
    assert main(["--data-root", str(root), "view", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_answers_equal_the_computation_by_hand_and_pulse_view(server, view_root, capsys) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    status, b = server.call("GET", "/customers/b")
    assert status == 200 and isinstance(b, dict)
    p, value = by_hand(recency=80, tenure=200, frequency=2, monetary=0.2)
    assert (b["customer_id"], b["recency_days"], b["as_of"]) == (
        "b",
        80,
        "2020-09-22T00:00:00+00:00",
    )
    assert b["churn_probability"] == pytest.approx(p, rel=1e-12)
    assert b["expected_value"] == pytest.approx(value, rel=1e-9)
    assert b["value_at_risk"] == pytest.approx(p * value, rel=1e-9)
    assert b == _cli_json(view_root, "b", capsys=capsys)  # the same fields and values

    status, batch = server.call("POST", "/customers", {"ids": ["c", "a", "nobody", "b"]})
    assert status == 200 and isinstance(batch, dict)
    assert batch["unknown"] == ["nobody"]
    rows = {r["customer_id"]: r for r in batch["customers"]}
    assert set(rows) == {"a", "b", "c"} and rows["b"] == b
    for cid in ("a", "c"):
        assert rows[cid] == server.call("GET", f"/customers/{cid}")[1]
    assert (
        rows["a"]["recommendations"] == ["0001", "0002"]
        and rows["a"]["segment_name"] == "Champions"
    )
    assert rows["c"]["churn_probability"] is None  # a return only

    pa_, va = by_hand(recency=1, tenure=300, frequency=9, monetary=150.0)
    status, top = server.call("GET", "/at-risk?n=5")
    assert status == 200 and isinstance(top, dict)
    assert [r["customer_id"] for r in top["rows"]] == ["a", "b"]
    assert [r["value_at_risk"] for r in top["rows"]] == pytest.approx([pa_ * va, p * value])
    assert top["rows"] == _cli_json(view_root, "--at-risk", "5", capsys=capsys)
    _, by_p = server.call("GET", "/at-risk?n=5&order=probability")
    assert [r["customer_id"] for r in by_p["rows"]] == ["b", "a"]  # type: ignore[index]

    status, models = server.call("GET", "/models")
    assert status == 200 and models["churn"]["version"] == "c1"  # type: ignore[index]
    status, health = server.call("GET", "/health")  # the hand-written store has no batch
    assert status == 503 and health["clock"] == "2020-09-22T00:00:00+00:00"  # type: ignore[index]


BAD = [
    ("GET", "/customers/nobody", None, 404),
    ("GET", "/customers/nobody/history", None, 404),
    ("GET", "/segments", None, 503),  # the store serves s1; this machine has no registry
    ("GET", "/customers/%01bad", None, 422),
    ("GET", "/customers/" + "x" * 300, None, 422),
    ("GET", "/at-risk?n=0", None, 422),
    ("GET", "/at-risk?n=abc", None, 422),
    ("GET", "/at-risk?n=1001", None, 422),
    ("GET", "/at-risk?order=soon", None, 422),
    ("POST", "/customers", {"ids": "a"}, 422),
    ("POST", "/customers", {"nothing": []}, 422),
    ("POST", "/customers", {"ids": [f"c{i}" for i in range(1001)]}, 413),
]


def test_every_bad_request_gets_its_status_and_the_server_survives(server) -> None:  # type: ignore[no-untyped-def]
    for method, path, body, expected in BAD:
        status, answer = server.call(method, path, body)
        assert status == expected, (method, path, status, answer)
        assert "detail" in answer  # type: ignore[operator]
    assert server.call("GET", "/customers/a")[0] == 200


def test_a_missing_store_is_503_with_one_line(tmp_path: Path) -> None:
    s = Server(["--data-root", str(tmp_path)])
    try:
        status, answer = s.call("GET", "/customers/a")
        assert status == 503 and "no online store" in answer["detail"]  # type: ignore[index]
        assert "\n" not in answer["detail"]  # type: ignore[index]
        assert s.call("GET", "/health")[0] == 503
    finally:
        s.stop()


def test_a_token_guards_every_endpoint_and_is_needed_off_loopback(view_root) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    s = Server(["--data-root", str(view_root)], env={"PULSE_API_TOKEN": "s3cret-token"})
    try:
        for path in ("/customers/a", "/customers/a/history", "/at-risk", "/segments", "/models",
                     "/health", "/metrics"):  # fmt: skip
            assert s.call("GET", path)[0] == 401
            assert s.call("GET", path, headers={"authorization": "Bearer wrong"})[0] == 401
        ok = s.call("GET", "/customers/a", headers={"authorization": "Bearer s3cret-token"})
        assert ok[0] == 200
        assert _text(s, "/")[0] == 200  # the page holds no data: it asks for the token
    finally:
        s.stop()
    out = s.proc.stdout.read().decode()  # type: ignore[union-attr]
    assert "s3cret-token" not in out
    refused = subprocess.run(
        [sys.executable, "-m", "pulse.cli", "--data-root", str(view_root), "serve",
         "--host", "0.0.0.0", "--port", str(free_port())],
        env={k: v for k, v in os.environ.items() if k != "PULSE_API_TOKEN"}, cwd=REPO,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "pulse: error: `pulse serve` on 0.0.0.0 would let any machine read the view: "
        "set PULSE_API_TOKEN (or bind 127.0.0.1)"
    ]


def _text(server: Server, path: str) -> tuple[int, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=30) as r:
        return r.status, r.read().decode()


def test_history_is_the_stored_days_inside_the_window(tmp_path: Path) -> None:
    from serving.online import SqliteStore

    store = SqliteStore(tmp_path / "online" / "customers.db")
    days = [[SEP22 - 95, 1, 1, 9.5, 0, 1], [SEP22 - 89, 2, 1, 4.25, 1, 2],
            [SEP22, 3, 2, 1.5, 0, 3], [SEP22 - 3, 1, 0, 0.0, 0, 1]]  # fmt: skip
    store.write_records([("d", SEP22 - 95, SEP22, 3, 7, 15.25, 1, 7, SEP22 * US_PER_DAY,
                          json.dumps(days))])  # fmt: skip
    store.set_meta({"clock_us": SEP22 * US_PER_DAY, "versions": {}, "scorers": {}})
    store.close()
    s = Server(["--data-root", str(tmp_path)])
    try:
        history = s.get("/customers/d/history")
    finally:
        s.stop()
    # 2020-09-22 is the clock: the window is the 90 days 2020-06-25 .. 2020-09-22, so the
    # day 95 days back is left out; the rest oldest first
    assert history == {
        "customer_id": "d", "as_of": "2020-09-22", "window_days": 90,
        "first_purchase_date": "2020-06-19", "last_purchase_date": "2020-09-22",
        "days": [
            {"date": "2020-06-25", "n_events": 2, "n_purchases": 1, "spend": 4.25},
            {"date": "2020-09-19", "n_events": 1, "n_purchases": 0, "spend": 0.0},
            {"date": "2020-09-22", "n_events": 3, "n_purchases": 2, "spend": 1.5},
        ],
    }  # fmt: skip


def test_metrics_count_the_requests_and_show_the_store(server) -> None:  # type: ignore[no-untyped-def]
    from prometheus_client.parser import text_string_to_metric_families

    for path in ("/customers/a", "/customers/b", "/customers/a", "/customers/nobody"):
        server.call("GET", path)
    status, text = _text(server, "/metrics")
    assert status == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    one = (("endpoint", "/customers/{customer_id}"),)
    assert samples[("pulse_api_requests_total", (*one, ("status", "2xx")))] == 3
    assert samples[("pulse_api_requests_total", (*one, ("status", "4xx")))] == 1
    assert samples[("pulse_api_request_seconds_count", one)] == 4
    assert samples[("pulse_api_request_seconds_bucket", (*one, ("le", "+Inf")))] == 4
    assert samples[("pulse_stream_clock_seconds", ())] == SEP22 * 86_400
    for name, version in (("churn", "c1"), ("recommendations", "r1"), ("segments", "s1")):
        assert samples[("pulse_model_info", (("name", name), ("version", version)))] == 1
    assert ("pulse_kafka_lag_records", ()) not in samples  # the store has no stream report


def test_the_dashboard_page_and_its_scripts_are_served(server) -> None:  # type: ignore[no-untyped-def]
    status, page = _text(server, "/")
    assert status == 200 and "<title>Pulse live view</title>" in page
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset in page and _text(server, asset)[0] == 200


def test_two_worker_processes_serve_one_redis_store(redis_url, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`pulse serve --workers 2` on Redis: both processes answer look-ups (each the hand
    computation), and /metrics sums the requests over them."""
    import redis
    from prometheus_client.parser import text_string_to_metric_families

    from serving.online import RedisStore

    url = redis_url.rsplit("/", 1)[0] + "/5"
    redis.Redis.from_url(url).flushdb()
    write_view(RedisStore(url))
    env = {"PULSE_ONLINE_STORE": "redis", "PULSE_REDIS_URL": url}
    s = Server(["--data-root", str(tmp_path)], env=env, serve=("--workers", "2"))
    try:
        workers = subprocess.run(["pgrep", "-P", str(s.proc.pid), "-f", "spawn_main"],
                                 capture_output=True, text=True).stdout.split()  # fmt: skip
        assert len(workers) == 2, workers  # uvicorn's two worker processes
        p, value = by_hand(recency=80, tenure=200, frequency=2, monetary=0.2)
        for _ in range(30):
            b = s.get("/customers/b")
            assert b["churn_probability"] == pytest.approx(p, rel=1e-12)
            assert b["value_at_risk"] == pytest.approx(p * value, rel=1e-9)
        assert s.call("GET", "/customers/nobody")[0] == 404
        _, text = _text(s, "/metrics")
        total = sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "pulse_api_requests_total"
            and sample.labels["endpoint"] == "/customers/{customer_id}"
        )
        assert total == 31
    finally:
        s.stop()


def test_with_workers_the_listener_is_tcp_so_connections_get_nodelay() -> None:
    """uvicorn's own listener for workers has protocol 0, so asyncio skips TCP_NODELAY on
    accepted connections and each keep-alive answer waits ~45 ms (uvicorn issue 3149)."""
    import socket

    import uvicorn

    from serving.api import _listen_with_nodelay

    _listen_with_nodelay()
    sock = uvicorn.Config(app=None, host="127.0.0.1", port=free_port()).bind_socket()
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()

"""The replay producer against a real broker, read back by a second, independent client.

kafka-python (not confluent-kafka, which the producer uses) reads every partition
from the beginning to its end offset, so the checks see exactly what the broker holds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from datetime import date, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from producers.adapters import ARROW_SCHEMA, open_source
from producers.replay import Pacing, ReplayOptions, replay
from pulse.cli import main as pulse_main
from runtime.errors import PulseError
from schemas.transaction import ContractError, decode

REPO = Path(__file__).resolve().parents[2]
QUIET = ReplayOptions(progress=False)


def silent(_: str) -> None:
    pass


def write_hm_folder(folder: Path, days: int = 20, customers: int = 12) -> Path:
    """A small H&M-layout folder a reader can check by hand (~250 rows, sorted by t_dat).

    It holds exact duplicate rows (two units of one article) and three invalid rows
    (negative price, unknown channel, empty customer) that the adapter rejects.
    """
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["t_dat,customer_id,article_id,price,sales_channel_id"]
    day0 = date(2020, 6, 1)
    for d in range(days):
        t_dat = (day0 + timedelta(days=d)).isoformat()
        for c in range(customers):
            if (c + d) % 3 == 0:
                continue  # not every customer buys every day
            article = f"0{700000000 + c * 100 + d:09d}"
            price = f"0.0{(c * 7 + d) % 90 + 10}"
            channel = 1 + (c + d) % 2
            lines.append(f"{t_dat},cust{c:02d},{article},{price},{channel}")
            if c % 4 == 0:  # a second unit of the same article: an exact duplicate row
                lines.append(f"{t_dat},cust{c:02d},{article},{price},{channel}")
        if d == 5:
            lines.append(f"{t_dat},cust01,0700000999,-0.02,2")
            lines.append(f"{t_dat},cust02,0700000998,0.02,7")
            lines.append(f"{t_dat},,0700000997,0.02,2")
    (folder / "transactions_train.csv").write_text("\n".join(lines) + "\n")
    return folder


def consume_all(bootstrap: str, topic: str) -> list[tuple[int, int, bytes, bytes]]:
    """Every record of ``topic`` as (partition, offset, key, value), read to the end offsets."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        records = []
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < end[tp] for tp in partitions):
            assert time.monotonic() < deadline, "could not read the topic to its end"
            for batch in consumer.poll(timeout_ms=500).values():
                records += [(r.partition, r.offset, r.key, r.value) for r in batch]
        return records
    finally:
        consumer.close()


def without_produced_at(event: dict) -> dict:
    return {k: v for k, v in event.items() if k != "produced_at"}


@pytest.fixture
def hm_folder(tmp_path: Path) -> Path:
    return write_hm_folder(tmp_path / "hm")


@pytest.fixture
def topic_settings(kafka_settings, topic, tmp_path):
    return kafka_settings.model_copy(
        update={"topic_transactions": topic, "data_root": tmp_path / "root"}
    )


def assert_exactly_once_in_customer_order(records, expected: list[dict]) -> None:
    """The topic holds exactly ``expected`` (ignoring produced_at), each once, in order per key."""
    decoded = [(p, o, k, decode(v)) for p, o, k, v in records]
    ids = [e["event_id"] for *_, e in decoded]
    assert len(ids) == len(set(ids)), "an event is on the topic twice"
    by_id = {e["event_id"]: without_produced_at(e) for e in expected}
    assert {e["event_id"]: without_produced_at(e) for *_, e in decoded} == by_id
    assert all(k.decode() == e["customer_id"] for _, _, k, e in decoded)
    assert all(e["produced_at"] is not None for *_, e in decoded)
    # each customer lives in one partition, its events in the source's order there
    on_topic: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    for p, o, _, e in decoded:
        on_topic[e["customer_id"]].append((p, o, e["event_id"]))
    in_source: dict[str, list[str]] = defaultdict(list)
    for e in expected:
        in_source[e["customer_id"]].append(e["event_id"])
    for customer, placed in on_topic.items():
        assert len({p for p, _, _ in placed}) == 1, f"{customer} spans partitions"
        assert [i for _, _, i in sorted(placed)] == in_source[customer]


@pytest.mark.parametrize("shape", ["tables", "events"])
def test_replay_puts_exactly_the_accepted_events_on_the_topic_in_customer_order(
    hm_folder, topic_settings, shape
):
    """Arrow tables (what `pulse produce` sends, encoded per table) or event mappings."""
    expected = list(open_source(f"hm:{hm_folder}").events())
    source = open_source(f"hm:{hm_folder}")
    rows = source.iter_batches(batch_rows=64) if shape == "tables" else source.events()
    stats = replay(rows, topic_settings, QUIET, log=silent)

    assert source.stats.n_rejected == 3  # the three invalid rows never reach Kafka
    assert len(expected) == source.stats.accepted
    assert (stats.sent, stats.delivered, stats.failed, stats.bad) == (len(expected),) * 2 + (0, 0)
    assert stats.confirmed_rows == len(expected)
    records = consume_all(topic_settings.kafka_bootstrap, topic_settings.topic_transactions)
    assert_exactly_once_in_customer_order(records, expected)


def test_injected_bad_records_are_counted_separately_and_all_fail_the_contract(
    hm_folder, topic_settings
):
    expected = list(open_source(f"hm:{hm_folder}").events())
    stats = replay(
        open_source(f"hm:{hm_folder}").iter_batches(batch_rows=64),
        topic_settings,
        ReplayOptions(inject_bad=0.2, seed=3, progress=False),
        log=silent,
    )
    records = consume_all(topic_settings.kafka_bootstrap, topic_settings.topic_transactions)
    good, bad = [], 0
    for *_, value in records:
        try:
            good.append(decode(value))
        except ContractError:
            bad += 1
    assert stats.bad > 0 and sum(stats.bad_by_kind.values()) == stats.bad
    assert (len(records), bad, len(good)) == (stats.sent, stats.bad, stats.good)
    assert sorted(e["event_id"] for e in good) == sorted(e["event_id"] for e in expected)


def test_a_limited_paced_run_then_resume_sends_each_row_once(hm_folder, topic_settings):
    expected = list(open_source(f"hm:{hm_folder}").events())
    identity = {"source": "hm", "path": str(hm_folder)}
    first = replay(  # the limit and the resume both fall inside a 32-row table
        open_source(f"hm:{hm_folder}").iter_batches(batch_rows=32),
        topic_settings,
        ReplayOptions(pacing=Pacing(rate=2000), limit=40, identity=identity, progress=False),
    )
    assert (first.good, first.confirmed_rows) == (40, 40)
    rest = replay(
        open_source(f"hm:{hm_folder}").iter_batches(batch_rows=32),
        topic_settings,
        ReplayOptions(identity=identity, resume=True, progress=False),
        log=silent,
    )
    assert (rest.skipped, rest.good) == (40, len(expected) - 40)
    records = consume_all(topic_settings.kafka_bootstrap, topic_settings.topic_transactions)
    assert_exactly_once_in_customer_order(records, expected)


def test_a_generated_set_replays_exactly_its_accepted_events(tmp_path, topic_settings):
    from producers.generator import generate

    folder = tmp_path / "generated"
    generate(folder, customers=40, articles=25, start=date(2020, 3, 1), days=30, seed=11,
             progress=False)  # fmt: skip
    spec = f"synthetic:{folder}"
    expected = list(open_source(spec).events())
    assert expected and {e["source"] for e in expected} == {"synthetic"}
    stats = replay(open_source(spec).iter_batches(), topic_settings, QUIET, log=silent)
    assert (stats.delivered, stats.failed) == (len(expected), 0)
    records = consume_all(topic_settings.kafka_bootstrap, topic_settings.topic_transactions)
    assert_exactly_once_in_customer_order(records, expected)


@pytest.mark.realdata
def test_real_hm_sample_replays_exactly_its_accepted_events(real_data, topic_settings):
    spec = f"hm:{real_data / 'hm_sample'}"
    expected = list(open_source(spec).events())
    stats = replay(open_source(spec).iter_batches(), topic_settings, QUIET, log=silent)
    assert (stats.delivered, stats.failed) == (len(expected), 0)
    records = consume_all(topic_settings.kafka_bootstrap, topic_settings.topic_transactions)
    assert_exactly_once_in_customer_order(records, expected)


def test_a_record_the_broker_cannot_take_fails_the_run_and_stops_the_position(
    hm_folder, topic_settings
):
    events = list(open_source(f"hm:{hm_folder}").events())[:10]
    events[6] = {**events[6], "article_id": "x" * 2_000_000}  # above the 1 MB message limit
    stats = replay(events, topic_settings, QUIET, log=silent)
    assert (stats.sent, stats.delivered, stats.failed) == (10, 9, 1)
    assert "too large" in stats.first_error.lower()
    assert stats.confirmed_rows == 6  # rows 0..5: a resume re-sends row 6 onwards
    records = consume_all(topic_settings.kafka_bootstrap, topic_settings.topic_transactions)
    assert sorted(decode(v)["event_id"] for *_, v in records) == sorted(
        e["event_id"] for i, e in enumerate(events) if i != 6
    )


def test_identical_records_in_flight_are_each_confirmed(hm_folder, topic_settings):
    """The same event three times (a source with a repeated row): three records, three rows."""
    event = next(open_source(f"hm:{hm_folder}").events())
    stats = replay([event] * 3 + [event] * 3, topic_settings, QUIET, log=silent)
    assert (stats.sent, stats.delivered, stats.failed, stats.confirmed_rows) == (6, 6, 0, 6)
    records = consume_all(topic_settings.kafka_bootstrap, topic_settings.topic_transactions)
    assert [decode(v)["event_id"] for *_, v in records] == [event["event_id"]] * 6


@pytest.mark.parametrize("table_rows", [None, 10, 11, 1000])
def test_an_unsorted_source_is_refused_with_a_clear_error(hm_folder, topic_settings, table_rows):
    """As mappings, or as tables with row 11 inside one, first in one (11), or in the only one."""
    events = list(open_source(f"hm:{hm_folder}").events())
    events[10], events[-1] = events[-1], events[10]  # a late-June event jumps the queue
    rows: list = events
    if table_rows:
        table = pa.Table.from_pylist(events, schema=ARROW_SCHEMA)
        rows = [table.slice(i, table_rows) for i in range(0, len(events), table_rows)]
    with pytest.raises(PulseError, match="not in event-time order at row 11"):
        replay(rows, topic_settings, QUIET, log=silent)
    # the rows before it were sent, each once
    records = consume_all(topic_settings.kafka_bootstrap, topic_settings.topic_transactions)
    assert sorted(decode(v)["event_id"] for *_, v in records) == sorted(
        e["event_id"] for e in events[:11]
    )


def pulse_cli(settings, *args: str) -> list[str]:
    """The command line of a real `pulse` process against ``settings``' broker and topic."""
    return [
        sys.executable,
        "-m",
        "pulse.cli",
        "--bootstrap",
        settings.kafka_bootstrap,
        "--topic",
        settings.topic_transactions,
        "--data-root",
        str(settings.data_root),
        *args,
    ]


def wait_for_confirmed_rows(data_root: Path, at_least: int, proc: subprocess.Popen) -> int:
    """Poll the producer's durable position file until it covers ``at_least`` rows."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the producer ended before it could be killed"
        for f in (data_root / "producer").glob("*.json"):
            try:
                confirmed = json.loads(f.read_text())["last_confirmed_row"] + 1
            except (ValueError, KeyError):
                continue  # never happens with os.replace, but a reader must not crash
            if confirmed >= at_least:
                return confirmed
        time.sleep(0.1)
    raise AssertionError("the producer never saved a position")


def test_producer_killed_mid_replay_and_resumed_loses_nothing(hm_folder, topic_settings):
    expected = list(open_source(f"hm:{hm_folder}").events())
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    slow = subprocess.Popen(
        pulse_cli(topic_settings, "produce", f"hm:{hm_folder}", "--rate", "60"),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        confirmed = wait_for_confirmed_rows(topic_settings.data_root, 30, slow)
        slow.send_signal(signal.SIGKILL)  # no flush, no final save: a crash
    finally:
        slow.wait(30)
    assert confirmed < len(expected)  # it really died mid-replay
    half = consume_all(topic_settings.kafka_bootstrap, topic_settings.topic_transactions)
    assert 30 <= len(half) < len(expected)

    resumed = subprocess.run(
        pulse_cli(topic_settings, "produce", f"hm:{hm_folder}", "--resume"),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "skipped" in resumed.stdout  # it continued, not restarted

    records = consume_all(topic_settings.kafka_bootstrap, topic_settings.topic_transactions)
    on_topic = [decode(v)["event_id"] for *_, v in records]
    assert set(on_topic) == {e["event_id"] for e in expected}  # none missing, none foreign
    # duplicates only from rows in flight at the kill, never a second full replay
    assert len(on_topic) - len(expected) <= len(half) - 30


def test_sigterm_flushes_and_exits_cleanly_with_a_summary(hm_folder, topic_settings):
    proc = subprocess.Popen(
        pulse_cli(topic_settings, "produce", f"hm:{hm_folder}", "--rate", "60"),
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_confirmed_rows(topic_settings.data_root, 20, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "interrupted" in out
    records = consume_all(topic_settings.kafka_bootstrap, topic_settings.topic_transactions)
    assert f"delivered {len(records):,}, failed 0" in out  # every sent record is accounted


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bootstrap", "127.0.0.1:1"], "is unreachable"),
        (["--topic", "no-such-topic"], "does not exist"),
    ],
)
def test_unreachable_broker_or_missing_topic_is_one_clear_line(
    hm_folder, kafka_settings, tmp_path, capsys, args, message
):
    argv = ["--bootstrap", kafka_settings.kafka_bootstrap, "--data-root", str(tmp_path)]
    rc = pulse_main([*argv, *args, "produce", f"hm:{hm_folder}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0
    assert err[-1].startswith("pulse: error: ") and message in err[-1]
    assert not any("Traceback" in line for line in err)


def test_bad_source_path_is_one_clear_line(kafka_settings, tmp_path, capsys):
    rc = pulse_main(["--data-root", str(tmp_path), "produce", f"hm:{tmp_path / 'nowhere'}"])
    assert rc != 0
    assert capsys.readouterr().err.strip() == f"pulse: error: source not found: {tmp_path}/nowhere"


def test_producer_bench_prints_a_table_or_one_json_object(kafka_settings, tmp_path, capsys):
    argv = ["--bootstrap", kafka_settings.kafka_bootstrap, "--data-root", str(tmp_path)]
    assert pulse_main([*argv, "bench", "producer", "--events", "5000", "--json"]) == 0
    out, err = capsys.readouterr()
    figures = json.loads(out)  # stdout is exactly one JSON object
    assert figures["events"] == figures["ours"]["records"] == figures["theirs"]["records"] == 5000
    assert figures["ratio"] == pytest.approx(
        figures["ours"]["records_per_s"] / figures["theirs"]["records_per_s"], rel=1e-3
    )
    assert figures["record_size"] > 200 and figures["python_only_per_s"] > 0
    assert "kafka ProducerPerformance" in err and "ratio pulse / kafka" in err  # the table

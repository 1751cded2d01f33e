"""Settings and the CLI's one-line errors: no JVM needed (the compose file: test_compose)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from pulse.cli import main
from runtime.errors import PulseError
from runtime.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[2]


def test_settings_read_environment_and_overrides(monkeypatch):
    monkeypatch.setenv("PULSE_KAFKA_BOOTSTRAP", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("PULSE_TOPIC_PARTITIONS", "12")
    monkeypatch.setenv("PULSE_KAFKA_SASL_PASSWORD", "hunter2")
    s = load_settings(spark_master="spark://master:7077", data_root=None)
    assert s.kafka_bootstrap == "kafka-1:9092,kafka-2:9092"
    assert s.topic_partitions == 12
    assert s.spark_master == "spark://master:7077"
    assert s.data_root == Path("data")  # None override means "not given"
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.model_dump())
    with pytest.raises(ValidationError):
        s.topic_partitions = 1  # frozen


def test_invalid_setting_is_one_clear_line(monkeypatch, capsys):
    monkeypatch.setenv("PULSE_ALLOWED_LATENESS_DAYS", "90")  # the history holds 90 days
    assert main(["stream", "--until-idle"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "pulse: error: invalid setting PULSE_ALLOWED_LATENESS_DAYS='90': "
        "Input should be less than or equal to 60"
    ]


def test_env_example_lists_every_setting():
    listed = {
        line.split("=", 1)[0]
        for line in (REPO / ".env.example").read_text().splitlines()
        if line.startswith("PULSE_")
    }
    assert listed == {f"PULSE_{name.upper()}" for name in Settings.model_fields}


def test_help_lists_every_setting(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in Settings.model_fields:
        assert f"PULSE_{name.upper()}" in out


def test_missing_mvn_is_one_clear_line(tmp_path):
    # A PATH with a java but no mvn, and an empty jar cache: setup must say what to install.
    # (A stand-in java: the unit tier runs where no JDK is installed, see test_tiers.)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "java").write_text("#!/bin/sh\necho 'openjdk version \"17.0.15\"' >&2\n")
    (bin_dir / "java").chmod(0o755)
    env = {**os.environ, "PATH": str(bin_dir), "PULSE_JVM_CACHE": str(tmp_path / "jvm")}
    proc = subprocess.run(
        [sys.executable, "-m", "pulse.cli", "setup"], capture_output=True, text=True, env=env
    )
    assert proc.returncode != 0
    err_lines = proc.stderr.strip().splitlines()
    assert len(err_lines) == 1, proc.stderr
    assert err_lines[0].startswith("pulse: error: `mvn` not found")
    assert "Maven" in err_lines[0]


def test_topics_on_unreachable_broker_fails_fast(tmp_path):
    env = {**os.environ, "PULSE_KAFKA_BOOTSTRAP": "127.0.0.1:1", "PULSE_DATA_ROOT": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "pulse.cli", "topics", "create"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr  # no librdkafka connect spam, no traceback
    assert lines[0].startswith("pulse: error: Kafka at 127.0.0.1:1")


def test_the_data_root_is_a_local_path_or_an_s3_url(tmp_path):
    local = load_settings(data_root=f"file://{tmp_path}")
    assert isinstance(local.data_root, Path) and str(local.data_root) == str(tmp_path)
    assert not local.on_object_store and local.local_root == tmp_path
    s3 = load_settings(data_root="s3a://bucket/shop", s3_endpoint="http://127.0.0.1:9000/",
                       s3_access_key_id="k", s3_secret_access_key="very-secret")  # fmt: skip
    assert s3.on_object_store and str(s3.lake_dir) == "s3://bucket/shop/lake/transactions"
    assert s3.s3_endpoint == "http://127.0.0.1:9000" and s3.local_root == Path("data")
    assert "very-secret" not in repr(s3) and "very-secret" not in str(s3.data_root)
    wrong = (("gs://b/x", "not a local path or an s3://"), ("s3:///x", "names its bucket"))
    for bad, says in wrong:
        with pytest.raises(PulseError, match=says):
            load_settings(data_root=bad)

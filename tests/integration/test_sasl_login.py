"""A SASL/SCRAM broker and a wrong password: one line that says authentication failed.

The broker is the project's own (``pulse.local.broker``) with a SCRAM-SHA-256 user
bootstrapped at format time. Each command that reaches Kafka is run as a user would,
configured by ``PULSE_*`` variables alone; none may say "unreachable" (the broker is
up), print a traceback, exit 0 or show either password.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from pulse.chaos.lab import settings_env
from runtime.settings import Settings

REPO = Path(__file__).resolve().parents[2]

HM_CSV = "t_dat,customer_id,article_id,price,sales_channel_id\n2020-01-01,c1,0100000001,0.01,2\n"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def scram_broker(
    jvm_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    """A running SCRAM-SHA-256 broker on free ports; settings with the right password."""
    from pulse.local import broker

    settings = jvm_settings.model_copy(
        update={
            "data_root": tmp_path_factory.mktemp("scram"),
            "broker_port": free_port(),
            "controller_port": free_port(),
            "broker_heap": "256m",
            "kafka_security_protocol": "SASL_PLAINTEXT",
            "kafka_sasl_mechanism": "SCRAM-SHA-256",
            "kafka_sasl_username": "pulse-test",
            "kafka_sasl_password": SecretStr(secrets.token_urlsafe(18)),
        }
    )
    broker.start(settings, timeout_s=240, log=lambda _: None)
    try:
        yield settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{settings.broker_port}"})
    finally:
        if broker.stop(settings, log=lambda _: None) is False:
            broker.kill(settings)


def _pulse(settings: Settings, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    env |= settings_env(settings)
    return subprocess.run(
        [sys.executable, "-m", "pulse.cli", *argv],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_wrong_password_is_one_line_that_says_authentication_failed(
    scram_broker: Settings, tmp_path: Path
) -> None:
    right = scram_broker.model_copy(update={"data_root": tmp_path / "root"})
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "transactions_train.csv").write_text(HM_CSV)
    ok = _pulse(right, "topics", "create")
    assert ok.returncode == 0, ok.stderr  # the right password logs in

    wrong_password = secrets.token_urlsafe(18)
    wrong = right.model_copy(update={"kafka_sasl_password": SecretStr(wrong_password)})
    outputs = [ok.stdout, ok.stderr]
    for argv in (
        ("topics", "create"),
        ("produce", f"hm:{tmp_path / 'shop'}"),
        ("stream", "--until-idle"),
    ):
        done = _pulse(wrong, *argv)
        outputs += [done.stdout, done.stderr]
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode != 0, argv
        assert len(lines) == 1, (argv, lines[:5])
        assert lines[0].startswith("pulse: error: SASL authentication failed: "), (argv, lines)
        assert "refused the login of user 'pulse-test'" in lines[0]
        assert "unreachable" not in lines[0]
    help_text = _pulse(wrong, "--help")
    outputs += [help_text.stdout, help_text.stderr]
    assert right.kafka_sasl_password is not None
    for secret in (right.kafka_sasl_password.get_secret_value(), wrong_password):
        assert not [text for text in outputs if secret in text]

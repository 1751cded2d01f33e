"""Bad command-line input against the session's real broker (a topic that does not
exist): one clear line, a non-zero exit, nothing left (cases and checks: tests/bad_input.py)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from bad_input import BROKER_CASES, BROKER_TIMEOUT_S, Case, check, run_case


@pytest.fixture(scope="module")
def closed_port() -> int:
    """A TCP port nobody listens on: a connection is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("case", BROKER_CASES, ids=lambda c: c.id)
def test_bad_input_against_a_real_broker_is_one_clear_line(
    case: Case, tmp_path: Path, closed_port: int, kafka_bootstrap: str
) -> None:
    run = run_case(
        case, tmp_path, BROKER_TIMEOUT_S, closed=str(closed_port), broker=kafka_bootstrap
    )
    check(run, BROKER_TIMEOUT_S)

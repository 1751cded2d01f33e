"""Bad command-line input with no broker: one clear line, a non-zero exit, nothing left
(the cases and the checks: tests/bad_input.py)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from bad_input import (
    BROKER_CASES,
    UNIT_CASES,
    UNIT_TIMEOUT_S,
    Case,
    Run,
    check,
    registered_commands,
    run_case,
)


@pytest.fixture(scope="module")
def closed_port() -> int:
    """A TCP port nobody listens on: a connection is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def busy_port() -> Iterator[int]:
    """A TCP port this test process listens on while the module runs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


@pytest.fixture(scope="module")
def unit_runs(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    closed_port: int,
    busy_port: int,
) -> dict[str, Run]:
    """The selected unit cases, run three at a time (most of a run is waiting: a Python
    start, a refused connection's time-out), each in its own directory and timed alone."""
    selected_ids = {
        item.callspec.id
        for item in request.session.items
        if isinstance(item, pytest.Function)
        and item.originalname == "test_bad_input_is_one_clear_line"
    }
    selected = [case for case in UNIT_CASES if case.id in selected_ids]
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {
            case.id: pool.submit(
                run_case,
                case,
                tmp_path_factory.mktemp(case.id),
                UNIT_TIMEOUT_S,
                closed=str(closed_port),
                busy=str(busy_port),
            )
            for case in selected
        }
        return {case_id: future.result() for case_id, future in futures.items()}


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("case", UNIT_CASES, ids=lambda c: c.id)
def test_bad_input_is_one_clear_line(case: Case, unit_runs: dict[str, Run]) -> None:
    check(unit_runs[case.id], UNIT_TIMEOUT_S)


def test_the_table_covers_every_command() -> None:
    commands = registered_commands()
    covered = {a for c in UNIT_CASES + BROKER_CASES for a in c.argv if a in commands}
    assert commands - covered == set(), "a new command: add its bad-input cases to the table"
    assert len(UNIT_CASES) + len(BROKER_CASES) >= 20

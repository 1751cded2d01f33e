"""The stream's object store down for a minute mid-replay (case 9 of `pulse chaos`).

The case runs `pulse stream` with its whole data root in a SeaweedFS bucket of its own
(it SIGKILLs that server, so not the session's shared one), replays generated events
with known ids (``chaos<seed>-<row>``), keeps the store down for 60 s and starts it
again on the same ports and data directory. The expected counts are worked out here:
every generated event is valid, so the lake must hold each of them once.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fault_helpers import fault_context

from pulse.chaos.cases.case9_store_outage import OUTAGE_S, store_outage
from runtime.settings import Settings

EVENTS = 20_000  # the case replays EVENTS // 10: 2,000 events


@pytest.fixture
def weed(base_settings: Settings) -> None:
    """Skip where SeaweedFS was not built (no Go), as the ``s3_endpoint`` fixture does;
    the case starts (and kills) a server of its own."""
    from pulse.local.s3 import weed_binary

    if not weed_binary(base_settings).exists():
        pytest.skip(f"SeaweedFS not built at {weed_binary(base_settings)} (`make setup`, needs Go)")


def test_the_stream_rides_through_a_minute_without_its_object_store(
    weed: None, jvm_settings: Settings, spark, campaign_models, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    ctx = fault_context(jvm_settings, spark, tmp_path, EVENTS, seed=11)
    ctx._models = campaign_models  # trained once for the fault tests (conftest.py)
    n = ctx.small
    result = store_outage(ctx)
    assert result.error is None, result.error
    assert result.produced == n and result.quarantined == 0
    assert result.lost == 0 and result.doubled == 0, result.notes
    assert result.in_lake == n  # each valid event exactly once
    assert result.served_equal is True, result.notes
    assert result.ok
    facts = result.details
    assert 0 < facts["killed_at_records_read"] < n  # really mid-replay
    assert facts["store_down_seconds"] >= OUTAGE_S
    # the clients' retries (docs/faults.md, case 9) outlast the outage and the restart
    assert facts["restarts"] == 0 and facts["starts"] == 1, result.notes

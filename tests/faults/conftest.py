"""The fault tests' shared fixture: the campaign's served models, trained once."""

from __future__ import annotations

import pytest
from fault_helpers import fault_context


@pytest.fixture(scope="session")
def campaign_models(jvm_settings, spark, tmp_path_factory):  # type: ignore[no-untyped-def]
    """The campaign's served models, trained once for the session (as `pulse chaos` does
    for a campaign) on 300 generated events; every fault test's stream serves them."""
    root = tmp_path_factory.mktemp("campaign")
    return fault_context(jvm_settings, spark, root, events=3000, seed=7).models()

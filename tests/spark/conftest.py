"""Fixtures for the batch tests."""

from __future__ import annotations

import pytest
from batch_shop import TableSource, events_table, shop_rows


@pytest.fixture
def shop_source() -> TableSource:
    """The tiny shop as one Arrow batch."""
    return TableSource([events_table(shop_rows())])

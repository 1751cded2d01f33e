"""Fixtures for the streaming tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.settings import Settings


@pytest.fixture
def stream_settings(kafka_settings: Settings, topic: str, tmp_path: Path) -> Settings:
    """Settings on a fresh data root and topic, with small micro-batches."""
    return kafka_settings.model_copy(
        update={"topic_transactions": topic, "data_root": tmp_path, "max_offsets_per_trigger": 7}
    )

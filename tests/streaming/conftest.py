"""Fixtures for the streaming tests: the real job on a file "topic", no broker."""

from __future__ import annotations

from pathlib import Path

import pytest
from stream_helpers import FileTopic

from runtime.settings import Settings


@pytest.fixture
def stream_settings(settings: Settings) -> Settings:
    """Settings on a fresh data root."""
    return settings


@pytest.fixture
def file_topic(tmp_path: Path) -> FileTopic:
    """An empty file topic of this test."""
    return FileTopic(tmp_path / "topic")

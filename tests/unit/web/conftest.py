"""Shared by the web tests: prometheus-client's multiprocess mode for one test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import values

from sendgate.web.metrics import ENVIRONMENT, prepare_directory


@pytest.fixture
def multiprocess(tmp_path: Path) -> Iterator[Path]:
    """Multiprocess mode on a fresh metrics directory (a stale file in it is removed)."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    (directory / "stale_1.db").write_bytes(b"an earlier run's file")
    prepare_directory(directory)
    try:
        yield directory
    finally:
        del os.environ[ENVIRONMENT]
        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]

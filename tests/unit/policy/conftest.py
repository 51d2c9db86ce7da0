"""Fixtures the policy tests share: a counting argon2 hasher, a thread pool, a limits harness."""

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from tests.unit.policy.test_auth import CountingHasher
from tests.unit.policy.test_quota import Harness


@pytest.fixture
def hasher() -> CountingHasher:
    return CountingHasher()


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        yield pool


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    """Sending limits on a real SQLite limit store, a fake clock and in-memory flags."""
    made = Harness(tmp_path)
    yield made
    made.store.close()

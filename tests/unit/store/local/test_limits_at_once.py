"""Tests for LocalLimitStore.active_bans_at_once: the ban check an event loop may make.

It must answer from SQLite without ever waiting: not for a write in progress in another
process (WAL readers do not wait), not for another thread using the same quick connection.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.clock import FakeClock
from tests.support.sqlite import quick_read_elsewhere, write_in_progress

from sendgate.store.local.limits import LocalLimitStore

MEMORY = 86400.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LocalLimitStore]:
    made = LocalLimitStore(tmp_path / "limits.db", clock=FakeClock())
    yield made
    made.close()


def test_it_answers_what_active_bans_answers(store: LocalLimitStore) -> None:
    assert store.active_bans_at_once(["net:a"]) == []
    store.ban("net:a", 60, "host_failures", memory=MEMORY)
    assert store.active_bans_at_once(["net:b", "net:a"]) == store.active_bans(["net:a"])


def test_a_write_in_progress_elsewhere_does_not_hold_it_up(
    store: LocalLimitStore, tmp_path: Path
) -> None:
    store.ban("net:a", 60, "host_failures", memory=MEMORY)
    # Not committed: the ban still holds.
    with write_in_progress(tmp_path / "limits.db", "DELETE FROM bans"):
        found = store.active_bans_at_once(["net:a"])
        assert found is not None
        assert [ban.key for ban in found] == ["net:a"]


def test_it_gives_up_rather_than_wait_for_another_thread(store: LocalLimitStore) -> None:
    with quick_read_elsewhere(store._db):
        assert store.active_bans_at_once(["net:a"]) is None
    assert store.active_bans_at_once(["net:a"]) == []

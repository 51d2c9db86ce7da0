"""Tests for LocalLimitStore.active_bans_at_once: the ban check an event loop may make.

It must answer from SQLite without ever waiting: not for a write in progress in another
process (WAL readers do not wait), not for another thread using the same quick connection.
What it read is kept until a ban changes anywhere (the store's change mark) or REREAD passes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.clock import FakeClock
from tests.support.sqlite import quick_read_elsewhere, write_in_progress

from sendgate.store.local.changes import REREAD
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


def test_a_kept_read_gives_way_to_another_process_s_ban_and_unban(
    store: LocalLimitStore, tmp_path: Path
) -> None:
    elsewhere = LocalLimitStore(tmp_path / "limits.db", clock=FakeClock())
    try:
        assert store.active_bans_at_once(["net:a"]) == []  # read, and kept
        ban = elsewhere.ban("net:a", 60, "host_failures", memory=MEMORY)
        assert store.active_bans_at_once(["net:a"]) == [ban]
        assert elsewhere.unban("net:a")
        assert store.active_bans_at_once(["net:a"]) == []
    finally:
        elsewhere.close()


def test_a_kept_ban_ends_with_the_clock(tmp_path: Path) -> None:
    clock = FakeClock()
    store = LocalLimitStore(tmp_path / "limits.db", clock=clock)
    try:
        ban = store.ban("net:a", 60, "host_failures", memory=MEMORY)
        assert store.active_bans_at_once(["net:a"]) == [ban]
        clock.advance(60)
        assert store.active_bans_at_once(["net:a"]) == []
    finally:
        store.close()


def test_a_change_that_renewed_no_mark_is_read_within_the_reread_time(
    store: LocalLimitStore, tmp_path: Path
) -> None:
    """A writer that died between its commit and its mark: missed for REREAD seconds at most."""
    kept_at = [100.0]
    store._bans_kept.clock = lambda: kept_at[0]
    assert store.active_bans_at_once(["net:a"]) == []
    with sqlite3.connect(tmp_path / "limits.db") as db:
        db.execute(
            "INSERT INTO bans (key, since, until, reason, offences, expires)"
            " VALUES ('net:a', 0, 9e12, 'manual', 1, 9e12)"
        )
    assert store.active_bans_at_once(["net:a"]) == []  # kept: nothing said it changed
    kept_at[0] += REREAD
    found = store.active_bans_at_once(["net:a"])
    assert found is not None
    assert [ban.key for ban in found] == ["net:a"]

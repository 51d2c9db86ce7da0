"""Tests for sendgate.store.local.limits beyond the contract: pruning, the file, bad arguments."""

from __future__ import annotations

import sqlite3
import stat
from contextlib import closing
from pathlib import Path

import pytest
from tests.support.clock import FakeClock

from sendgate.errors import StoreError
from sendgate.store.local import limits as local_limits
from sendgate.store.local.limits import SCHEMA_VERSION, LocalLimitStore


def rows(path: Path, table: str) -> int:
    with closing(sqlite3.connect(path)) as raw:
        return int(raw.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608


def test_expired_rows_of_every_key_are_pruned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_limits, "PRUNE_EVERY", 4)
    path = tmp_path / "limits.db"
    clock = FakeClock()
    store = LocalLimitStore(path, clock=clock)
    try:
        store.record("attacker", "a", 60)  # write 1
        store.take("rate", 1, 60)  # write 2
        store.ban("ban", 60, "x", memory=60)  # write 3
        assert (rows(path, "members"), rows(path, "rates"), rows(path, "bans")) == (1, 1, 1)
        clock.advance(121)  # past every window, rate period and ban memory
        store.record("someone-else", "b", 60)  # write 4 prunes
        assert (rows(path, "members"), rows(path, "rates"), rows(path, "bans")) == (1, 0, 0)
    finally:
        store.close()


def test_live_rows_survive_a_prune(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_limits, "PRUNE_EVERY", 1)
    store = LocalLimitStore(tmp_path / "limits.db", clock=FakeClock())
    try:
        store.ban("ban", 60, "x", memory=3600)
        store.record("k", "a", 60)
        assert store.ban_of("ban") is not None
        assert store.count("k", 60) == 1
    finally:
        store.close()


@pytest.mark.parametrize(("limit", "period", "cost"), [(0, 60, 1), (1, 0, 1), (1, 60, 0)])
def test_a_meaningless_rate_is_a_bug(tmp_path: Path, limit: int, period: float, cost: int) -> None:
    store = LocalLimitStore(tmp_path / "limits.db")
    try:
        with pytest.raises(ValueError, match="a rate needs"):
            store.take("k", limit, period, cost)
    finally:
        store.close()


def test_the_file_is_owner_only_versioned_and_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "limits.db"
    LocalLimitStore(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with closing(sqlite3.connect(path)) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_closed_store_fails_with_a_one_line_error(tmp_path: Path) -> None:
    store = LocalLimitStore(tmp_path / "limits.db")
    store.close()
    with pytest.raises(StoreError, match=r"^limit store .*limits\.db: Cannot operate"):
        store.count("k", 60)

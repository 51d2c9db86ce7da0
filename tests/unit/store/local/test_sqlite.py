"""Tests for `Database`'s schema versions: creation, upgrades step by step, refusals."""

import sqlite3
import threading
from collections.abc import Mapping, Sequence
from contextlib import closing
from pathlib import Path

import pytest

from sendgate.errors import StoreError
from sendgate.store.local.sqlite import Database

V1 = ("CREATE TABLE things (name TEXT PRIMARY KEY) STRICT",)
V3 = (
    "CREATE TABLE things (name TEXT PRIMARY KEY, size INTEGER NOT NULL DEFAULT 0) STRICT",
    "CREATE TABLE notes (text TEXT NOT NULL) STRICT",
)
MIGRATIONS = {
    1: ("ALTER TABLE things ADD COLUMN size INTEGER NOT NULL DEFAULT 0",),
    2: ("CREATE TABLE notes (text TEXT NOT NULL) STRICT",),
}


def open_db(
    path: Path,
    schema: Sequence[str],
    version: int,
    migrations: Mapping[int, Sequence[str]] | None = None,
) -> Database:
    return Database(path, name="test store", schema=schema, version=version, migrations=migrations)


def user_version(path: Path) -> int:
    with closing(sqlite3.connect(path)) as raw:
        version: int = raw.execute("PRAGMA user_version").fetchone()[0]
    return version


def columns(path: Path, table: str) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(path)) as raw:
        return [tuple(row) for row in raw.execute(f"PRAGMA table_info({table})")]


def make_v1(path: Path) -> None:
    old = open_db(path, V1, 1)
    with old.writing() as db:
        db.execute("INSERT INTO things (name) VALUES ('kept')")
    old.close()


def test_a_new_file_gets_the_current_schema_directly(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    open_db(path, V3, 3, MIGRATIONS).close()
    assert user_version(path) == 3
    assert [column[1] for column in columns(path, "things")] == ["name", "size"]


def test_an_old_file_is_upgraded_step_by_step_keeping_its_rows(tmp_path: Path) -> None:
    old, new = tmp_path / "old.db", tmp_path / "new.db"
    make_v1(old)
    upgraded = open_db(old, V3, 3, MIGRATIONS)
    with upgraded.reading() as db:
        assert db.execute("SELECT name, size FROM things").fetchall() == [("kept", 0)]
        assert db.execute("SELECT count(*) FROM notes").fetchone() == (0,)
    upgraded.close()
    assert user_version(old) == 3
    open_db(new, V3, 3, MIGRATIONS).close()
    assert columns(old, "things") == columns(new, "things")
    assert columns(old, "notes") == columns(new, "notes")


def test_an_upgrade_runs_once_however_many_open_the_file_at_once(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    make_v1(path)
    start = threading.Barrier(4)
    errors: list[BaseException] = []
    opened: list[Database] = []

    def upgrade() -> None:
        start.wait()
        try:
            opened.append(open_db(path, V3, 3, MIGRATIONS))
        except BaseException as exc:  # reported to the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=upgrade) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for database in opened:
        database.close()
    # A second ALTER TABLE ADD COLUMN would have failed with "duplicate column name".
    assert errors == []
    assert user_version(path) == 3


def test_a_failing_upgrade_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    make_v1(path)
    broken = {1: MIGRATIONS[1], 2: ("CREATE TABLE things (oops TEXT) STRICT",)}
    with pytest.raises(StoreError, match=r"old\.db: table things already exists$"):
        open_db(path, V3, 3, broken)
    assert user_version(path) == 1
    assert [column[1] for column in columns(path, "things")] == ["name"]


def test_a_newer_file_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "newer.db"
    open_db(path, V3, 3, MIGRATIONS).close()
    with pytest.raises(StoreError) as caught:
        open_db(path, V1, 1)
    assert str(caught.value) == (
        f"test store {path} has schema version 3, this sendgate knows version 1"
    )


def test_an_old_file_without_a_way_up_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    make_v1(path)
    with pytest.raises(StoreError, match=r"has schema version 1, this sendgate knows version 3$"):
        open_db(path, V3, 3, {2: MIGRATIONS[2]})
    assert user_version(path) == 1

"""Tests for the SQLite user store beyond the contract: files, modes, schema, errors, threads."""

import sqlite3
import stat
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from sendgate.errors import SendgateError
from sendgate.store.local.users import SCHEMA_VERSION, LocalUserStore
from sendgate.store.users import UserStore

HASH = "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g"
OTHER_HASH = "$argon2id$v=19$m=8,t=1,p=1$cGVwcGVycGVwcGVy$b3RoZXJoYXNo"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "users.sqlite"


@pytest.fixture
def store(db_path: Path) -> Iterator[LocalUserStore]:
    opened = LocalUserStore(db_path)
    yield opened
    opened.close()


def test_satisfies_the_protocol(store: LocalUserStore) -> None:
    users: UserStore = store  # mypy checks the structural match
    assert users.list_users() == []


def test_concurrent_writers_in_threads_and_instances(db_path: Path) -> None:
    stores = [LocalUserStore(db_path) for _ in range(2)]
    per_thread = 20
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def add_users(store: LocalUserStore, thread: int) -> None:
        start.wait()
        try:
            for number in range(per_thread):
                store.add_user(f"user{thread}-{number}@example.org", HASH)
        except BaseException as exc:  # reported to the main thread below
            errors.append(exc)

    threads = [
        threading.Thread(target=add_users, args=(stores[index % 2], index)) for index in range(4)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert len(stores[0].list_users()) == 4 * per_thread
    finally:
        for store in stores:
            store.close()


def test_new_database_files_are_owner_only(store: LocalUserStore, db_path: Path) -> None:
    store.add_user("alice@example.org", HASH)  # a write, so the -wal file exists
    wal = db_path.with_name(db_path.name + "-wal")
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(wal.stat().st_mode) == 0o600


def test_existing_file_mode_is_left_alone(db_path: Path) -> None:
    db_path.touch()
    db_path.chmod(0o640)
    LocalUserStore(db_path).close()
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o640


def test_schema_is_versioned_and_in_wal_mode(store: LocalUserStore, db_path: Path) -> None:
    with closing(sqlite3.connect(db_path)) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_reopening_keeps_the_data(db_path: Path) -> None:
    first = LocalUserStore(db_path)
    first.add_user("alice@example.org", HASH)
    first.close()
    reopened = LocalUserStore(db_path)
    try:
        assert reopened.get_user("alice@example.org") is not None
    finally:
        reopened.close()


def test_newer_schema_is_refused(db_path: Path) -> None:
    raw = sqlite3.connect(db_path)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(SendgateError, match=r"users\.sqlite has schema version 2,") as caught:
        LocalUserStore(db_path)
    assert "\n" not in str(caught.value)


def test_file_that_is_not_a_database_is_refused(db_path: Path) -> None:
    db_path.write_bytes(b"this is not an SQLite database, just some text" * 100)
    with pytest.raises(SendgateError, match=r"users\.sqlite: file is not a database$"):
        LocalUserStore(db_path)


def test_missing_directory_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "users.sqlite"
    with pytest.raises(
        SendgateError, match=r"^cannot open user store .*users\.sqlite: No such file or directory$"
    ):
        LocalUserStore(missing)


def test_closing_twice_is_harmless(db_path: Path) -> None:
    store = LocalUserStore(db_path)
    store.close()
    store.close()
    with pytest.raises(SendgateError, match=r"users\.sqlite: Cannot operate on a closed database"):
        store.get_user("alice@example.org")

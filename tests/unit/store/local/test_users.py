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
from sendgate.store.users import UserRecord, UserSettings, UserStore

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
    with pytest.raises(SendgateError) as caught:
        LocalUserStore(db_path)
    assert str(caught.value) == (
        f"user store {db_path} has schema version {SCHEMA_VERSION + 1},"
        f" this sendgate knows version {SCHEMA_VERSION}"
    )


# The statements of the release before schema version 2, frozen here as that release ran them.
V1_SCHEMA = (
    """CREATE TABLE users (
        username TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        generation INTEGER NOT NULL
    ) STRICT""",
    """CREATE TABLE addresses (
        address TEXT PRIMARY KEY,
        username TEXT NOT NULL REFERENCES users (username) ON DELETE CASCADE
    ) STRICT""",
    "CREATE INDEX addresses_by_username ON addresses (username)",
)


def make_v1_file(path: Path) -> None:
    with closing(sqlite3.connect(path, isolation_level=None)) as raw:
        raw.execute("PRAGMA journal_mode = WAL")
        for statement in V1_SCHEMA:
            raw.execute(statement)
        raw.execute("INSERT INTO users VALUES ('alice@example.org', ?, 3)", (HASH,))
        raw.execute("INSERT INTO addresses VALUES ('alice@example.org', 'alice@example.org')")
        raw.execute("INSERT INTO addresses VALUES ('@example.net', 'alice@example.org')")
        raw.execute("PRAGMA user_version = 1")


def schema_of(path: Path) -> dict[str, list[tuple[object, ...]]]:
    """Columns, foreign keys and indexes of every table, comparable across ALTER TABLE."""
    with closing(sqlite3.connect(path)) as raw:
        tables = [
            row[0] for row in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
        found: dict[str, list[tuple[object, ...]]] = {}
        for table in sorted(tables):
            found[table] = [
                *(("column", *row) for row in raw.execute(f"PRAGMA table_info({table})")),
                *(("key", *row) for row in raw.execute(f"PRAGMA foreign_key_list({table})")),
                # Without the first field (seq): the order indexes were made in may differ.
                *(("index", *row[1:]) for row in raw.execute(f"PRAGMA index_list({table})")),
            ]
        return found


def test_a_version_1_file_is_upgraded_in_place(db_path: Path, tmp_path: Path) -> None:
    make_v1_file(db_path)
    store = LocalUserStore(db_path)
    try:
        alice = store.get_user("alice@example.org")
        assert alice == UserRecord(
            username="alice@example.org",
            password_hash=HASH,
            addresses=("@example.net", "alice@example.org"),
            generation=3,
            settings=UserSettings(),
        )
        store.set_settings("alice@example.org", UserSettings(messages_per_day=5))
        store.add_app_password("alice@example.org", "phone", OTHER_HASH, "0a1b2c3d", 10.0)
        store.note_login("alice@example.org", "192.0.2.0/24", 20.0, memory=100.0, recent=10.0)
        store.set_flag("alice@example.org", "test", 30.0)
    finally:
        store.close()
    with closing(sqlite3.connect(db_path)) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    fresh = tmp_path / "fresh.sqlite"
    LocalUserStore(fresh).close()
    assert schema_of(db_path) == schema_of(fresh)
    reopened = LocalUserStore(db_path)  # a second open finds version 2 and changes nothing
    try:
        user = reopened.get_user("alice@example.org")
        assert user is not None
        assert user.settings == UserSettings(messages_per_day=5)
    finally:
        reopened.close()


BAD_LIMIT = "messages_per_hour must be a non-negative integer or unset"


@pytest.mark.parametrize(
    ("stored", "reason"),
    [
        ("not json", "Expecting value: line 1 column 1 (char 0)"),
        ("[]", "not a JSON object"),
        ('{"messages_per_hour": -1}', BAD_LIMIT),
        ('{"messages_per_hour": 1.5}', BAD_LIMIT),
        ('{"messages_per_hour": true}', BAD_LIMIT),
        ('{"app_passwords_only": 1}', "app_passwords_only must be true or false"),
        ('{"app_passwords_only": null}', "app_passwords_only must be true or false"),
        ('{"sign_in_notice": "yes"}', "sign_in_notice must be true, false or unset"),
        ('{"hourly": 5}', "unknown setting 'hourly'"),
    ],
)
def test_damaged_settings_are_refused_not_ignored(
    store: LocalUserStore, db_path: Path, stored: str, reason: str
) -> None:
    store.add_user("alice@example.org", HASH)
    with closing(sqlite3.connect(db_path)) as raw, raw:
        raw.execute("UPDATE users SET settings = ?", (stored,))
    with pytest.raises(SendgateError) as caught:
        store.get_user("alice@example.org")
    assert str(caught.value) == (
        f"user store {db_path}: settings of user alice@example.org are not valid: {reason}"
    )
    with pytest.raises(SendgateError, match="are not valid"):
        store.list_users()


def test_settings_are_stored_as_the_changed_values_only(
    store: LocalUserStore, db_path: Path
) -> None:
    store.add_user("alice@example.org", HASH)
    store.set_settings(
        "alice@example.org",
        UserSettings(app_passwords_only=True, sign_in_notice=False, recipients_per_day=0),
    )
    with closing(sqlite3.connect(db_path)) as raw:
        stored = raw.execute("SELECT settings FROM users").fetchone()[0]
    assert stored == '{"app_passwords_only":true,"recipients_per_day":0,"sign_in_notice":false}'
    store.set_settings("alice@example.org", UserSettings())
    with closing(sqlite3.connect(db_path)) as raw:
        assert raw.execute("SELECT settings FROM users").fetchone()[0] == "{}"


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

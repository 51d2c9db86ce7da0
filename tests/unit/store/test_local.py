"""Tests for the SQLite user store: CRUD, address ownership, generations, sharing, file mode."""

import sqlite3
import stat
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from sendgate.errors import SendgateError, UserError
from sendgate.store import UserRecord, UserStore
from sendgate.store.local import SCHEMA_VERSION, LocalUserStore

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


def test_added_user_owns_its_own_address(store: LocalUserStore) -> None:
    store.add_user("alice@example.org", HASH)
    assert store.get_user("alice@example.org") == UserRecord(
        username="alice@example.org",
        password_hash=HASH,
        addresses=("alice@example.org",),
        generation=1,
    )


def test_unknown_user_is_none(store: LocalUserStore) -> None:
    assert store.get_user("nobody@example.org") is None


def test_case_is_folded_on_the_way_in(store: LocalUserStore) -> None:
    store.add_user("Alice@Example.ORG", HASH)
    store.add_address("ALICE@example.org", "Sales@EXAMPLE.org")
    user = store.get_user("aLiCe@eXaMpLe.OrG")
    assert user is not None
    assert user.username == "alice@example.org"
    assert user.addresses == ("alice@example.org", "sales@example.org")


def test_unicode_domains_are_lowered_not_casefolded(store: LocalUserStore) -> None:
    store.add_user("anna@STRAẞE.de", HASH)
    assert store.get_user("anna@straße.de") is not None
    assert store.get_user("anna@strasse.de") is None


def test_password_hash_is_not_in_repr(store: LocalUserStore) -> None:
    store.add_user("alice@example.org", HASH)
    assert HASH not in repr(store.get_user("alice@example.org"))


def test_duplicate_user_is_refused(store: LocalUserStore) -> None:
    store.add_user("alice@example.org", HASH)
    with pytest.raises(UserError, match=r"^user alice@example\.org already exists$"):
        store.add_user("ALICE@example.org", OTHER_HASH)
    user = store.get_user("alice@example.org")
    assert user is not None
    assert user.password_hash == HASH


def test_new_user_whose_address_is_owned_is_refused(store: LocalUserStore) -> None:
    store.add_user("bob@example.org", HASH)
    store.add_address("bob@example.org", "alice@example.org")
    with pytest.raises(
        UserError, match=r"^address alice@example\.org is already owned by user bob@example\.org$"
    ):
        store.add_user("alice@example.org", HASH)
    assert store.get_user("alice@example.org") is None  # the transaction rolled back


def test_list_users_is_sorted_with_addresses(store: LocalUserStore) -> None:
    store.add_user("carol@example.org", HASH)
    store.add_user("alice@example.org", HASH)
    store.add_user("bob@example.org", OTHER_HASH)
    store.add_address("alice@example.org", "@example.net")
    users = store.list_users()
    assert [user.username for user in users] == [
        "alice@example.org",
        "bob@example.org",
        "carol@example.org",
    ]
    assert users[0].addresses == ("@example.net", "alice@example.org")
    assert users[1].password_hash == OTHER_HASH


def test_set_password_hash_bumps_generation(store: LocalUserStore) -> None:
    store.add_user("alice@example.org", HASH)
    store.set_password_hash("alice@example.org", OTHER_HASH)
    store.set_password_hash("alice@example.org", HASH)
    user = store.get_user("alice@example.org")
    assert user is not None
    assert (user.password_hash, user.generation) == (HASH, 3)


def test_set_password_hash_of_unknown_user_is_refused(store: LocalUserStore) -> None:
    with pytest.raises(UserError, match=r"^unknown user nobody@example\.org$"):
        store.set_password_hash("nobody@example.org", HASH)


def test_remove_user_frees_its_addresses(store: LocalUserStore) -> None:
    store.add_user("alice@example.org", HASH)
    store.add_address("alice@example.org", "sales@example.org")
    store.remove_user("alice@example.org")
    assert store.get_user("alice@example.org") is None
    store.add_user("bob@example.org", HASH)
    store.add_address("bob@example.org", "sales@example.org")  # no longer owned
    store.add_address("bob@example.org", "alice@example.org")
    user = store.get_user("bob@example.org")
    assert user is not None
    assert user.addresses == ("alice@example.org", "bob@example.org", "sales@example.org")


def test_remove_unknown_user_is_refused(store: LocalUserStore) -> None:
    with pytest.raises(UserError, match=r"^unknown user nobody@example\.org$"):
        store.remove_user("nobody@example.org")


def test_add_address_to_unknown_user_is_refused(store: LocalUserStore) -> None:
    with pytest.raises(UserError, match=r"^unknown user nobody@example\.org$"):
        store.add_address("nobody@example.org", "@example.org")


def test_an_address_has_one_owner(store: LocalUserStore) -> None:
    store.add_user("alice@example.org", HASH)
    store.add_user("bob@example.org", HASH)
    store.add_address("alice@example.org", "@example.org")
    with pytest.raises(UserError, match=r"^address @example\.org is already owned by user alice"):
        store.add_address("bob@example.org", "@EXAMPLE.org")
    with pytest.raises(UserError, match=r"already owned by user alice@example\.org$"):
        store.add_address("alice@example.org", "@example.org")
    # Ownership is exact: a domain entry does not stop another user owning one mailbox in it.
    store.add_address("bob@example.org", "info@example.org")
    bob = store.get_user("bob@example.org")
    assert bob is not None
    assert bob.addresses == ("bob@example.org", "info@example.org")


def test_remove_address(store: LocalUserStore) -> None:
    store.add_user("alice@example.org", HASH)
    store.add_address("alice@example.org", "sales@example.org")
    store.remove_address("alice@example.org", "SALES@example.org")
    user = store.get_user("alice@example.org")
    assert user is not None
    assert user.addresses == ("alice@example.org",)


def test_remove_address_not_owned_is_refused(store: LocalUserStore) -> None:
    store.add_user("alice@example.org", HASH)
    store.add_user("bob@example.org", HASH)
    with pytest.raises(
        UserError, match=r"^user bob@example\.org does not own address alice@example\.org$"
    ):
        store.remove_address("bob@example.org", "alice@example.org")
    alice = store.get_user("alice@example.org")
    assert alice is not None
    assert alice.addresses == ("alice@example.org",)


def test_two_instances_on_one_file_see_each_others_writes(db_path: Path) -> None:
    first = LocalUserStore(db_path)
    second = LocalUserStore(db_path)
    try:
        first.add_user("alice@example.org", HASH)
        assert second.get_user("alice@example.org") is not None
        second.set_password_hash("alice@example.org", OTHER_HASH)
        user = first.get_user("alice@example.org")
        assert user is not None
        assert (user.password_hash, user.generation) == (OTHER_HASH, 2)
        with pytest.raises(UserError, match="already exists"):
            second.add_user("alice@example.org", HASH)
    finally:
        first.close()
        second.close()


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

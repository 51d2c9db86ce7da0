"""Tests for LocalUserStore.login_at_once: the user lookup an event loop may make.

Like the ban check at accept (test_limits_at_once), it must answer from SQLite without ever
waiting: not for a write in progress in another process, not for another thread. What it read
is kept until any write to the store (its change mark) or REREAD seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.sqlite import quick_read_elsewhere, write_in_progress

from sendgate.store.local.users import LocalUserStore

HASH = "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g"
NEW_HASH = "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$bmV3bmV3bmV3"
ALICE = "alice@example.org"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LocalUserStore]:
    made = LocalUserStore(tmp_path / "users.db")
    made.add_user(ALICE, HASH)
    made.add_app_password(ALICE, "phone", HASH, "lookup1", 1.0)
    yield made
    made.close()


def test_it_answers_with_the_user_and_its_app_passwords(store: LocalUserStore) -> None:
    assert store.login_at_once(ALICE) == (store.get_user(ALICE), store.app_passwords(ALICE))
    assert store.login_at_once("nobody@example.org") is None


def test_a_write_in_progress_elsewhere_does_not_hold_it_up(
    store: LocalUserStore, tmp_path: Path
) -> None:
    # Not committed: the app password stays.
    with write_in_progress(tmp_path / "users.db", "DELETE FROM app_passwords"):
        found = store.login_at_once(ALICE)
        assert found is not None
        assert [app.label for app in found[1]] == ["phone"]


def test_it_gives_up_rather_than_wait_for_another_thread(store: LocalUserStore) -> None:
    with quick_read_elsewhere(store._db):
        assert store.login_at_once(ALICE) is None
    assert store.login_at_once(ALICE) is not None


def test_a_closed_store_answers_nothing_at_once(store: LocalUserStore) -> None:
    store.close()
    assert store.login_at_once(ALICE) is None


def test_a_kept_read_gives_way_to_another_process_s_change(
    store: LocalUserStore, tmp_path: Path
) -> None:
    elsewhere = LocalUserStore(tmp_path / "users.db")
    try:
        before = store.login_at_once(ALICE)  # read, and kept
        assert before is not None
        elsewhere.set_password_hash(ALICE, NEW_HASH)
        after = store.login_at_once(ALICE)
        assert after is not None
        assert after[0].password_hash == NEW_HASH
        assert after[0].generation > before[0].generation
        elsewhere.remove_app_password(ALICE, "phone")
        assert store.login_at_once(ALICE) == (elsewhere.get_user(ALICE), [])
    finally:
        elsewhere.close()


def test_a_kept_read_is_the_store_s_answer_until_something_changes(
    store: LocalUserStore,
) -> None:
    first = store.login_at_once(ALICE)
    assert first is not None
    first[1].clear()  # what a caller does with its copy is not kept
    assert store.login_at_once(ALICE) == (store.get_user(ALICE), store.app_passwords(ALICE))

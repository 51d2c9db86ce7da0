"""The UserStore contract: what every user backend must do (run once per backend)."""

import pytest
from tests.contracts.backends import StoreBackend

from sendgate.errors import UserError
from sendgate.store.users import UserRecord, UserSettings, UserStore

HASH = "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g"
OTHER_HASH = "$argon2id$v=19$m=8,t=1,p=1$cGVwcGVycGVwcGVy$b3RoZXJoYXNo"

STORE = "users"  # the backends that offer it run this module (conftest.py)


@pytest.fixture
def store(backend: StoreBackend) -> UserStore:
    return backend.users()


def test_added_user_owns_its_own_address(store: UserStore) -> None:
    store.add_user("alice@example.org", HASH)
    assert store.get_user("alice@example.org") == UserRecord(
        username="alice@example.org",
        password_hash=HASH,
        addresses=("alice@example.org",),
        generation=1,
        settings=UserSettings(),
    )


def test_unknown_user_is_none(store: UserStore) -> None:
    assert store.get_user("nobody@example.org") is None


def test_case_is_folded_on_the_way_in(store: UserStore) -> None:
    store.add_user("Alice@Example.ORG", HASH)
    store.add_address("ALICE@example.org", "Sales@EXAMPLE.org")
    user = store.get_user("aLiCe@eXaMpLe.OrG")
    assert user is not None
    assert user.username == "alice@example.org"
    assert user.addresses == ("alice@example.org", "sales@example.org")


def test_unicode_domains_are_lowered_not_casefolded(store: UserStore) -> None:
    store.add_user("anna@STRAẞE.de", HASH)
    assert store.get_user("anna@straße.de") is not None
    assert store.get_user("anna@strasse.de") is None


def test_password_hash_is_not_in_repr(store: UserStore) -> None:
    store.add_user("alice@example.org", HASH)
    assert HASH not in repr(store.get_user("alice@example.org"))


def test_duplicate_user_is_refused(store: UserStore) -> None:
    store.add_user("alice@example.org", HASH)
    with pytest.raises(UserError, match=r"^user alice@example\.org already exists$"):
        store.add_user("ALICE@example.org", OTHER_HASH)
    user = store.get_user("alice@example.org")
    assert user is not None
    assert user.password_hash == HASH


def test_new_user_whose_address_is_owned_is_refused(store: UserStore) -> None:
    store.add_user("bob@example.org", HASH)
    store.add_address("bob@example.org", "alice@example.org")
    with pytest.raises(
        UserError, match=r"^address alice@example\.org is already owned by user bob@example\.org$"
    ):
        store.add_user("alice@example.org", HASH)
    assert store.get_user("alice@example.org") is None  # the transaction rolled back


def test_list_users_is_sorted_with_addresses(store: UserStore) -> None:
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


def test_set_password_hash_bumps_generation(store: UserStore) -> None:
    store.add_user("alice@example.org", HASH)
    store.set_password_hash("alice@example.org", OTHER_HASH)
    store.set_password_hash("alice@example.org", HASH)
    user = store.get_user("alice@example.org")
    assert user is not None
    assert (user.password_hash, user.generation) == (HASH, 3)


def test_set_password_hash_of_unknown_user_is_refused(store: UserStore) -> None:
    with pytest.raises(UserError, match=r"^unknown user nobody@example\.org$"):
        store.set_password_hash("nobody@example.org", HASH)


def test_remove_user_frees_its_addresses(store: UserStore) -> None:
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


def test_remove_unknown_user_is_refused(store: UserStore) -> None:
    with pytest.raises(UserError, match=r"^unknown user nobody@example\.org$"):
        store.remove_user("nobody@example.org")


def test_add_address_to_unknown_user_is_refused(store: UserStore) -> None:
    with pytest.raises(UserError, match=r"^unknown user nobody@example\.org$"):
        store.add_address("nobody@example.org", "@example.org")


def test_an_address_has_one_owner(store: UserStore) -> None:
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


def test_remove_address(store: UserStore) -> None:
    store.add_user("alice@example.org", HASH)
    store.add_address("alice@example.org", "sales@example.org")
    store.remove_address("alice@example.org", "SALES@example.org")
    user = store.get_user("alice@example.org")
    assert user is not None
    assert user.addresses == ("alice@example.org",)


def test_remove_address_not_owned_is_refused(store: UserStore) -> None:
    store.add_user("alice@example.org", HASH)
    store.add_user("bob@example.org", HASH)
    with pytest.raises(
        UserError, match=r"^user bob@example\.org does not own address alice@example\.org$"
    ):
        store.remove_address("bob@example.org", "alice@example.org")
    alice = store.get_user("alice@example.org")
    assert alice is not None
    assert alice.addresses == ("alice@example.org",)


def test_two_handles_see_each_others_writes(backend: StoreBackend) -> None:
    first, second = backend.users(), backend.users()
    first.add_user("alice@example.org", HASH)
    assert second.get_user("alice@example.org") is not None
    second.set_password_hash("alice@example.org", OTHER_HASH)
    user = first.get_user("alice@example.org")
    assert user is not None
    assert (user.password_hash, user.generation) == (OTHER_HASH, 2)
    with pytest.raises(UserError, match="already exists"):
        second.add_user("alice@example.org", HASH)


def test_login_at_once_answers_as_get_user_and_app_passwords_or_not_at_all(
    store: UserStore,
) -> None:
    store.add_user("alice@example.org", HASH)
    store.add_address("alice@example.org", "sales@example.org")
    store.add_app_password("alice@example.org", "phone", OTHER_HASH, "lookup1", 1.0)
    for asked in ("alice@example.org", "ALICE@example.org"):
        quick = store.login_at_once(asked)
        full = (store.get_user(asked), store.app_passwords(asked))
        assert quick is None or quick == full
    assert store.login_at_once("nobody@example.org") is None

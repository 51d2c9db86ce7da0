"""The UserStore contract for account state: settings, app passwords, known networks, flags."""

import pytest
from tests.contracts.backends import StoreBackend

from sendgate.errors import UserError
from sendgate.store.users import (
    AppPassword,
    Flag,
    KnownNetwork,
    LoginNote,
    UserSettings,
    UserStore,
)

HASH = "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g"
OTHER_HASH = "$argon2id$v=19$m=8,t=1,p=1$cGVwcGVycGVwcGVy$b3RoZXJoYXNo"

STORE = "users"  # the backends that offer it run this module (conftest.py)


@pytest.fixture
def store(backend: StoreBackend) -> UserStore:
    return backend.users()


# --- settings ---------------------------------------------------------------------------------

ALICE = "alice@example.org"
T = 1_800_000_000.0
NET1, NET2, NET3 = "192.0.2.0/24", "198.51.100.0/24", "2001:db8::/48"
DAY = 86400.0


@pytest.fixture
def alice(store: UserStore) -> UserStore:
    store.add_user(ALICE, HASH)
    return store


def test_settings_round_trip_and_survive_a_password_change(alice: UserStore) -> None:
    settings = UserSettings(
        app_passwords_only=True,
        sign_in_notice=False,
        messages_per_hour=0,
        messages_per_day=10,
        recipients_per_message=5,
        recipients_per_day=100,
        new_recipients_per_day=7,
    )
    alice.set_settings("Alice@Example.org", settings)
    alice.set_password_hash(ALICE, OTHER_HASH)
    user = alice.get_user(ALICE)
    assert user is not None
    assert user.settings == settings
    assert alice.list_users()[0].settings == settings
    alice.set_settings(ALICE, UserSettings(sign_in_notice=True))
    user = alice.get_user(ALICE)
    assert user is not None
    assert user.settings == UserSettings(sign_in_notice=True)


def test_settings_of_unknown_user_are_refused(store: UserStore) -> None:
    with pytest.raises(UserError, match=r"^unknown user nobody@example\.org$"):
        store.set_settings("nobody@example.org", UserSettings(messages_per_day=1))


@pytest.mark.parametrize(
    "bad",
    [
        {"messages_per_day": -1},
        {"recipients_per_day": 1.0},
        {"messages_per_hour": True},
        {"sign_in_notice": 1},
        {"app_passwords_only": None},
    ],
    ids=str,
)
def test_settings_refuse_values_no_store_could_keep(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must be"):
        UserSettings(**bad)  # type: ignore[arg-type]


# --- app passwords ----------------------------------------------------------------------------


def test_app_passwords_are_listed_by_label(alice: UserStore) -> None:
    alice.add_app_password(ALICE, "phone", HASH, "0a1b2c3d", T)
    alice.add_app_password("ALICE@example.org", "laptop", OTHER_HASH, "ffffffff", T + 1)
    assert alice.app_passwords("alice@EXAMPLE.org") == [
        AppPassword("laptop", OTHER_HASH, "ffffffff", T + 1, None),
        AppPassword("phone", HASH, "0a1b2c3d", T, None),
    ]
    assert HASH not in repr(alice.app_passwords(ALICE))


def test_app_passwords_of_unknown_user_are_empty(store: UserStore) -> None:
    assert store.app_passwords("nobody@example.org") == []


def test_app_password_for_unknown_user_is_refused(store: UserStore) -> None:
    with pytest.raises(UserError, match=r"^unknown user nobody@example\.org$"):
        store.add_app_password("nobody@example.org", "phone", HASH, "0a1b2c3d", T)


def test_app_password_labels_are_unique_per_user(alice: UserStore) -> None:
    alice.add_user("bob@example.org", HASH)
    alice.add_app_password(ALICE, "phone", HASH, "0a1b2c3d", T)
    with pytest.raises(
        UserError, match=r"^user alice@example\.org already has an app password labelled phone$"
    ):
        alice.add_app_password(ALICE, "phone", OTHER_HASH, "ffffffff", T + 1)
    alice.add_app_password("bob@example.org", "phone", OTHER_HASH, "ffffffff", T + 1)
    alice.add_app_password(ALICE, "Phone", OTHER_HASH, "ffffffff", T + 1)  # labels keep case
    assert [app.label for app in alice.app_passwords(ALICE)] == ["Phone", "phone"]
    assert alice.app_passwords(ALICE)[1].password_hash == HASH


def test_remove_app_password(alice: UserStore) -> None:
    alice.add_app_password(ALICE, "phone", HASH, "0a1b2c3d", T)
    alice.add_app_password(ALICE, "laptop", HASH, "0a1b2c3e", T)
    alice.remove_app_password("ALICE@example.org", "phone")
    assert [app.label for app in alice.app_passwords(ALICE)] == ["laptop"]
    with pytest.raises(
        UserError, match=r"^user alice@example\.org has no app password labelled phone$"
    ):
        alice.remove_app_password(ALICE, "phone")


def test_touch_app_password_sets_last_used(alice: UserStore) -> None:
    alice.add_app_password(ALICE, "phone", HASH, "0a1b2c3d", T)
    alice.touch_app_password("Alice@example.org", "phone", T + 60)
    alice.touch_app_password(ALICE, "phone", T + 120)
    assert alice.app_passwords(ALICE)[0].last_used == T + 120
    alice.touch_app_password(ALICE, "gone", T + 180)  # no error
    alice.touch_app_password("nobody@example.org", "phone", T + 180)
    assert [app.last_used for app in alice.app_passwords(ALICE)] == [T + 120]


# --- known networks ---------------------------------------------------------------------------


def test_first_login_is_new_and_first(alice: UserStore) -> None:
    note = alice.note_login(ALICE, NET1, T, memory=30 * DAY, recent=3600)
    assert note == LoginNote(new=True, first=True, recent=1)
    assert alice.note_login(ALICE, NET1, T + 1, memory=30 * DAY, recent=3600) == LoginNote(
        new=False, first=False, recent=1
    )
    assert alice.note_login(ALICE, NET2, T + 2, memory=30 * DAY, recent=3600) == LoginNote(
        new=True, first=False, recent=2
    )


def test_recent_counts_networks_seen_less_than_recent_seconds_ago(alice: UserStore) -> None:
    alice.note_login(ALICE, NET1, T, memory=30 * DAY, recent=3600)
    alice.note_login(ALICE, NET2, T + 1, memory=30 * DAY, recent=3600)
    # NET1 was seen exactly 3600 s before: outside the window; NET2 3599 s before: inside.
    note = alice.note_login(ALICE, NET3, T + 3600, memory=30 * DAY, recent=3600)
    assert note == LoginNote(new=True, first=False, recent=2)
    note = alice.note_login(ALICE, NET3, T + 3601, memory=30 * DAY, recent=3600)
    assert note.recent == 1
    # A login again refreshes the network: it counts again.
    note = alice.note_login(ALICE, NET1, T + 3602, memory=30 * DAY, recent=3600)
    assert note == LoginNote(new=False, first=False, recent=2)


def test_memory_forgets_a_network_exactly_memory_seconds_after_its_last_login(
    alice: UserStore,
) -> None:
    memory = 30 * DAY
    alice.note_login(ALICE, NET1, T, memory=memory, recent=3600)
    assert alice.is_known(ALICE, NET1, T + memory - 1, memory=memory)
    assert alice.network_known(NET1, T + memory - 1, memory=memory)
    assert not alice.is_known(ALICE, NET1, T + memory, memory=memory)
    assert not alice.network_known(NET1, T + memory, memory=memory)
    assert alice.known_networks(ALICE, T + memory, memory=memory) == []


def test_a_login_just_inside_memory_is_not_new(alice: UserStore) -> None:
    memory = 30 * DAY
    alice.note_login(ALICE, NET1, T, memory=memory, recent=3600)
    note = alice.note_login(ALICE, NET1, T + memory - 1, memory=memory, recent=3600)
    assert note == LoginNote(new=False, first=False, recent=1)
    assert alice.known_networks(ALICE, T + memory, memory=memory) == [
        KnownNetwork(NET1, T, T + memory - 1)
    ]


def test_a_login_after_memory_starts_afresh(alice: UserStore) -> None:
    memory = 30 * DAY
    alice.note_login(ALICE, NET1, T, memory=memory, recent=3600)
    note = alice.note_login(ALICE, NET1, T + memory, memory=memory, recent=3600)
    assert note == LoginNote(new=True, first=True, recent=1)
    assert alice.known_networks(ALICE, T + memory, memory=memory) == [
        KnownNetwork(NET1, T + memory, T + memory)
    ]


def test_first_is_about_the_account_not_the_network(alice: UserStore) -> None:
    memory = 10 * DAY
    alice.note_login(ALICE, NET1, T, memory=memory, recent=3600)
    alice.note_login(ALICE, NET2, T + 5 * DAY, memory=memory, recent=3600)
    # NET1 is forgotten, NET2 still known: a login from NET1 is new but not first.
    note = alice.note_login(ALICE, NET1, T + 12 * DAY, memory=memory, recent=3600)
    assert note == LoginNote(new=True, first=False, recent=1)


def test_known_networks_most_recent_first(alice: UserStore) -> None:
    alice.note_login(ALICE, NET1, T, memory=30 * DAY, recent=3600)
    alice.note_login(ALICE, NET2, T + 10, memory=30 * DAY, recent=3600)
    alice.note_login(ALICE, NET3, T + 10, memory=30 * DAY, recent=3600)
    alice.note_login(ALICE, NET1, T + 5, memory=30 * DAY, recent=3600)  # out of order
    assert alice.known_networks("ALICE@example.org", T + 20, memory=30 * DAY) == [
        KnownNetwork(NET2, T + 10, T + 10),
        KnownNetwork(NET3, T + 10, T + 10),
        KnownNetwork(NET1, T, T + 5),
    ]
    # Narrower memory at reading time narrows the answer.
    assert alice.known_networks(ALICE, T + 20, memory=11) == [
        KnownNetwork(NET2, T + 10, T + 10),
        KnownNetwork(NET3, T + 10, T + 10),
    ]


def test_a_login_out_of_order_keeps_the_widest_span(alice: UserStore) -> None:
    alice.note_login(ALICE, NET1, T + 10, memory=30 * DAY, recent=3600)
    note = alice.note_login(ALICE, NET1, T, memory=30 * DAY, recent=3600)
    assert note.new is False
    assert alice.known_networks(ALICE, T + 10, memory=30 * DAY) == [KnownNetwork(NET1, T, T + 10)]


def test_known_networks_are_per_account_and_network_known_is_for_any(
    alice: UserStore,
) -> None:
    alice.add_user("bob@example.org", HASH)
    alice.note_login(ALICE, NET1, T, memory=30 * DAY, recent=3600)
    assert alice.is_known(ALICE, NET1, T, memory=30 * DAY)
    assert not alice.is_known("bob@example.org", NET1, T, memory=30 * DAY)
    assert not alice.is_known(ALICE, NET2, T, memory=30 * DAY)
    assert alice.network_known(NET1, T, memory=30 * DAY)
    assert not alice.network_known(NET2, T, memory=30 * DAY)
    note = alice.note_login("bob@example.org", NET1, T + 1, memory=30 * DAY, recent=3600)
    assert note == LoginNote(new=True, first=True, recent=1)
    assert alice.known_networks("bob@example.org", T + 1, memory=30 * DAY) == [
        KnownNetwork(NET1, T + 1, T + 1)
    ]


def test_note_login_of_unknown_user_records_nothing(store: UserStore) -> None:
    note = store.note_login("nobody@example.org", NET1, T, memory=30 * DAY, recent=3600)
    assert note == LoginNote(new=True, first=True, recent=1)
    assert not store.network_known(NET1, T, memory=30 * DAY)
    assert store.known_networks("nobody@example.org", T, memory=30 * DAY) == []


# --- flags ------------------------------------------------------------------------------------


def test_flag_is_kept_until_cleared(alice: UserStore) -> None:
    assert alice.flag_of(ALICE) is None
    flag = alice.set_flag("Alice@example.org", "sending_limit", T)
    assert flag == Flag(ALICE, T, "sending_limit")
    # A second flag keeps the first as it is: since and reason say when it started.
    assert alice.set_flag(ALICE, "networks", T + 10) == flag
    assert alice.flag_of("ALICE@example.org") == flag
    assert alice.clear_flag(ALICE) is True
    assert alice.flag_of(ALICE) is None
    assert alice.clear_flag(ALICE) is False
    assert alice.set_flag(ALICE, "networks", T + 20) == Flag(ALICE, T + 20, "networks")


def test_flags_lists_every_flag_by_username(alice: UserStore) -> None:
    alice.add_user("carol@example.org", HASH)
    alice.add_user("bob@example.org", HASH)
    alice.set_flag("carol@example.org", "networks", T)
    alice.set_flag(ALICE, "sending_limit", T + 1)
    assert alice.flags() == [
        Flag(ALICE, T + 1, "sending_limit"),
        Flag("carol@example.org", T, "networks"),
    ]


def test_flag_of_unknown_user_is_refused(store: UserStore) -> None:
    with pytest.raises(UserError, match=r"^unknown user nobody@example\.org$"):
        store.set_flag("nobody@example.org", "networks", T)
    assert store.flags() == []
    assert store.clear_flag("nobody@example.org") is False


# --- removing a user --------------------------------------------------------------------------


def test_removing_a_user_removes_everything_it_had(alice: UserStore) -> None:
    alice.add_user("bob@example.org", HASH)
    for name, network in ((ALICE, NET1), ("bob@example.org", NET2)):
        alice.add_app_password(name, "phone", HASH, "0a1b2c3d", T)
        alice.note_login(name, network, T, memory=DAY, recent=3600)
        alice.set_flag(name, "networks", T)
    alice.remove_user(ALICE)
    alice.add_user(ALICE, OTHER_HASH)  # a new account of the same name starts clean
    assert alice.app_passwords(ALICE) == []
    assert alice.known_networks(ALICE, T, memory=DAY) == []
    assert not alice.network_known(NET1, T, memory=DAY)
    assert alice.flag_of(ALICE) is None
    user = alice.get_user(ALICE)
    assert user is not None
    assert user.settings == UserSettings()
    # Bob's are untouched.
    assert [app.label for app in alice.app_passwords("bob@example.org")] == ["phone"]
    assert alice.network_known(NET2, T, memory=DAY)
    assert alice.flags() == [Flag("bob@example.org", T, "networks")]


def test_new_state_is_shared_between_handles(backend: StoreBackend) -> None:
    first, second = backend.users(), backend.users()
    first.add_user(ALICE, HASH)
    first.set_settings(ALICE, UserSettings(messages_per_day=3))
    first.add_app_password(ALICE, "phone", HASH, "0a1b2c3d", T)
    first.note_login(ALICE, NET1, T, memory=DAY, recent=3600)
    first.set_flag(ALICE, "networks", T)
    user = second.get_user(ALICE)
    assert user is not None
    assert user.settings == UserSettings(messages_per_day=3)
    assert [app.label for app in second.app_passwords(ALICE)] == ["phone"]
    assert second.is_known(ALICE, NET1, T, memory=DAY)
    assert second.flag_of(ALICE) == Flag(ALICE, T, "networks")

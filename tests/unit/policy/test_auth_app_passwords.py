"""Tests for app passwords at login: which hash is verified, always exactly one, last use."""

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from tests.support.clock import FakeClock
from tests.unit.policy.test_auth import CountingHasher

from sendgate.policy.app_passwords import generate, lookup_of
from sendgate.policy.auth import TOUCH_INTERVAL, Authenticator, AuthResult
from sendgate.store.local.users import LocalUserStore
from sendgate.store.users import AppPassword, UserRecord, UserSettings

ALICE = "alice@example.org"
PASSWORD = "correct horse battery staple"
PHONE = "abcde-fghij-klmno-pqrst"
LAPTOP = "zzzzz-yyyyy-xxxxx-wwwww"
T0 = 1_800_000_000.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def store(tmp_path: Path, hasher: CountingHasher) -> Iterator[LocalUserStore]:
    users = LocalUserStore(tmp_path / "users.sqlite")
    users.add_user(ALICE, hasher.hash(PASSWORD))
    for label, password in (("phone", PHONE), ("laptop", LAPTOP)):
        users.add_app_password(ALICE, label, hasher.hash(password), lookup_of(password), T0)
    yield users
    users.close()


def make_auth(
    store: LocalUserStore,
    hasher: CountingHasher,
    executor: ThreadPoolExecutor,
    clock: FakeClock,
    cache_ttl: float = 60.0,
) -> Authenticator:
    auth = Authenticator(store, hasher, executor, cache_ttl, clock)
    hasher.verified.clear()  # the dummy hash made above is not a verification
    return auth


@pytest.fixture
def auth(
    store: LocalUserStore, hasher: CountingHasher, executor: ThreadPoolExecutor, clock: FakeClock
) -> Authenticator:
    return make_auth(store, hasher, executor, clock)


def hash_of(store: LocalUserStore, label: str) -> str:
    return next(app.password_hash for app in store.app_passwords(ALICE) if app.label == label)


def main_hash(store: LocalUserStore) -> str:
    user = store.get_user(ALICE)
    assert user is not None
    return user.password_hash


def test_an_app_password_verifies_its_own_hash_only(
    auth: Authenticator, store: LocalUserStore, hasher: CountingHasher
) -> None:
    result = auth.verify_blocking(ALICE, PHONE)
    assert result.user is not None
    assert (result.app_password, result.cached) == ("phone", False)
    assert hasher.verified == [hash_of(store, "phone")]


def test_the_main_password_verifies_the_main_hash_only(
    auth: Authenticator, store: LocalUserStore, hasher: CountingHasher
) -> None:
    result = auth.verify_blocking(ALICE, PASSWORD)
    assert result.user is not None
    assert result.app_password is None
    assert hasher.verified == [main_hash(store)]


@pytest.mark.parametrize(
    ("username", "password", "only"),
    [
        pytest.param("nobody@example.org", PHONE, False, id="unknown-user"),
        pytest.param(ALICE, "wrong password", False, id="wrong"),
        pytest.param(ALICE, "wrong password", True, id="wrong-app-passwords-only"),
        pytest.param(ALICE, PASSWORD, True, id="main-refused-app-passwords-only"),
        pytest.param(ALICE, LAPTOP, True, id="app-with-app-passwords-only"),
        pytest.param(ALICE, PHONE, False, id="app"),
        pytest.param(ALICE, PASSWORD, False, id="main"),
    ],
)
def test_every_attempt_costs_exactly_one_verification(
    auth: Authenticator,
    store: LocalUserStore,
    hasher: CountingHasher,
    username: str,
    password: str,
    only: bool,
) -> None:
    store.set_settings(ALICE, UserSettings(app_passwords_only=only))
    auth.verify_blocking(username, password)
    assert len(hasher.verified) == 1


def test_app_passwords_only_refuses_the_main_password_against_the_dummy_hash(
    auth: Authenticator, store: LocalUserStore, hasher: CountingHasher
) -> None:
    store.set_settings(ALICE, UserSettings(app_passwords_only=True))
    assert auth.verify_blocking(ALICE, PASSWORD) == AuthResult(user=None, cached=False)
    assert hasher.verified[0] not in (main_hash(store), hash_of(store, "phone"))
    accepted = auth.verify_blocking(ALICE, LAPTOP)
    assert accepted.user is not None
    assert accepted.app_password == "laptop"


def test_app_passwords_only_ends_a_cached_main_login(
    auth: Authenticator, store: LocalUserStore, hasher: CountingHasher
) -> None:
    assert auth.verify_blocking(ALICE, PASSWORD).user is not None
    store.set_settings(ALICE, UserSettings(app_passwords_only=True))
    assert auth.verify_blocking(ALICE, PASSWORD).user is None
    assert len(hasher.verified) == 2


def test_a_wrong_password_with_a_matching_lookup_fails_after_one_verification(
    auth: Authenticator, store: LocalUserStore, hasher: CountingHasher
) -> None:
    # A stored lookup that a wrong password shares (a 1 in 2^32 chance, forced here).
    store.add_app_password(ALICE, "tablet", hasher.hash(generate()), lookup_of("guess"), T0)
    hasher.verified.clear()
    assert auth.verify_blocking(ALICE, "guess") == AuthResult(user=None, cached=False)
    assert hasher.verified == [hash_of(store, "tablet")]


def test_the_cache_remembers_which_secret_matched(
    auth: Authenticator, store: LocalUserStore, hasher: CountingHasher
) -> None:
    first = auth.verify_blocking(ALICE, PHONE)
    second = auth.verify_blocking(ALICE, PHONE)
    main = auth.verify_blocking(ALICE, PASSWORD)
    assert (first.cached, second.cached, main.cached) == (False, True, False)
    assert second.app_password == "phone"
    assert main.app_password is None
    assert auth.verify_blocking(ALICE, PASSWORD).cached is True
    assert len(hasher.verified) == 2


def test_a_removed_app_password_stops_working_even_when_cached(
    auth: Authenticator, store: LocalUserStore, hasher: CountingHasher
) -> None:
    assert auth.verify_blocking(ALICE, PHONE).user is not None
    store.remove_app_password(ALICE, "phone")
    assert auth.verify_blocking(ALICE, PHONE) == AuthResult(user=None, cached=False)
    # The second attempt went to the main hash, the only secret left to try.
    assert hasher.verified[1] == main_hash(store)


def test_a_replaced_app_password_is_not_answered_from_the_cache(
    auth: Authenticator, store: LocalUserStore, hasher: CountingHasher
) -> None:
    assert auth.verify_blocking(ALICE, PHONE).user is not None
    store.remove_app_password(ALICE, "phone")
    store.add_app_password(ALICE, "phone", hasher.hash(PHONE), lookup_of(PHONE), T0)
    result = auth.verify_blocking(ALICE, PHONE)
    assert (result.app_password, result.cached) == ("phone", False)


def test_success_records_last_use_at_most_once_a_minute(
    auth: Authenticator, store: LocalUserStore, clock: FakeClock
) -> None:
    def last_used(label: str) -> float | None:
        return next(app.last_used for app in store.app_passwords(ALICE) if app.label == label)

    auth.verify_blocking(ALICE, PHONE)
    assert last_used("phone") == T0
    assert last_used("laptop") is None
    clock.advance(TOUCH_INTERVAL - 1)
    assert auth.verify_blocking(ALICE, PHONE).cached is True
    assert last_used("phone") == T0  # not written again within the minute
    clock.advance(1)
    auth.verify_blocking(ALICE, PHONE)
    assert last_used("phone") == T0 + TOUCH_INTERVAL
    auth.verify_blocking(ALICE, "wrong password")
    auth.verify_blocking(ALICE, PASSWORD)
    assert last_used("laptop") is None


def test_a_broken_app_password_hash_fails_after_one_verification(
    auth: Authenticator, store: LocalUserStore, hasher: CountingHasher
) -> None:
    store.add_app_password(ALICE, "broken", "not an argon2 hash", lookup_of("secret!"), T0)
    assert auth.verify_blocking(ALICE, "secret!").user is None
    assert len(hasher.verified) == 1


def test_without_a_cache_every_app_password_login_is_verified(
    store: LocalUserStore, hasher: CountingHasher, executor: ThreadPoolExecutor, clock: FakeClock
) -> None:
    auth = make_auth(store, hasher, executor, clock, cache_ttl=0.0)
    results = [auth.verify_blocking(ALICE, LAPTOP) for _ in range(2)]
    assert [(result.app_password, result.cached) for result in results] == [("laptop", False)] * 2
    assert len(hasher.verified) == 2


def test_cached_at_once_answers_from_the_cache_and_never_writes(
    store: LocalUserStore, hasher: CountingHasher, executor: ThreadPoolExecutor, clock: FakeClock
) -> None:
    auth = make_auth(store, hasher, executor, clock, cache_ttl=10 * TOUCH_INTERVAL)

    def read() -> tuple[UserRecord, list[AppPassword]]:
        found = store.login_at_once(ALICE)
        assert found is not None
        return found

    user, apps = read()
    assert auth.cached_at_once(user, apps, PHONE) is None  # never verified
    assert auth.verify_blocking(ALICE, PHONE).app_password == "phone"  # its use recorded
    user, apps = read()
    assert auth.cached_at_once(user, apps, PHONE) == AuthResult(user, True, "phone")
    assert auth.cached_at_once(user, apps, PASSWORD) is None  # verified for no one yet
    assert auth.cached_at_once(user, apps, "wrong password") is None
    clock.advance(TOUCH_INTERVAL)
    # Its last use is due to be written: only the path that may wait answers.
    assert auth.cached_at_once(user, apps, PHONE) is None
    assert auth.verify_blocking(ALICE, PHONE).cached is True
    user, apps = read()
    assert auth.cached_at_once(user, apps, PHONE) == AuthResult(user, True, "phone")
    assert [app.last_used for app in apps if app.label == "phone"] == [T0 + TOUCH_INTERVAL]


def test_cached_at_once_keeps_to_app_passwords_only(
    auth: Authenticator, store: LocalUserStore
) -> None:
    assert auth.verify_blocking(ALICE, PASSWORD).user is not None
    found = store.login_at_once(ALICE)
    assert found is not None
    assert auth.cached_at_once(*found, PASSWORD) is not None
    store.set_settings(ALICE, UserSettings(app_passwords_only=True))
    found = store.login_at_once(ALICE)
    assert found is not None
    assert auth.cached_at_once(*found, PASSWORD) is None

"""Tests for password verification: outcomes, equal argon2 work, the verified-login cache."""

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import pytest
from argon2 import PasswordHasher, extract_parameters
from tests.support.clock import FakeClock

from sendgate.policy.auth import Authenticator, AuthResult
from sendgate.store.local.users import LocalUserStore
from sendgate.store.users import UserSettings

PASSWORD = "correct horse battery staple"
NEW_PASSWORD = "a different long passphrase"


class CountingHasher(PasswordHasher):
    """A real argon2 hasher, cheap for tests, that records which hashes it verified against."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self.verified: list[str | bytes] = []
        self.threads: set[int] = set()
        self._lock = threading.Lock()

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        with self._lock:
            self.verified.append(hash)
            self.threads.add(threading.get_ident())
        return super().verify(hash, password)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def store(tmp_path: Path, hasher: CountingHasher) -> Iterator[LocalUserStore]:
    users = LocalUserStore(tmp_path / "users.sqlite")
    users.add_user("alice@example.org", hasher.hash(PASSWORD))
    yield users
    users.close()


def make_auth(
    store: LocalUserStore,
    hasher: CountingHasher,
    executor: ThreadPoolExecutor,
    clock: FakeClock,
    cache_ttl: float = 60.0,
    cache_max: int = 10000,
) -> Authenticator:
    return Authenticator(store, hasher, executor, cache_ttl, clock, cache_max)


@pytest.fixture
def auth(
    store: LocalUserStore, hasher: CountingHasher, executor: ThreadPoolExecutor, clock: FakeClock
) -> Authenticator:
    return make_auth(store, hasher, executor, clock)


def test_right_password_succeeds(auth: Authenticator, hasher: CountingHasher) -> None:
    result = auth.verify_blocking("alice@example.org", PASSWORD)
    assert result.user is not None
    assert result.user.username == "alice@example.org"
    assert result.cached is False
    assert len(hasher.verified) == 1


def test_username_is_matched_case_insensitively(auth: Authenticator) -> None:
    assert auth.verify_blocking("ALICE@Example.ORG", PASSWORD).user is not None


def test_wrong_password_fails_after_one_argon2_verification(
    auth: Authenticator, hasher: CountingHasher
) -> None:
    assert auth.verify_blocking("alice@example.org", "wrong password!") == AuthResult(
        user=None, cached=False
    )
    assert len(hasher.verified) == 1


def test_unknown_user_costs_one_verification_with_the_same_parameters(
    auth: Authenticator, hasher: CountingHasher
) -> None:
    assert auth.verify_blocking("nobody@example.org", PASSWORD) == AuthResult(None, False)
    assert len(hasher.verified) == 1
    dummy = extract_parameters(str(hasher.verified[0]))
    assert (dummy.time_cost, dummy.memory_cost, dummy.parallelism) == (1, 8, 1)


@pytest.mark.parametrize(
    "stored",
    [
        pytest.param("not an argon2 hash", id="unparsable"),
        pytest.param("$argon2id$v=19$m=8,t=1,p=1$!!!$bbbb", id="parses-but-does-not-decode"),
    ],
)
def test_broken_stored_hash_fails_after_one_verification(
    auth: Authenticator, store: LocalUserStore, hasher: CountingHasher, stored: str
) -> None:
    store.set_password_hash("alice@example.org", stored)
    assert auth.verify_blocking("alice@example.org", PASSWORD).user is None
    assert len(hasher.verified) == 1


def test_unencodable_password_fails_without_raising(auth: Authenticator) -> None:
    assert auth.verify_blocking("alice@example.org", "lone \udc80 surrogate").user is None


def test_cache_hit_skips_argon2(auth: Authenticator, hasher: CountingHasher) -> None:
    first = auth.verify_blocking("alice@example.org", PASSWORD)
    second = auth.verify_blocking("alice@example.org", PASSWORD)
    assert (first.cached, second.cached) == (False, True)
    assert second.user == first.user
    assert len(hasher.verified) == 1


def test_cached_answers_only_from_the_cache(
    auth: Authenticator, store: LocalUserStore, hasher: CountingHasher, clock: FakeClock
) -> None:
    alice = store.get_user("alice@example.org")
    assert auth.cached(None, PASSWORD) is None
    assert auth.cached(alice, PASSWORD) is None  # not verified yet: only argon2 can tell
    assert hasher.verified == []
    auth.verify_blocking("alice@example.org", PASSWORD)
    hit = auth.cached(alice, PASSWORD)
    assert hit is not None
    assert hit.user == alice
    assert hit.cached
    assert auth.cached(alice, "wrong password!") is None
    clock.advance(60.0)
    assert auth.cached(alice, PASSWORD) is None  # expired
    assert len(hasher.verified) == 1


def test_cached_is_none_when_the_main_password_is_refused(
    auth: Authenticator, store: LocalUserStore
) -> None:
    auth.verify_blocking("alice@example.org", PASSWORD)
    store.set_settings("alice@example.org", UserSettings(app_passwords_only=True))
    assert auth.cached(store.get_user("alice@example.org"), PASSWORD) is None


def test_failures_are_not_cached(auth: Authenticator, hasher: CountingHasher) -> None:
    auth.verify_blocking("alice@example.org", PASSWORD)
    for _ in range(2):
        assert auth.verify_blocking("alice@example.org", "wrong password!").user is None
    assert len(hasher.verified) == 3


def test_cache_entry_expires(auth: Authenticator, hasher: CountingHasher, clock: FakeClock) -> None:
    auth.verify_blocking("alice@example.org", PASSWORD)
    clock.advance(59)
    assert auth.verify_blocking("alice@example.org", PASSWORD).cached is True
    clock.advance(1)  # exactly at the expiry time
    expired = auth.verify_blocking("alice@example.org", PASSWORD)
    assert expired.user is not None
    assert expired.cached is False
    assert len(hasher.verified) == 2
    assert auth.verify_blocking("alice@example.org", PASSWORD).cached is True


def test_password_change_invalidates_the_cache(
    auth: Authenticator, store: LocalUserStore, hasher: CountingHasher
) -> None:
    auth.verify_blocking("alice@example.org", PASSWORD)
    store.set_password_hash("alice@example.org", hasher.hash(NEW_PASSWORD))
    assert auth.verify_blocking("alice@example.org", PASSWORD).user is None
    changed = auth.verify_blocking("alice@example.org", NEW_PASSWORD)
    assert changed.user is not None
    assert changed.user.generation == 2
    assert changed.cached is False
    assert len(hasher.verified) == 3


def test_cache_is_bounded_evicting_the_oldest(
    store: LocalUserStore, hasher: CountingHasher, executor: ThreadPoolExecutor, clock: FakeClock
) -> None:
    for name in ("bob", "carol"):
        store.add_user(f"{name}@example.org", hasher.hash(PASSWORD))
    auth = make_auth(store, hasher, executor, clock, cache_max=2)
    for name in ("alice", "bob", "carol"):
        clock.advance(1)
        auth.verify_blocking(f"{name}@example.org", PASSWORD)
    assert auth.verify_blocking("carol@example.org", PASSWORD).cached is True
    assert auth.verify_blocking("bob@example.org", PASSWORD).cached is True
    assert auth.verify_blocking("alice@example.org", PASSWORD).cached is False
    assert len(hasher.verified) == 4


@pytest.mark.parametrize(
    ("cache_ttl", "cache_max"), [(0.0, 10000), (-1.0, 10000), (60.0, 0)], ids=str
)
def test_cache_can_be_disabled(
    store: LocalUserStore,
    hasher: CountingHasher,
    executor: ThreadPoolExecutor,
    clock: FakeClock,
    cache_ttl: float,
    cache_max: int,
) -> None:
    auth = make_auth(store, hasher, executor, clock, cache_ttl=cache_ttl, cache_max=cache_max)
    results = [auth.verify_blocking("alice@example.org", PASSWORD) for _ in range(2)]
    assert all(result.user is not None and not result.cached for result in results)
    assert len(hasher.verified) == 2


def test_concurrent_verifications_from_threads(auth: Authenticator, hasher: CountingHasher) -> None:
    start = threading.Barrier(8)

    def login(attempt: int) -> bool:
        start.wait()
        password = PASSWORD if attempt % 2 == 0 else "wrong password!"
        return auth.verify_blocking("alice@example.org", password).user is not None

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(login, range(8)))
    assert outcomes == [attempt % 2 == 0 for attempt in range(8)]
    assert 5 <= len(hasher.verified) <= 8  # 4 failures, and at least one success verified
    assert auth.verify_blocking("alice@example.org", PASSWORD).cached is True


def test_async_verify_runs_off_the_event_loop(auth: Authenticator, hasher: CountingHasher) -> None:
    async def both() -> tuple[AuthResult, AuthResult]:
        good = await auth.verify("alice@example.org", PASSWORD)
        bad = await auth.verify("nobody@example.org", PASSWORD)
        return good, bad

    good, bad = asyncio.run(both())
    assert good.user is not None
    assert bad.user is None
    assert len(hasher.verified) == 2
    assert threading.get_ident() not in hasher.threads

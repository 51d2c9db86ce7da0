"""Tests for sendgate.policy.login: one attempt through guard, argon2, notes, flags and notices."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
from tests.support.clock import FakeClock
from tests.unit.policy.test_auth import CountingHasher

from sendgate.config.schema import LoginLimitsConfig
from sendgate.policy.auth import Authenticator
from sendgate.policy.guard import ACCOUNT_LOCKED, LoginGuard
from sendgate.policy.login import NOTE_REFRESH, LoginRequest, LoginResult, Logins
from sendgate.policy.networks import ClientNetworks
from sendgate.store.local.limits import LocalLimitStore
from sendgate.store.local.users import LocalUserStore
from sendgate.store.users import AppPassword, Flag, LoginNote, UserRecord

PASSWORD = "correct horse battery staple"
CFG = LoginLimitsConfig()


class FakeAccounts:
    """Known networks and flags as the UserStore keeps them."""

    def __init__(self, users: LocalUserStore) -> None:
        self.users = users
        self.logins: dict[tuple[str, str], tuple[float, float]] = {}
        self.notes = 0
        self.flags: dict[str, Flag] = {}

    def is_known(self, username: str, network: str, at: float, *, memory: float) -> bool:
        seen = self.logins.get((username, network))
        return seen is not None and at - seen[1] < memory

    def network_known(self, network: str, at: float, *, memory: float) -> bool:
        return any(net == network and at - t[1] < memory for (_, net), t in self.logins.items())

    def note_login(
        self, username: str, network: str, at: float, *, memory: float, recent: float
    ) -> LoginNote:
        self.notes += 1
        mine = {net: t for (user, net), t in self.logins.items() if user == username}
        first = not any(at - last < memory for _, last in mine.values())
        new = network not in mine or at - mine[network][1] >= memory
        start = mine.get(network, (at, at))[0]
        self.logins[(username, network)] = (start, at)
        count = sum(
            1 for (user, _), t in self.logins.items() if user == username and at - t[1] < recent
        )
        return LoginNote(new=new, first=first, recent=count)

    def get_user(self, username: str) -> UserRecord | None:
        return self.users.get_user(username)

    def login_at_once(self, username: str) -> tuple[UserRecord, list[AppPassword]] | None:
        return self.users.login_at_once(username)

    def set_flag(self, username: str, reason: str, at: float) -> Flag:
        return self.flags.setdefault(username, Flag(username, at, reason))


class Notices:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str | None]] = []

    def send(
        self,
        user: UserRecord,
        *,
        network: str,
        client_ip: str,
        client_name: str | None,
        tls_version: str | None,
        app_password: str | None,
    ) -> str | None:
        self.sent.append((user.username, network, client_name))
        return f"Q{len(self.sent)}"


def _request(ip: str, password: str, user: str) -> LoginRequest:
    return LoginRequest(
        client=ClientNetworks.of(ip),
        client_ip=ip,
        username=user,
        password=password,
        client_name="laptop.example",
        tls_version="TLSv1.3",
    )


class Rig:
    def __init__(self, tmp_path: Path, cfg: LoginLimitsConfig = CFG) -> None:
        self.clock = FakeClock()
        self.hasher = CountingHasher()
        self.users = LocalUserStore(tmp_path / "users.db")
        self.users.add_user("alice@example.org", self.hasher.hash(PASSWORD))
        self.limits = LocalLimitStore(tmp_path / "limits.db", clock=self.clock)
        self.accounts = FakeAccounts(self.users)
        self.pool = ThreadPoolExecutor(2)
        auth = Authenticator(self.users, self.hasher, self.pool, 300.0, self.clock)
        guard = LoginGuard(self.limits, self.accounts, cfg, b"s" * 32)
        self.notices = Notices()
        self.ticks = FakeClock(0.0, step=0.125)  # every verification seems to take 0.125 s
        self.logins = Logins(
            guard, auth, self.accounts, cfg, self.clock, self.notices, timer=self.ticks
        )

    def attempt(
        self, ip: str, password: str = PASSWORD, user: str = "alice@example.org"
    ) -> LoginResult:
        return self.logins.attempt(_request(ip, password, user))

    def attempt_at_once(
        self, ip: str, password: str = PASSWORD, user: str = "alice@example.org"
    ) -> LoginResult | None:
        return self.logins.attempt_at_once(_request(ip, password, user))

    def close(self) -> None:
        self.pool.shutdown()
        self.users.close()
        self.limits.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    made = Rig(tmp_path)
    yield made
    made.close()


def test_a_good_password_logs_in_and_notes_the_network(rig: Rig) -> None:
    result = rig.attempt("192.0.2.7")
    assert result.user is not None
    assert result.user.username == "alice@example.org"
    assert result.wait == 0.0
    assert result.refused is None
    assert result.note == LoginNote(new=True, first=True, recent=1)
    assert rig.accounts.is_known("alice@example.org", "192.0.2.0/24", rig.clock.now, memory=1)


def test_the_first_login_ever_sends_no_notice_a_new_network_sends_one(rig: Rig) -> None:
    rig.attempt("192.0.2.7")
    assert rig.notices.sent == []
    rig.clock.advance(10)
    result = rig.attempt("198.51.100.9")
    assert result.notice == "Q1"
    assert rig.notices.sent == [("alice@example.org", "198.51.100.0/24", "laptop.example")]
    # Known now: the next login from there (after the note cache) sends nothing.
    rig.clock.advance(NOTE_REFRESH)
    again = rig.attempt("198.51.100.10")
    assert again.note is not None
    assert not again.note.new
    assert again.notice is None
    assert len(rig.notices.sent) == 1


def test_a_network_noted_recently_by_this_process_is_not_written_again(rig: Rig) -> None:
    rig.attempt("192.0.2.7")
    rig.clock.advance(NOTE_REFRESH - 1)
    assert rig.attempt("192.0.2.8").note is None
    assert rig.accounts.notes == 1
    rig.clock.advance(1)
    assert rig.attempt("192.0.2.8").note is not None
    assert rig.accounts.notes == 2


def test_a_wrong_password_costs_one_verification_and_is_counted(rig: Rig) -> None:
    before = len(rig.hasher.verified)
    result = rig.attempt("192.0.2.7", password="wrong password here")
    assert result.user is None
    assert result.refused is None
    assert result.failure is not None
    assert result.failure.failures == 1
    assert len(rig.hasher.verified) == before + 1


def test_failures_past_delay_after_wait_on_a_timer(rig: Rig) -> None:
    waits = [rig.attempt("192.0.2.7", password=f"wrong {i}").wait for i in range(5)]
    assert waits == [0.0, 0.0, 0.0, 1.0, 2.0]


def test_a_refused_attempt_checks_no_password_and_waits_as_long_as_one(tmp_path: Path) -> None:
    rig = Rig(tmp_path, replace(CFG, account_failures=2))
    rig.attempt("10.1.0.1", password="wrong 1")
    rig.attempt("10.2.0.1", password="wrong 2")
    before = len(rig.hasher.verified)
    result = rig.attempt("10.3.0.1")  # even the right password is not checked
    assert result.user is None
    assert result.refused is not None
    assert result.refused[0] == ACCOUNT_LOCKED
    assert len(rig.hasher.verified) == before
    assert result.wait == pytest.approx(0.125)
    rig.close()


def test_verify_time_measures_one_verification_when_none_was_made(rig: Rig) -> None:
    assert rig.logins.verify_time() == pytest.approx(0.125)
    assert len(rig.hasher.verified) == 1
    assert rig.logins.verify_time() == pytest.approx(0.125)
    assert len(rig.hasher.verified) == 1


def test_a_success_never_resets_another_networks_counters(rig: Rig) -> None:
    for i in range(4):
        rig.attempt("203.0.113.5", password=f"wrong {i}")
    assert rig.attempt("192.0.2.7").user is not None
    result = rig.attempt("203.0.113.5", password="wrong 5")
    assert result.failure is not None
    assert result.failure.failures == 5


def test_logins_from_too_many_networks_within_an_hour_flag_the_account(rig: Rig) -> None:
    limit = CFG.networks_per_hour
    for i in range(limit):
        assert rig.attempt(f"10.{i}.0.1").flagged is None
        rig.clock.advance(60)
    flagged = rig.attempt(f"10.{limit}.0.1").flagged
    assert flagged is not None
    assert flagged.reason == f"logged in from {limit + 1} networks within an hour"
    assert rig.accounts.flags["alice@example.org"] == flagged


def test_networks_spread_over_more_than_an_hour_do_not_flag(rig: Rig) -> None:
    for i in range(CFG.networks_per_hour + 3):
        assert rig.attempt(f"10.{i}.0.1").flagged is None
        rig.clock.advance(3600 / CFG.networks_per_hour + 1)


def test_networks_per_hour_zero_never_flags(tmp_path: Path) -> None:
    rig = Rig(tmp_path, replace(CFG, networks_per_hour=0))
    assert all(rig.attempt(f"10.{i}.0.1").flagged is None for i in range(10))
    rig.close()


def test_the_request_repr_never_shows_the_password() -> None:
    request = LoginRequest(
        ClientNetworks.of("192.0.2.1"), "192.0.2.1", "a@b.c", "hunter2-secret", None, None
    )
    assert "hunter2-secret" not in repr(request)


def test_an_account_flagged_before_is_not_reported_flagged_again(rig: Rig) -> None:
    rig.accounts.set_flag("alice@example.org", "messages_per_hour exceeded", rig.clock.now)
    rig.clock.advance(1)
    for i in range(CFG.networks_per_hour + 2):
        assert rig.attempt(f"10.{i}.0.1").flagged is None
    assert rig.accounts.flags["alice@example.org"].reason == "messages_per_hour exceeded"


def test_a_repeated_wrong_password_costs_no_argon2_and_counts_nothing_new(rig: Rig) -> None:
    first = rig.attempt("192.0.2.7", password="stale saved password")
    assert first.failure is not None
    assert not first.failure.repeated
    verified = len(rig.hasher.verified)
    for _ in range(20):
        again = rig.attempt("192.0.2.7", password="stale saved password")
        assert again.user is None
        assert again.failure is not None
        assert again.failure.repeated
        assert again.failure.failures == 1
        assert again.wait == pytest.approx(0.125)  # as long as a verification
    assert len(rig.hasher.verified) == verified
    # The right password is still checked, and logs in.
    assert rig.attempt("192.0.2.7").user is not None


def test_a_password_verified_lately_skips_the_wrong_password_lookup(rig: Rig) -> None:
    assert rig.attempt("192.0.2.7").user is not None  # argon2; now in the verified cache
    looked_up: list[str] = []
    original = rig.limits.seen

    def seen(key: str, member: str, window: float) -> bool:
        looked_up.append(key)
        return original(key, member, window)

    rig.limits.seen = seen  # type: ignore[method-assign]
    result = rig.attempt("192.0.2.7")
    assert result.user is not None
    assert result.cached
    assert looked_up == []
    assert rig.attempt("192.0.2.7", password="a wrong one").user is None
    assert len(looked_up) == 1  # a password the cache does not know is looked up


def test_a_password_changed_since_is_checked_again(rig: Rig) -> None:
    rig.attempt("192.0.2.7", password="the next password")
    rig.users.set_password_hash("alice@example.org", rig.hasher.hash("the next password"))
    assert rig.attempt("192.0.2.7", password="the next password").user is not None


def test_a_wrong_password_on_a_banned_network_known_to_the_account_answers_as_refused(
    rig: Rig,
) -> None:
    rig.attempt("192.0.2.7")
    rig.accounts.logins[("alice@example.org", "192.0.2.0/24")] = (rig.clock.now, rig.clock.now)
    rig.limits.ban("net:192.0.2.7/32", 600, "operator", memory=0)
    wrong = rig.attempt("192.0.2.7", password="not her password")
    assert wrong.refused is not None
    assert wrong.refused[0] == "network_banned"
    assert wrong.failure is not None  # checked and counted all the same
    assert rig.attempt("192.0.2.7").user is not None


def test_the_everyday_login_is_decided_at_once_after_one_in_a_thread(rig: Rig) -> None:
    assert rig.attempt_at_once("192.0.2.7") is None  # never verified: argon2, in a thread
    first = rig.attempt("192.0.2.7")
    assert first.user is not None
    verified = len(rig.hasher.verified)
    assert rig.attempt_at_once("192.0.2.7") == LoginResult(user=first.user, wait=0.0, cached=True)
    assert len(rig.hasher.verified) == verified
    assert rig.accounts.notes == 1


def test_anything_but_the_everyday_login_is_left_to_the_thread(rig: Rig) -> None:
    assert rig.attempt("192.0.2.7").user is not None
    assert rig.attempt_at_once("192.0.2.7", password="a wrong one") is None
    assert rig.attempt_at_once("192.0.2.7", user="nobody@example.org") is None
    # Not noted from this network lately: the note is a write.
    assert rig.attempt_at_once("198.51.100.1") is None
    assert rig.accounts.notes == 1
    assert rig.attempt_at_once("192.0.2.7") is not None
    rig.limits.ban("net:192.0.2.7/32", 600, "operator", memory=0)
    assert rig.attempt_at_once("192.0.2.7") is None  # a ban: the guard decides in a thread
    rig.limits.unban("net:192.0.2.7/32")
    rig.limits.ban("account:alice@example.org", 600, "operator", memory=0)
    assert rig.attempt_at_once("192.0.2.7") is None

"""Tests for the login path of sendgate.submission: admission at accept and AUTH through the guard.

Real parts: SQLite user and limit stores (on a fake clock), argon2 with cheap parameters, the
guard and `Logins`; a real Session feeds the handler, as the I/O shell does.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
from tests.support.clock import FakeClock
from tests.unit.test_submission import (
    ALICE,
    ALICE_PASSWORD,
    HASHER,
    HOSTNAME,
    WRONG_PASSWORD,
    Backend,
    Client,
    create_store,
)

from sendgate.config.schema import LoginLimitsConfig
from sendgate.log import EventLog
from sendgate.policy.auth import Authenticator
from sendgate.policy.guard import LoginGuard
from sendgate.policy.login import Logins
from sendgate.server.admission import Refusal
from sendgate.smtp import replies
from sendgate.smtp.events import AuthAttempt
from sendgate.store.local.limits import LocalLimitStore
from sendgate.store.local.queue import LocalQueueStore
from sendgate.store.local.users import LocalUserStore
from sendgate.submission import Submission, SubmissionConnection

ATTACKER = "198.51.100.66"
OFFICE = "192.0.2.1"  # test_submission's CLIENT_IP: where Client connects from
CFG = LoginLimitsConfig(host_failures=3, delay_after=10, account_failures=5)


class Rig:
    def __init__(self, tmp_path: Path, cfg: LoginLimitsConfig = CFG) -> None:
        self.clock = FakeClock()
        self.users = create_store(tmp_path / "users.db")
        self.limits = LocalLimitStore(tmp_path / "limits.db", clock=self.clock)
        self.pool = ThreadPoolExecutor(4)
        self.stream = io.StringIO()
        auth = Authenticator(self.users, HASHER, self.pool, 60.0, self.clock)
        guard = LoginGuard(self.limits, self.users, cfg, b"s" * 32)
        logins = Logins(guard, auth, self.users, cfg, self.limits.now)
        self.submission = Submission(
            hostname=HOSTNAME,
            authenticator=auth,
            queue=LocalQueueStore(tmp_path / "spool"),
            executor=self.pool,
            log=EventLog(self.stream, clock=self.clock),
            clock=self.clock,
            logins=logins,
        )
        self.backend = Backend(
            self.users, LocalQueueStore(tmp_path / "spool"), self.submission, self.stream
        )

    def admit(self, ip: str) -> object:
        pending = self.submission.admit(ip, "c9")
        if isinstance(pending, SubmissionConnection | Refusal):
            return pending
        return asyncio.run(_settle(pending))

    def client(self, ip: str) -> Client:
        client = Client(self.backend)
        admitted = self.admit(ip)
        assert isinstance(admitted, SubmissionConnection)
        client.handler = admitted
        return client

    def close(self) -> None:
        self.pool.shutdown()
        self.users.close()
        self.limits.close()


async def _settle(pending: object) -> object:
    return await pending  # type: ignore[misc]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    made = Rig(tmp_path)
    yield made
    made.close()


def test_a_clean_client_is_admitted_with_its_networks(rig: Rig) -> None:
    admitted = rig.admit(ATTACKER)
    assert isinstance(admitted, SubmissionConnection)


def test_a_client_without_a_ban_is_admitted_at_once_without_a_thread(rig: Rig) -> None:
    # Answered on the event loop: no awaitable, so no thread hop per connection.
    assert isinstance(rig.submission.admit(ATTACKER, "c1"), SubmissionConnection)
    rig.limits.ban(f"net:{ATTACKER}/32", 3600, "operator", memory=0)
    pending = rig.submission.admit(ATTACKER, "c2")  # banned: decided in a thread
    assert not isinstance(pending, SubmissionConnection | Refusal)
    assert asyncio.run(_settle(pending)) == Refusal(replies.BANNED, "banned", f"net:{ATTACKER}/32")


def test_the_everyday_login_is_answered_without_a_thread(rig: Rig) -> None:
    assert rig.client(OFFICE).login(ALICE, ALICE_PASSWORD).startswith("235 2.7.0")
    rig.pool.shutdown()  # from now on a thread hop fails the login with a 454
    again = rig.client(OFFICE)
    assert again.login(ALICE, ALICE_PASSWORD).startswith("235 2.7.0")
    assert [ok["cached"] for ok in rig.backend.events("auth_ok")] == ["false", "true"]
    wrong = rig.client(OFFICE).login(ALICE, WRONG_PASSWORD)
    assert wrong.startswith("454 4.7.0")  # a failure: in a thread


def test_the_everyday_login_is_answered_as_a_reply_not_an_awaitable(rig: Rig) -> None:
    assert rig.client(OFFICE).login(ALICE, ALICE_PASSWORD).startswith("235 2.7.0")
    again = rig.client(OFFICE)
    # A reply the connection sends at once: no task, no pause of its reading.
    answer = again.handler.handle(AuthAttempt("PLAIN", "", ALICE, ALICE_PASSWORD), again.session)
    assert answer == replies.AUTH_OK


def test_wrong_passwords_are_counted_then_the_address_is_banned(rig: Rig) -> None:
    client = rig.client(ATTACKER)
    for _ in range(CFG.host_failures):
        guess = f"{WRONG_PASSWORD}-{_}"
        assert client.login(ALICE, guess).startswith("535 5.7.8")
    fails = rig.backend.events("auth_fail")
    assert [f["failures"] for f in fails] == ["1", "2", "3"]
    assert {f["client"] for f in fails} == {ATTACKER}
    (ban,) = rig.backend.events("ban")
    assert ban["key"] == f"net:{ATTACKER}/32"
    assert ban["reason"] == "host_failures"
    assert ban["offences"] == "1"
    # The open session's next AUTH is refused unchecked, even with the right password.
    assert client.login(ALICE, ALICE_PASSWORD) == (
        "454 4.7.0 Too many failed logins, try again later"
    )
    (refused,) = rig.backend.events("auth_refused")
    assert refused["reason"] == "network_banned"
    assert refused["user"] == ALICE
    # A new connection from there is refused before any TLS, with the reason for the log.
    verdict = rig.admit(ATTACKER)
    assert verdict == Refusal(replies.BANNED, "banned", f"net:{ATTACKER}/32")


def test_the_ban_refuses_unknown_names_alike(rig: Rig) -> None:
    client = rig.client(ATTACKER)
    for i in range(CFG.host_failures):
        client.login(f"nobody{i}@example.org", WRONG_PASSWORD)
    assert client.login("nobody@example.org", "whatever-password") == client.login(
        ALICE, "other-password"
    )


def test_a_login_notes_the_network_and_logs_it(rig: Rig) -> None:
    client = rig.client(OFFICE)
    assert client.login(ALICE, ALICE_PASSWORD).startswith("235 2.7.0")
    (ok,) = rig.backend.events("auth_ok")
    assert ok["new_network"] == "true"
    assert ok["app_password"] == ""
    assert rig.users.is_known(ALICE, "192.0.2.0/24", rig.clock.now, memory=60)


def test_a_shared_network_is_admitted_and_its_known_users_log_in(rig: Rig) -> None:
    rig.client(OFFICE).login(ALICE, ALICE_PASSWORD)
    mallory = rig.client(OFFICE)
    for i in range(CFG.host_failures):
        mallory.login(f"x{i}@example.org", WRONG_PASSWORD)
    assert rig.limits.active_bans([f"net:{OFFICE}/32"]) != []
    # Banned, but an account is known there: admitted, refused only at AUTH.
    alice = rig.client(OFFICE)
    assert alice.login(ALICE, ALICE_PASSWORD).startswith("235 2.7.0")
    assert mallory.login("x@example.org", WRONG_PASSWORD).startswith("454 4.7.0")


def test_an_account_lock_spares_its_known_network(tmp_path: Path) -> None:
    rig = Rig(tmp_path, replace(CFG, host_failures=100))
    rig.client(OFFICE).login(ALICE, ALICE_PASSWORD)
    for i in range(CFG.account_failures):
        rig.client(f"10.{i}.0.1").login(ALICE, f"{WRONG_PASSWORD}-{i}")
    assert rig.client("10.99.0.1").login(ALICE, ALICE_PASSWORD).startswith("454 4.7.0")
    assert rig.client(OFFICE).login(ALICE, ALICE_PASSWORD).startswith("235 2.7.0")
    assert rig.backend.events("auth_refused")[0]["reason"] == "account_locked"
    rig.close()


def test_an_authzid_for_someone_else_fails_without_counting(rig: Rig) -> None:
    client = rig.client(ATTACKER)
    assert client.login(ALICE, ALICE_PASSWORD, authzid="admin@example.com").startswith("535")
    assert rig.limits.count(f"fail:{ATTACKER}/32", 600) == 0


def test_a_store_failure_answers_a_temporary_failure(rig: Rig) -> None:
    client = rig.client(ATTACKER)
    rig.limits.close()
    assert client.login(ALICE, ALICE_PASSWORD).startswith("454 4.7.0 Temporary")
    assert rig.backend.events("auth_error")[0]["error"] == "StoreError"


def test_a_peer_without_an_ip_address_is_admitted_unchecked(rig: Rig) -> None:
    assert isinstance(rig.admit("unix-socket"), SubmissionConnection)


def test_without_logins_the_handler_factory_admits_at_once(
    tmp_path: Path, store: LocalUserStore
) -> None:
    with ThreadPoolExecutor(1) as pool:
        submission = Submission(
            hostname=HOSTNAME,
            authenticator=Authenticator(store, HASHER, pool, 60.0, lambda: 0.0),
            queue=LocalQueueStore(tmp_path / "spool"),
            executor=pool,
            log=EventLog(),
            clock=lambda: 0.0,
        )
        assert isinstance(submission.admit(ATTACKER, "c1"), SubmissionConnection)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LocalUserStore]:
    users = LocalUserStore(tmp_path / "plain-users.db")
    users.add_user(ALICE, HASHER.hash(ALICE_PASSWORD))
    yield users
    users.close()


def test_a_refused_client_is_refused_again_at_once_from_memory(rig: Rig) -> None:
    rig.limits.ban(f"net:{ATTACKER}/32", 3600, "operator", memory=0)
    first = rig.submission.admit(ATTACKER, "c1")
    assert not isinstance(first, Refusal)  # a store read in a thread: awaitable
    assert asyncio.run(_settle(first)) == Refusal(replies.BANNED, "banned", f"net:{ATTACKER}/32")
    rig.limits.unban(f"net:{ATTACKER}/32")
    # Remembered: refused at once, without asking the store (which no longer bans it).
    assert rig.submission.admit(ATTACKER, "c2") == Refusal(
        replies.BANNED, "banned", f"net:{ATTACKER}/32"
    )

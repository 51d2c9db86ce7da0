"""Tests for the sending limits and the flag in sendgate.submission, through a real Session.

The same real parts as test_submission.py (SQLite user store, argon2 with cheap parameters,
spool, event log) plus a real SQLite limit store on a FakeClock; the flags live in an
in-memory stand-in (tests.support.flags) that the test can inspect and set.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from tests.support.clock import FakeClock
from tests.support.flags import FakeFlags
from tests.unit.test_submission import (
    ALICE,
    ALICE_PASSWORD,
    CLIENT_IP,
    HASHER,
    HOSTNAME,
    NOW,
    Backend,
    Client,
    create_store,
    message,
)

from sendgate.config.schema import SendingLimitsConfig
from sendgate.log import EventLog
from sendgate.policy.auth import Authenticator
from sendgate.policy.quota import LIMITS, SendingLimits
from sendgate.smtp.session import SessionSettings
from sendgate.store.local.limits import LocalLimitStore
from sendgate.store.local.queue import LocalQueueStore
from sendgate.store.local.users import LocalUserStore
from sendgate.submission import Submission

T = TypeVar("T")
LIMIT_REPLY = "451 4.7.1 Sending limit reached (messages_per_hour); try again later"
SUSPENDED = "451 4.7.1 Account suspended for review; contact your administrator"


class CountingExecutor(ThreadPoolExecutor):
    """A thread pool that counts the work handed to it (thread handoffs)."""

    handoffs = 0

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        self.handoffs += 1
        return super().submit(fn, *args, **kwargs)


@dataclass
class Limited:
    backend: Backend
    limits: LocalLimitStore
    flags: FakeFlags
    clock: FakeClock
    executor: CountingExecutor

    @property
    def submission(self) -> Submission:
        return self.backend.submission

    def client(self, settings: SessionSettings | None = None) -> Client:
        client = Client(self.backend, settings=settings)
        if settings is None:
            assert client.login(ALICE, ALICE_PASSWORD).startswith("235 2.7.0")
        return client


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Callable[..., Limited]]:
    opened: list[tuple[LocalUserStore, LocalLimitStore, CountingExecutor]] = []

    def build(**settings: int | str) -> Limited:
        root = tmp_path / f"b{len(opened)}"
        root.mkdir()
        users = create_store(root / "users.db")
        clock = FakeClock()
        limit_store = LocalLimitStore(root / "limits.db", clock=clock)
        executor = CountingExecutor(max_workers=4)
        opened.append((users, limit_store, executor))
        flags = FakeFlags()
        stream = io.StringIO()
        log = EventLog(stream, clock=lambda: NOW)
        config = SendingLimitsConfig(**{**dict.fromkeys(LIMITS, 0), **settings})  # type: ignore[arg-type]
        queue = LocalQueueStore(root / "spool")
        submission = Submission(
            hostname=HOSTNAME,
            authenticator=Authenticator(users, HASHER, executor, 60.0, lambda: NOW),
            queue=queue,
            executor=executor,
            log=log,
            clock=lambda: NOW,
            limits=SendingLimits(limit_store, flags, config, log),
        )
        return Limited(
            Backend(users, queue, submission, stream), limit_store, flags, clock, executor
        )

    yield build
    for users, limit_store, executor in opened:
        executor.shutdown()
        limit_store.close()
        users.close()


def queued_id(reply: str) -> str:
    assert reply.startswith("250 2.0.0 queued as "), reply
    return reply.removeprefix("250 2.0.0 queued as ")


def test_over_a_limit_is_451_logged_counted_and_flags(make: Callable[..., Limited]) -> None:
    limited = make(messages_per_hour=2)
    client = limited.client()
    first = queued_id(client.submit(message()))
    queued_id(client.submit(message()))
    assert client.submit(message()) == LIMIT_REPLY
    assert len(limited.backend.queue.ids()) == 2
    assert limited.backend.queue.hold_reason(first) is None
    [event] = limited.backend.events("sending_limit")
    assert event["level"] == "warning"
    assert (event["user"], event["limit"]) == (ALICE, "messages_per_hour")
    assert (event["conn"], event["client"], event["recipients"]) == ("c1", CLIENT_IP, "1")
    assert float(event["retry_after"]) == pytest.approx(1800.0)
    [flagged] = limited.backend.events("flagged")
    assert (flagged["user"], flagged["reason"]) == (ALICE, "messages_per_hour exceeded")
    assert flagged["level"] == "warning"
    assert limited.flags.flags[ALICE].reason == "messages_per_hour exceeded"
    counters = limited.submission.counters
    assert counters.get("sending_limit", limit="messages_per_hour") == 1
    assert counters.get("flagged", reason="sending_limit") == 1
    assert len(limited.backend.events("accepted")) == 2


def test_each_limit_is_named_in_the_reply(make: Callable[..., Limited]) -> None:
    limited = make(recipients_per_message=2)
    client = limited.client()
    recipients = ("a@example.net", "b@example.net", "c@example.net")
    assert client.submit(message(), recipients=recipients) == (
        "451 4.7.1 Sending limit reached (recipients_per_message); try again later"
    )
    assert limited.backend.events("sending_limit")[0]["recipients"] == "3"


def test_the_session_goes_on_after_a_limit(make: Callable[..., Limited]) -> None:
    limited = make(messages_per_hour=1, flagged="refuse")
    client = limited.client()
    queued_id(client.submit(message()))
    assert client.submit(message()) == LIMIT_REPLY
    assert client.say("NOOP").startswith("250")
    assert client.submit(message()) == SUSPENDED


def test_a_flagged_account_has_its_mail_held(make: Callable[..., Limited]) -> None:
    limited = make(messages_per_hour=1, flagged="hold")
    client = limited.client()
    queued_id(client.submit(message()))
    assert client.submit(message()) == LIMIT_REPLY
    # Held mail is not counted: the exhausted hour does not keep it out.
    held = [queued_id(client.submit(message())) for _ in range(3)]
    queue = limited.backend.queue
    assert [queue.hold_reason(queue_id) for queue_id in held] == [
        "flagged: messages_per_hour exceeded"
    ] * 3
    assert len(queue.ids()) == 4
    accepted = limited.backend.events("accepted")
    assert [event.get("held") for event in accepted] == [None] + [
        "flagged: messages_per_hour exceeded"
    ] * 3
    assert limited.submission.counters.get("held", reason="flagged") == 3
    assert len(limited.backend.events("sending_limit")) == 1
    assert len(limited.backend.events("flagged")) == 1


def test_a_flag_set_elsewhere_holds_mail_from_the_next_message(
    make: Callable[..., Limited],
) -> None:
    limited = make(messages_per_hour=100)
    client = limited.client()
    assert limited.backend.queue.hold_reason(queued_id(client.submit(message()))) is None
    limited.flags.set_flag(ALICE, "networks_per_hour exceeded", NOW)
    queue_id = queued_id(client.submit(message()))
    assert limited.backend.queue.hold_reason(queue_id) == "flagged: networks_per_hour exceeded"


def test_a_flagged_account_is_refused_when_so_configured(make: Callable[..., Limited]) -> None:
    limited = make(messages_per_hour=1, flagged="refuse")
    limited.flags.set_flag(ALICE, "networks_per_hour exceeded", NOW)
    client = limited.client()
    assert client.submit(message()) == SUSPENDED
    assert limited.backend.queue.ids() == []
    [event] = limited.backend.events("rejected")
    assert (event["reason"], event["code"]) == ("flagged", "451 4.7.1")
    assert (event["user"], event["flag"]) == (ALICE, "networks_per_hour exceeded")
    assert limited.submission.counters.get("refused", reason="flagged") == 1
    assert limited.backend.events("sending_limit") == []


def test_mail_without_a_login_is_not_limited(make: Callable[..., Limited]) -> None:
    limited = make(messages_per_hour=1)
    client = limited.client(SessionSettings(hostname=HOSTNAME, auth_required=False))
    for _ in range(3):
        queued_id(client.submit(message()))
    assert limited.flags.reads == 0


def test_limits_add_no_thread_handoff(make: Callable[..., Limited]) -> None:
    limited = make(messages_per_hour=10, new_recipients_per_day=10)
    client = limited.client()
    before = limited.executor.handoffs
    queued_id(client.submit(message()))
    assert limited.executor.handoffs == before + 1
    assert limited.flags.reads == 1


def test_a_limits_store_failure_asks_for_a_retry(make: Callable[..., Limited]) -> None:
    limited = make(messages_per_hour=10)
    client = limited.client()
    limited.limits.close()
    assert (
        client.submit(message()) == "451 4.3.0 Local error, message not accepted, try again later"
    )
    [event] = limited.backend.events("limits_error")
    assert (event["level"], event["user"]) == ("error", ALICE)
    assert limited.backend.queue.ids() == []

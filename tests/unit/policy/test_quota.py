"""Tests for sendgate.policy.quota: every sending limit, exact, on an injected clock.

A real SQLite limit store (on a FakeClock) and an in-memory flag store. Unless a test says
otherwise every limit is off (0), so each test sees the one limit it is about.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import pytest
from tests.support.clock import FakeClock
from tests.support.flags import FakeFlags

from sendgate.config.schema import SendingLimitsConfig
from sendgate.log import EventLog
from sendgate.policy.keys import sending_key
from sendgate.policy.quota import (
    DAY,
    HELD,
    HOUR,
    LIMITS,
    MESSAGES_PER_DAY,
    MESSAGES_PER_HOUR,
    NEW_RECIPIENTS_PER_DAY,
    RECIPIENTS_PER_DAY,
    RECIPIENTS_PER_MESSAGE,
    SendingLimits,
    Verdict,
    limits_for,
    recipient_hash,
)
from sendgate.store.limits import DistinctRequest, RateRequest, Taken
from sendgate.store.local.limits import LocalLimitStore
from sendgate.store.local.users import LocalUserStore
from sendgate.store.users import UserRecord, UserSettings

ALICE = "alice@example.org"
OFF = dict.fromkeys(LIMITS, 0)


class CountingLimitStore(LocalLimitStore):
    """The local store, counting `take_all` calls (each is one write transaction)."""

    takes = 0

    def take_all(
        self, rates: Sequence[RateRequest], distinct: Sequence[DistinctRequest] = ()
    ) -> Taken:
        self.takes += 1
        return super().take_all(rates, distinct)


class Harness:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.clock = FakeClock()
        self.store = CountingLimitStore(root / "limits.db", clock=self.clock)
        self.flags = FakeFlags()
        self.log = io.StringIO()

    def limits(self, **settings: int | str) -> SendingLimits:
        config = SendingLimitsConfig(**{**OFF, **settings})  # type: ignore[arg-type]
        return SendingLimits(self.store, self.flags, config, EventLog(self.log))

    def unflag(self) -> None:
        assert self.flags.clear_flag(ALICE)


def user(**settings: int | None) -> UserRecord:
    return UserRecord(ALICE, "hash", (ALICE,), 1, UserSettings(**settings))  # type: ignore[arg-type]


def to(*names: str) -> tuple[str, ...]:
    return tuple(f"{name}@example.net" for name in names)


def send(limits: SendingLimits, count: int, recipients: Sequence[str] = to("bob")) -> list[bool]:
    return [limits.check(user(), recipients).allowed for _ in range(count)]


# --- each limit, exact at N-1, N and N+1 --------------------------------------------------------


def test_messages_per_hour_is_exact(harness: Harness) -> None:
    limits = harness.limits(messages_per_hour=5)
    assert send(limits, 4) == [True] * 4  # N-1
    assert send(limits, 1) == [True]  # N
    refused = limits.check(user(), to("bob"))  # N+1
    assert refused.limit == MESSAGES_PER_HOUR
    assert refused.retry_after == pytest.approx(HOUR / 5)


def test_messages_per_hour_refills_one_message_per_interval(harness: Harness) -> None:
    limits = harness.limits(messages_per_hour=4)
    assert send(limits, 4) == [True] * 4
    harness.clock.advance(HOUR / 4 - 1)
    assert limits.check(user(), to("bob")).limit == MESSAGES_PER_HOUR
    harness.unflag()
    harness.clock.advance(1)
    assert send(limits, 2) == [True, False]


def test_a_burst_at_the_edge_of_an_hour_is_not_let_through_twice(harness: Harness) -> None:
    limits = harness.limits(messages_per_hour=20)
    harness.clock.advance(HOUR - 1)  # the last second of an "hour"
    assert send(limits, 20) == [True] * 20
    harness.clock.advance(2)  # a fixed window would have started again here
    verdicts = []
    for _ in range(20):
        verdicts.append(limits.check(user(), to("bob")).limit)
        harness.unflag()
    assert verdicts == [MESSAGES_PER_HOUR] * 20
    harness.clock.advance(HOUR / 20 - 2)  # one message back, and only one
    assert send(limits, 2) == [True, False]


def test_messages_per_day_is_exact(harness: Harness) -> None:
    limits = harness.limits(messages_per_day=3, messages_per_hour=100)
    assert send(limits, 3) == [True] * 3
    assert limits.check(user(), to("bob")).limit == MESSAGES_PER_DAY
    harness.unflag()
    harness.clock.advance(HOUR)  # the hour refilled; the day did not
    assert limits.check(user(), to("bob")).limit == MESSAGES_PER_DAY
    harness.unflag()
    harness.clock.advance(DAY / 3 - HOUR)
    assert send(limits, 2) == [True, False]


def test_recipients_per_message_is_exact(harness: Harness) -> None:
    limits = harness.limits(recipients_per_message=3)
    assert limits.check(user(), to("a", "b")).allowed
    assert limits.check(user(), to("a", "b", "c")).allowed
    refused = limits.check(user(), to("a", "b", "c", "d"))
    assert (refused.limit, refused.retry_after) == (RECIPIENTS_PER_MESSAGE, 0.0)
    # Needs no store at all.
    assert harness.store.takes == 0


def test_recipients_per_day_counts_every_recipient(harness: Harness) -> None:
    limits = harness.limits(recipients_per_day=5)
    assert limits.check(user(), to("a", "b")).allowed
    assert limits.check(user(), to("a", "b")).allowed  # 4: N-1
    assert limits.check(user(), to("a")).allowed  # 5: N
    assert limits.check(user(), to("a")).limit == RECIPIENTS_PER_DAY  # N+1


def test_a_message_with_more_recipients_than_a_day_allows_is_refused(harness: Harness) -> None:
    limits = harness.limits(recipients_per_day=3)
    assert limits.check(user(), to("a", "b", "c", "d")).limit == RECIPIENTS_PER_DAY
    harness.unflag()
    assert limits.check(user(), to("a", "b", "c")).allowed


def test_new_recipients_per_day_counts_each_address_once(harness: Harness) -> None:
    limits = harness.limits(new_recipients_per_day=3)
    assert limits.check(user(), to("a", "b")).allowed  # N-1
    assert send(limits, 5, to("a", "B")) == [True] * 5  # the same two, in any case
    assert limits.check(user(), to("a", "c")).allowed  # N
    refused = limits.check(user(), to("d"))  # N+1
    assert refused.limit == NEW_RECIPIENTS_PER_DAY
    harness.unflag()
    assert limits.check(user(), to("c", "b", "a")).allowed  # known ones still go


def test_new_recipients_leave_the_count_a_day_after_their_last_message(
    harness: Harness,
) -> None:
    limits = harness.limits(new_recipients_per_day=2)
    assert limits.check(user(), to("a")).allowed
    harness.clock.advance(HOUR)
    assert limits.check(user(), to("b")).allowed
    harness.clock.advance(DAY - HOUR)  # "a" is exactly a day old
    assert limits.check(user(), to("c")).allowed
    assert limits.check(user(), to("a")).limit == NEW_RECIPIENTS_PER_DAY


def test_recipients_reach_the_store_only_as_hash_prefixes(harness: Harness) -> None:
    limits = harness.limits(new_recipients_per_day=10)
    assert limits.check(user(), ("Carol.Secret@Example.NET",)).allowed
    key = sending_key(NEW_RECIPIENTS_PER_DAY, ALICE)
    assert harness.store.seen(key, recipient_hash("carol.secret@example.net"), DAY)
    assert len(recipient_hash("x@example.net")) == 16
    harness.store.close()
    stored = b"".join(path.read_bytes() for path in harness.root.iterdir())
    assert b"carol" not in stored.lower()


# --- all or nothing -----------------------------------------------------------------------------


def test_a_refused_message_uses_up_no_other_limit(harness: Harness) -> None:
    limits = harness.limits(
        messages_per_hour=3, messages_per_day=3, recipients_per_day=10, new_recipients_per_day=2
    )
    assert limits.check(user(), to("a", "b")).allowed
    for _ in range(5):  # each over the new-recipient limit: none may count
        assert limits.check(user(), to("c")).limit == NEW_RECIPIENTS_PER_DAY
        harness.unflag()
    assert limits.check(user(), to("a", "b", "a", "b")).allowed  # 6 recipients so far
    assert limits.check(user(), to("a", "b", "b", "a")).allowed  # 10: the day's whole budget
    assert limits.check(user(), to("a")).limit == MESSAGES_PER_HOUR


def test_a_refused_rate_uses_up_no_other_limit(harness: Harness) -> None:
    limits = harness.limits(messages_per_hour=1, new_recipients_per_day=2)
    assert limits.check(user(), to("a")).allowed
    assert limits.check(user(), to("b")).limit == MESSAGES_PER_HOUR
    harness.unflag()
    harness.clock.advance(HOUR)
    # "b" was never counted: a and b make two.
    assert limits.check(user(), to("b")).allowed


def test_the_first_limit_reached_is_named(harness: Harness) -> None:
    limits = harness.limits(messages_per_hour=1, messages_per_day=1, recipients_per_day=1)
    assert limits.check(user(), to("a")).allowed
    assert limits.check(user(), to("a")).limit == MESSAGES_PER_HOUR


# --- overrides and unlimited --------------------------------------------------------------------


def test_zero_in_the_configuration_is_unlimited(harness: Harness) -> None:
    limits = harness.limits()
    assert all(limits.check(user(), to(*map(str, range(50)))).allowed for _ in range(30))
    assert harness.store.takes == 0  # nothing to count: no store write at all


def test_a_user_setting_overrides_the_default(harness: Harness) -> None:
    limits = harness.limits(messages_per_hour=5)
    lower = user(messages_per_hour=2)
    assert [limits.check(lower, to("a")).allowed for _ in range(3)] == [True, True, False]


def test_a_user_setting_of_zero_is_unlimited(harness: Harness) -> None:
    limits = harness.limits(messages_per_hour=1, recipients_per_message=1)
    free = user(messages_per_hour=0, recipients_per_message=0)
    assert all(limits.check(free, to("a", "b", "c")).allowed for _ in range(10))


def test_limits_for_takes_the_default_where_the_user_has_none() -> None:
    config = SendingLimitsConfig(messages_per_hour=7, messages_per_day=70)
    assert limits_for(config, UserSettings(messages_per_day=0)) == limits_for(
        SendingLimitsConfig(messages_per_hour=7, messages_per_day=0), UserSettings()
    )
    assert limits_for(config, UserSettings(recipients_per_day=9)).recipients_per_day == 9


# --- the flag -----------------------------------------------------------------------------------


def test_going_over_a_limit_flags_the_account(harness: Harness) -> None:
    limits = harness.limits(messages_per_hour=1)
    assert limits.check(user(), to("a")).allowed
    harness.clock.advance(10)
    refused = limits.check(user(), to("a"))
    assert refused.flag is not None
    assert (refused.flag.username, refused.flag.since) == (ALICE, harness.clock.now)
    assert refused.flag.reason == "messages_per_hour exceeded"
    assert refused.flagged_now
    assert harness.flags.flags[ALICE] == refused.flag
    [line] = harness.log.getvalue().splitlines()
    assert "level=warning event=flagged" in line
    assert f"user={ALICE}" in line
    assert 'reason="messages_per_hour exceeded"' in line


def test_a_flagged_account_is_not_counted(harness: Harness) -> None:
    limits = harness.limits(messages_per_hour=1)
    harness.flags.set_flag(ALICE, "networks_per_hour exceeded", 5.0)
    verdict = limits.check(user(), to("a"))
    assert verdict == Verdict(flag=harness.flags.flags[ALICE])
    assert not verdict.allowed
    assert harness.log.getvalue() == ""
    harness.unflag()
    assert limits.check(user(), to("a")).allowed  # the sending budget is whole


def test_held_mail_of_a_flagged_account_has_a_budget_of_its_own(harness: Harness) -> None:
    limits = harness.limits(messages_per_hour=1, messages_per_day=3)
    harness.flags.set_flag(ALICE, "networks_per_hour exceeded", 5.0)
    verdicts = [limits.check(user(), to("a")) for _ in range(4)]
    assert [v.limit for v in verdicts] == [None, None, None, HELD]
    assert all(v.flag is not None for v in verdicts)
    assert verdicts[3].retry_after > 0


def test_an_existing_flag_is_kept_and_not_logged_again(harness: Harness) -> None:
    limits = harness.limits(messages_per_hour=1)
    assert limits.check(user(), to("a")).allowed
    # Another process flags the account between this one's flag read and its limit check.
    original = harness.flags.flag_of

    def flag_meanwhile(username: str) -> None:
        original(username)
        harness.flags.set_flag(ALICE, "networks_per_hour exceeded", 1.0)

    harness.flags.flag_of = flag_meanwhile  # type: ignore[method-assign]
    verdict = limits.check(user(), to("a"))
    assert verdict.limit == MESSAGES_PER_HOUR
    assert verdict.flag is not None
    assert verdict.flag.reason == "networks_per_hour exceeded"
    assert not verdict.flagged_now
    assert harness.log.getvalue() == ""


def test_one_message_costs_one_flag_read_and_one_limits_write(harness: Harness) -> None:
    limits = harness.limits(
        messages_per_hour=100,
        messages_per_day=100,
        recipients_per_message=100,
        recipients_per_day=100,
        new_recipients_per_day=100,
    )
    for number in range(3):
        assert limits.check(user(), to("a", str(number))).allowed
    assert (harness.flags.reads, harness.flags.writes, harness.store.takes) == (3, 0, 3)


def test_flagged_mail_is_held_or_refused_per_configuration(harness: Harness) -> None:
    assert harness.limits().hold_flagged
    assert harness.limits(flagged="hold").hold_flagged
    assert not harness.limits(flagged="refuse").hold_flagged


def test_a_login_no_account_holds_is_refused_though_it_cannot_be_flagged(
    harness: Harness, tmp_path: Path
) -> None:
    # auth.backend = "dovecot": a login only Dovecot knows has no row to hang a flag on.
    users = LocalUserStore(tmp_path / "users.db")
    try:
        config = SendingLimitsConfig(**{**OFF, "messages_per_hour": 1})  # type: ignore[arg-type]
        limits = SendingLimits(harness.store, users, config, EventLog(harness.log))
        assert limits.check(user(), to("bob")).allowed
        refused = limits.check(user(), to("bob"))
    finally:
        users.close()
    assert (refused.limit, refused.flag) == (MESSAGES_PER_HOUR, None)
    assert not refused.allowed
    assert "event=flag_impossible user=alice@example.org reason=" in harness.log.getvalue()

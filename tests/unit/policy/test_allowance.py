"""Tests for sendgate.policy.allowance: a busy account's messages spent from a worker's memory.

Through `SendingLimits` on a real SQLite limit store (the harness of test_quota), with two
`SendingLimits` on one store standing for two workers: no budget is ever exceeded, batches
are taken only far from a limit, flags and new recipients still reach the stores.
"""

from __future__ import annotations

import pytest
from tests.unit.policy.test_quota import ALICE, Harness, send, to, user

from sendgate.policy.allowance import (
    DIVISOR,
    FLAG_TTL,
    MAX_ACCOUNTS,
    MAX_BATCH,
    MAX_KNOWN,
    MIN_LEFT,
    Allowances,
    Budgets,
    batch,
    batchable,
)
from sendgate.policy.keys import sending_key
from sendgate.policy.quota import (
    DAY,
    HOUR,
    MESSAGES_PER_HOUR,
    NEW_RECIPIENTS_PER_DAY,
    RECIPIENTS_PER_DAY,
)
from sendgate.store.limits import RateRequest

BUSY = 100_000


def test_a_busy_account_takes_from_the_store_once_per_batch(harness: Harness) -> None:
    limits = harness.limits(messages_per_hour=BUSY, messages_per_day=BUSY)
    assert send(limits, 1) == [True]
    assert harness.store.takes == 1  # the first message alone: nothing known yet
    assert send(limits, 1 + MAX_BATCH) == [True] * (1 + MAX_BATCH)
    # The second take charged 1 + MAX_BATCH messages; the batch lasted until the next take.
    assert harness.store.takes == 2
    assert send(limits, 1) == [True]
    assert harness.store.takes == 3
    assert harness.flags.reads == 3  # a flag read per take, none per spent message


def test_an_account_on_the_default_limits_takes_every_message_from_the_store(
    harness: Harness,
) -> None:
    limits = harness.limits(
        messages_per_hour=200,
        messages_per_day=1000,
        recipients_per_message=100,
        recipients_per_day=2000,
        new_recipients_per_day=500,
    )
    assert send(limits, 10) == [True] * 10
    assert (harness.flags.reads, harness.store.takes) == (10, 10)


def test_a_batch_never_lets_two_workers_past_a_limit(harness: Harness) -> None:
    limit = 4 * MIN_LEFT
    first = harness.limits(messages_per_hour=limit)
    second = harness.limits(messages_per_hour=limit)
    allowed = 0
    for turn in range(2 * limit):
        verdict = (first, second)[turn % 2].check(user(), to("bob"))
        if not verdict.allowed:
            break
        allowed += 1
    assert allowed <= limit
    # Refused early by at most what the other worker held unspent: one batch.
    assert allowed >= limit - MAX_BATCH
    assert harness.store.takes < limit / 2


def test_no_batch_near_a_limit_so_the_last_units_are_exact(harness: Harness) -> None:
    limits = harness.limits(messages_per_hour=MIN_LEFT + 20)
    results = send(limits, MIN_LEFT + 21)
    assert results == [True] * (MIN_LEFT + 20) + [False]
    # Batches while more than MIN_LEFT were left; then one take per message.
    assert harness.store.takes > 20


def test_a_batch_refused_at_a_limit_still_lets_the_message_itself_through(
    harness: Harness,
) -> None:
    limit = 2 * MIN_LEFT
    limits = harness.limits(messages_per_hour=limit)
    assert send(limits, 2) == [True, True]  # the second take charged a batch too
    spare = batch(limit - 1, MAX_BATCH)
    assert send(limits, spare) == [True] * spare  # spent from memory
    assert harness.store.takes == 2
    # Another worker spends all but one message of the budget.
    key = sending_key(MESSAGES_PER_HOUR, ALICE)
    other = harness.store.take_all([RateRequest(key, limit, HOUR, limit - 2 - spare - 1)])
    assert other.rates[0].remaining == 1
    assert limits.check(user(), to("bob")).allowed  # the batch was refused, not the message
    assert harness.store.takes == 2 + 1 + 2
    assert limits.check(user(), to("bob")).limit == MESSAGES_PER_HOUR


def test_a_flag_set_elsewhere_is_seen_within_the_flag_ttl(harness: Harness) -> None:
    limits = harness.limits(messages_per_hour=BUSY)
    assert send(limits, 2) == [True, True]
    harness.flags.set_flag(ALICE, "networks_per_hour exceeded", harness.clock.now)
    assert limits.check(user(), to("bob")).allowed  # from the allowance, flag not read yet
    harness.clock.advance(FLAG_TTL)
    verdict = limits.check(user(), to("bob"))
    assert verdict.flag is not None
    assert verdict.flag.reason == "networks_per_hour exceeded"


def test_a_flag_set_by_this_worker_drops_the_allowance(harness: Harness) -> None:
    limits = harness.limits(messages_per_hour=BUSY, recipients_per_message=2)
    assert send(limits, 2) == [True, True]
    over = limits.check(user(), to("a", "b", "c"))
    assert over.flagged_now
    # The allowance still held spare messages, but the flag is read again at once.
    verdict = limits.check(user(), to("bob"))
    assert verdict.flag is not None
    assert not verdict.allowed


def test_changed_user_limits_are_applied_to_the_next_message(harness: Harness) -> None:
    limits = harness.limits(messages_per_hour=BUSY)
    assert send(limits, 3) == [True] * 3
    low = user(messages_per_hour=3)
    # The spare units taken under BUSY do not apply: three messages in the hour, not 32.
    verdicts = [limits.check(low, to("bob")).limit for _ in range(3)]
    assert verdicts == [None, None, MESSAGES_PER_HOUR]


def test_known_recipients_need_no_store_and_new_ones_always_do(harness: Harness) -> None:
    limits = harness.limits(new_recipients_per_day=MIN_LEFT * 2)
    assert limits.check(user(), to("a", "b")).allowed
    takes = harness.store.takes
    for _ in range(5):
        assert limits.check(user(), to("b", "a")).allowed
    assert harness.store.takes == takes
    assert limits.check(user(), to("a", "c")).allowed
    assert harness.store.takes == takes + 1


def test_distinct_recipients_are_exact_across_workers(harness: Harness) -> None:
    first = harness.limits(new_recipients_per_day=3)
    second = harness.limits(new_recipients_per_day=3)
    assert first.check(user(), to("a", "b")).allowed
    assert second.check(user(), to("a", "b")).allowed  # known in the store: not new
    assert second.check(user(), to("c")).allowed
    assert first.check(user(), to("d")).limit == NEW_RECIPIENTS_PER_DAY


def test_a_known_recipient_is_new_again_after_the_window(harness: Harness) -> None:
    limits = harness.limits(new_recipients_per_day=MIN_LEFT * 2)
    assert limits.check(user(), to("a")).allowed
    assert limits.check(user(), to("a")).allowed
    takes = harness.store.takes
    harness.clock.advance(DAY)
    assert limits.check(user(), to("a")).allowed
    assert harness.store.takes == takes + 1


def test_recipient_units_are_batched_like_messages(harness: Harness) -> None:
    limits = harness.limits(recipients_per_day=BUSY)
    assert send(limits, 2, to("a", "b")) == [True, True]
    takes = harness.store.takes
    assert send(limits, 10, to("a", "b")) == [True] * 10
    assert harness.store.takes == takes
    verdict = limits.check(user(), to(*(str(n) for n in range(BUSY + 1))))
    assert verdict.limit == RECIPIENTS_PER_DAY


# --- Allowances alone ---------------------------------------------------------------------------


def test_batch_sizes() -> None:
    assert batch(None, MAX_BATCH) == 0
    assert batch(DIVISOR - 1, MAX_BATCH) == 0
    assert batch(DIVISOR * 3, MAX_BATCH) == 3
    assert batch(DIVISOR * 1000, MAX_BATCH) == MAX_BATCH
    assert batchable(Budgets(None, None))
    assert batchable(Budgets(MIN_LEFT, MIN_LEFT))
    assert not batchable(Budgets(MIN_LEFT - 1, None))
    assert not batchable(Budgets(None, MIN_LEFT - 1))


def busy(allowances: Allowances[str], name: str, spare: int = 5, now: float = 0.0) -> None:
    allowances.taken(name, "limits", (spare, spare), Budgets(10**6, 10**6), [], now, 1)


def test_spend_needs_the_same_limits_and_enough_units() -> None:
    allowances: Allowances[str] = Allowances(DAY)
    assert not allowances.spend("a", "limits", 1, (), 0.0)
    busy(allowances, "a", spare=2)
    assert not allowances.spend("a", "other limits", 1, (), 0.0)
    assert not allowances.spend("a", "limits", 3, (), 0.0)  # 2 recipient units held
    assert allowances.spend("a", "limits", 1, (), 0.0)
    assert allowances.spend("a", "limits", 1, (), 0.0)
    assert not allowances.spend("a", "limits", 0, (), 0.0)  # no message left


def test_spend_reads_the_flag_again_after_the_ttl() -> None:
    allowances: Allowances[str] = Allowances(DAY)
    busy(allowances, "a", now=100.0)
    assert allowances.spend("a", "limits", 1, (), 100.0 + FLAG_TTL / 2)
    assert not allowances.spend("a", "limits", 1, (), 100.0 + FLAG_TTL)
    assert allowances.spend("a", "limits", 1, (), 100.0 + FLAG_TTL, flag_read=True)
    assert allowances.spend("a", "limits", 1, (), 100.0 + FLAG_TTL * 1.5)


def test_dropped_allowances_are_gone() -> None:
    allowances: Allowances[str] = Allowances(DAY)
    busy(allowances, "a")
    allowances.drop("a")
    allowances.drop("a")
    assert not allowances.spend("a", "limits", 1, (), 0.0)
    assert allowances.batches("a", "limits") == (0, 0)


def test_the_oldest_account_is_forgotten_past_max_accounts() -> None:
    allowances: Allowances[str] = Allowances(DAY)
    for number in range(MAX_ACCOUNTS + 1):
        busy(allowances, f"user{number}")
    assert not allowances.spend("user0", "limits", 1, (), 0.0)
    assert allowances.spend("user1", "limits", 1, (), 0.0)
    assert allowances.spend(f"user{MAX_ACCOUNTS}", "limits", 1, (), 0.0)


def test_known_recipients_are_bounded() -> None:
    allowances: Allowances[str] = Allowances(DAY)
    half = MAX_KNOWN // 2
    old = [f"old{n}" for n in range(half)]
    young = [f"young{n}" for n in range(half)]
    allowances.taken("a", "limits", (5, 5), Budgets(10**6, 10**6), old, 0.0, 1)
    allowances.taken("a", "limits", (5, 5), Budgets(10**6, 10**6), young, DAY / 2, 1)
    assert allowances.unknown("a", ["old0", "young0", "x"], DAY / 2) == ["x"]
    # Full: the expired ones make room first.
    allowances.taken("a", "limits", (5, 5), Budgets(10**6, 10**6), ["x"], DAY + 1, 1)
    assert allowances.unknown("a", ["old0", "young0", "x"], DAY + 1) == ["old0"]
    # Full of unexpired ones: all are forgotten (the store still knows them).
    more = [f"more{n}" for n in range(half)]
    allowances.taken("a", "limits", (5, 5), Budgets(10**6, 10**6), more, DAY + 2, 1)
    allowances.taken("a", "limits", (5, 5), Budgets(10**6, 10**6), ["y"], DAY + 3, 1)
    assert allowances.unknown("a", ["young0", "more0", "y"], DAY + 3) == ["young0"]


@pytest.mark.parametrize("spare", [(0, 0), (3, 0)])
def test_an_idle_account_near_a_limit_keeps_no_state(spare: tuple[int, int]) -> None:
    allowances: Allowances[str] = Allowances(DAY)
    allowances.taken("a", "limits", spare, Budgets(MIN_LEFT - 1, None), [], 0.0, 1)
    # Spare units already taken are kept, but the flag must be read for each of them.
    assert not allowances.spend("a", "limits", 1, (), 0.0)
    assert allowances.spend("a", "limits", 1, (), 0.0, flag_read=True) == (spare != (0, 0))
    assert allowances.batches("a", "limits") == (0, 0)

"""Tests for sendgate.policy.allowance: a busy account's messages spent from a worker's memory.

Through `SendingLimits` on a real SQLite limit store (the harness of test_quota), with two
`SendingLimits` on one store standing for two workers: no budget is ever exceeded, batches
are taken only far from a limit, flags and new recipients still reach the stores.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from tests.unit.policy.test_quota import ALICE, Harness, send, to, user

from sendgate.config.schema import SendingLimitsConfig
from sendgate.policy.allowance import (
    DIVISOR,
    FLAG_TTL,
    MAX_ACCOUNTS,
    MAX_BATCH,
    MAX_KNOWN,
    MIN_LEFT,
    SPARE_TTL,
    Allowances,
    Batch,
    Budgets,
    batch,
    batchable,
)
from sendgate.policy.keys import sending_key
from sendgate.policy.quota import (
    DAY,
    HOUR,
    LIMITS,
    MESSAGES_PER_HOUR,
    NEW_RECIPIENTS_PER_DAY,
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
    defaults = SendingLimitsConfig()
    limits = harness.limits(**{name: getattr(defaults, name) for name in LIMITS})
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
    limits = harness.limits(new_recipients_per_day=1)
    assert limits.check(user(), to("a")).allowed
    harness.clock.advance(DAY)
    assert limits.check(user(), to("a")).allowed  # new again, and counted again:
    assert limits.check(user(), to("b")).limit == NEW_RECIPIENTS_PER_DAY


def test_mail_to_known_recipients_keeps_them_known_in_the_store(harness: Harness) -> None:
    limits = harness.limits(new_recipients_per_day=3)
    assert limits.check(user(), to("a", "b", "c")).allowed
    harness.clock.advance(23 * HOUR)
    assert limits.check(user(), to("a", "b", "c")).allowed  # refreshed in the store
    harness.clock.advance(HOUR + 1)
    assert limits.check(user(), to("d")).limit == NEW_RECIPIENTS_PER_DAY


def test_recipient_units_are_batched_like_messages_and_exact_at_the_limit(
    harness: Harness,
) -> None:
    limit = 4 * MIN_LEFT
    limits = harness.limits(recipients_per_day=limit)
    assert send(limits, 2, to("a", "b")) == [True, True]
    takes = harness.store.takes
    assert send(limits, 4, to("a", "b")) == [True] * 4
    assert harness.store.takes == takes  # spent from memory
    sent = 6
    while limits.check(user(), to("a", "b")).allowed:
        sent += 1
    assert 2 * sent == limit


def test_spare_recipients_never_take_a_budget_past_its_limit(harness: Harness) -> None:
    limits = harness.limits(recipients_per_day=1000)
    assert limits.check(user(), to("a")).allowed  # the next take asks for spare recipients
    harness.clock.advance(DAY)
    assert limits.check(user(), to(*(str(n) for n in range(995)))).allowed
    allowed = 995
    for _ in range(20):
        verdict = limits.check(user(), to("a"))
        if not verdict.allowed:
            break
        allowed += 1
    assert allowed == 1000


def test_spare_units_from_long_ago_add_nothing_to_a_full_budget(harness: Harness) -> None:
    limit = 10_000
    limits = harness.limits(messages_per_hour=limit)
    assert send(limits, 2) == [True, True]  # the second take charged spare units
    harness.clock.advance(HOUR)
    sent = 0
    while limits.check(user(), to("bob")).allowed:
        sent += 1
    assert sent == limit


def test_threads_of_one_worker_never_pass_a_limit(harness: Harness) -> None:
    limit = 3000
    limits = harness.limits(messages_per_hour=limit)
    with ThreadPoolExecutor(8) as pool:
        verdicts = list(pool.map(lambda _: limits.check(user(), to("bob")).allowed, range(4000)))
    assert sum(verdicts) <= limit
    assert sum(verdicts) >= limit - 8 * MAX_BATCH
    assert harness.store.takes < 4000 / 2


# --- Allowances alone ---------------------------------------------------------------------------

ROOMY = Budgets(10**6, 10**6)


def test_batch_sizes() -> None:
    assert batch(None, MAX_BATCH) == 0
    assert batch(DIVISOR - 1, MAX_BATCH) == 0
    assert batch(DIVISOR * 3, MAX_BATCH) == 3
    assert batch(DIVISOR * 1000, MAX_BATCH) == MAX_BATCH
    assert batchable(Budgets(None, None))
    assert batchable(Budgets(MIN_LEFT, MIN_LEFT))
    assert not batchable(Budgets(MIN_LEFT - 1, None))
    assert not batchable(Budgets(None, MIN_LEFT - 1))


def busy(
    allowances: Allowances[str],
    name: str,
    spare: int = 5,
    now: float = 0.0,
    hashes: tuple[str, ...] = (),
) -> None:
    drops = allowances.batch(name, "limits", now).drops
    allowances.taken(name, "limits", Batch(spare, spare, drops), ROOMY, hashes, now, 1)


def test_spend_needs_the_same_limits_and_enough_units() -> None:
    allowances: Allowances[str] = Allowances()
    assert not allowances.spend("a", "limits", 1, (), 0.0)
    busy(allowances, "a", spare=2)
    assert not allowances.spend("a", "other limits", 1, (), 0.0)
    assert not allowances.spend("a", "limits", 3, (), 0.0)  # 2 recipient units held
    assert allowances.spend("a", "limits", 1, (), 0.0)
    assert allowances.spend("a", "limits", 1, (), 0.0)
    assert not allowances.spend("a", "limits", 0, (), 0.0)  # no message left


def test_spend_reads_the_flag_again_after_the_ttl() -> None:
    allowances: Allowances[str] = Allowances()
    busy(allowances, "a", now=100.0)
    assert allowances.spend("a", "limits", 1, (), 100.0 + FLAG_TTL / 2)
    assert not allowances.spend("a", "limits", 1, (), 100.0 + FLAG_TTL)


def test_spare_units_are_given_up_after_spare_ttl() -> None:
    allowances: Allowances[str] = Allowances()
    busy(allowances, "a", spare=10, now=100.0)
    assert allowances.spend("a", "limits", 1, (), 100.0 + SPARE_TTL / 2)
    assert not allowances.spend("a", "limits", 1, (), 100.0 + SPARE_TTL, flag_read=True)
    # A new take does not bring the old units back.
    busy(allowances, "a", spare=1, now=200.0)
    assert allowances.spend("a", "limits", 1, (), 200.0)
    assert not allowances.spend("a", "limits", 1, (), 200.0)


def test_a_clock_stepped_back_makes_nothing_fresh() -> None:
    allowances: Allowances[str] = Allowances()
    busy(allowances, "a", now=100.0)
    assert not allowances.spend("a", "limits", 1, (), 99.0)


def test_one_thread_at_a_time_asks_for_a_batch() -> None:
    allowances: Allowances[str] = Allowances()
    busy(allowances, "a", spare=0)  # now the account asks for batches
    first = allowances.batch("a", "limits", 0.0)
    assert first.messages > 0
    assert allowances.batch("a", "limits", 0.0).messages == 0  # another thread: no batch
    allowances.taken("a", "limits", first, ROOMY, (), 0.0, 1)
    assert allowances.batch("a", "limits", 0.0).messages > 0
    # A take that never reported back (a store error) blocks batches for SPARE_TTL only.
    assert allowances.batch("a", "limits", SPARE_TTL).messages > 0


def test_a_take_under_way_when_an_account_is_dropped_keeps_nothing() -> None:
    allowances: Allowances[str] = Allowances()
    busy(allowances, "a", spare=0)
    asked = allowances.batch("a", "limits", 0.0)
    allowances.drop("a")  # flagged by another thread meanwhile
    allowances.taken("a", "limits", asked, ROOMY, (), 0.0, 1)
    assert not allowances.spend("a", "limits", 1, (), 0.0)
    assert not allowances.spend("a", "limits", 1, (), 0.0, flag_read=True)


def test_dropped_allowances_are_gone() -> None:
    allowances: Allowances[str] = Allowances()
    busy(allowances, "a")
    allowances.drop("a")
    allowances.drop("a")
    assert not allowances.spend("a", "limits", 1, (), 0.0)
    assert allowances.batch("a", "limits", 0.0) == Batch(drops=2)


def test_the_least_recently_used_account_is_forgotten_past_max_accounts() -> None:
    allowances: Allowances[str] = Allowances()
    for number in range(MAX_ACCOUNTS):
        busy(allowances, f"user{number}")
    assert allowances.spend("user0", "limits", 1, (), 0.0)  # used: now the most recent
    busy(allowances, "newcomer")
    assert allowances.spend("user0", "limits", 1, (), 0.0)
    assert not allowances.spend("user1", "limits", 1, (), 0.0)
    assert allowances.spend("newcomer", "limits", 1, (), 0.0)


def test_recipients_are_known_for_spare_ttl_after_a_refresh() -> None:
    allowances: Allowances[str] = Allowances()
    busy(allowances, "a", spare=10, now=100.0, hashes=("h1", "h2"))
    assert allowances.spend("a", "limits", 2, ("h2", "h1"), 100.5)
    assert not allowances.spend("a", "limits", 1, ("h3",), 100.5)
    busy(allowances, "a", spare=10, now=101.0, hashes=("h3",))
    assert not allowances.spend("a", "limits", 1, ("h1",), 101.2)  # refreshed 1.2 s ago
    assert allowances.spend("a", "limits", 1, ("h3",), 101.2)


def test_known_recipients_are_bounded() -> None:
    allowances: Allowances[str] = Allowances()
    many = tuple(f"h{n}" for n in range(MAX_KNOWN))
    busy(allowances, "a", spare=10, now=0.0, hashes=many)
    assert allowances.spend("a", "limits", 1, ("h0",), 0.5)
    # Full of fresh entries: all are forgotten (the store still counts them).
    busy(allowances, "a", spare=10, now=0.6, hashes=("x",))
    assert not allowances.spend("a", "limits", 1, ("h0",), 0.7)
    assert allowances.spend("a", "limits", 1, ("x",), 0.7)
    # Full again, but of stale entries: only those make room.
    busy(allowances, "a", spare=10, now=5.0, hashes=many[1:])
    busy(allowances, "a", spare=10, now=10.0, hashes=("y", "z"))
    assert allowances.spend("a", "limits", 2, ("y", "z"), 10.5)


@pytest.mark.parametrize("spare", [0, 3])
def test_near_a_limit_every_message_reads_the_flag(spare: int) -> None:
    allowances: Allowances[str] = Allowances()
    near = Budgets(MIN_LEFT - 1, None)
    allowances.taken("a", "limits", Batch(spare, 0, 0), near, (), 0.0, 1)
    # Spare units already charged are spent, each after a flag read; no state without them.
    assert not allowances.spend("a", "limits", 1, (), 0.0)
    assert allowances.spend("a", "limits", 1, (), 0.0, flag_read=True) == (spare > 0)
    assert allowances.batch("a", "limits", 0.0).messages == 0

"""The LimitStore contract: what every limits backend must do (run once per backend)."""

from __future__ import annotations

import threading

import pytest
from tests.contracts.backends import StoreBackend

from sendgate.store.limits import DistinctRequest, LimitStore, RateRequest

WINDOW = 600.0
MEMORY = 86400.0

STORE = "limits"  # the backends that offer it run this module (conftest.py)


@pytest.fixture
def limits(backend: StoreBackend) -> LimitStore:
    return backend.limits()


# --- members in a sliding window ---------------------------------------------------------------


def test_record_counts_distinct_members_in_the_window(
    limits: LimitStore, backend: StoreBackend
) -> None:
    assert limits.record("k", "a", WINDOW) == 1
    assert limits.record("k", "b", WINDOW) == 2
    assert limits.record("k", "a", WINDOW) == 2  # the same member again counts once
    assert limits.record("other", "a", WINDOW) == 1
    assert limits.count("k", WINDOW) == 2


def test_members_leave_the_window_exactly_at_its_end(
    limits: LimitStore, backend: StoreBackend
) -> None:
    limits.record("k", "a", WINDOW)
    backend.advance(100)
    limits.record("k", "b", WINDOW)
    backend.advance(WINDOW - 100 - 0.001)
    assert limits.count("k", WINDOW) == 2
    assert limits.seen("k", "a", WINDOW)
    backend.advance(0.001)
    assert limits.count("k", WINDOW) == 1
    assert not limits.seen("k", "a", WINDOW)
    assert limits.seen("k", "b", WINDOW)
    assert limits.record("k", "c", WINDOW) == 2


def test_noting_a_member_again_refreshes_its_time(
    limits: LimitStore, backend: StoreBackend
) -> None:
    limits.record("k", "a", WINDOW)
    backend.advance(WINDOW - 1)
    limits.record("k", "a", WINDOW)
    backend.advance(2)
    assert limits.seen("k", "a", WINDOW)


def test_forget_drops_members_and_rate(limits: LimitStore) -> None:
    limits.record("k", "a", WINDOW)
    assert limits.take("k", 1, 60).allowed
    assert not limits.take("k", 1, 60).allowed
    limits.forget("k")
    assert limits.count("k", WINDOW) == 0
    assert limits.take("k", 1, 60).allowed


def test_two_handles_share_the_counts(backend: StoreBackend) -> None:
    first, second = backend.limits(), backend.limits()
    first.record("k", "a", WINDOW)
    assert second.record("k", "b", WINDOW) == 2
    assert first.count("k", WINDOW) == 2


def test_concurrent_records_from_threads_and_handles_lose_nothing(backend: StoreBackend) -> None:
    handles = [backend.limits(), backend.limits()]
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def note(index: int) -> None:
        start.wait()
        try:
            for number in range(25):
                handles[index % 2].record("k", f"{index}-{number}", WINDOW)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=note, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert handles[0].count("k", WINDOW) == 100


# --- GCRA --------------------------------------------------------------------------------------


def test_a_budget_allows_exactly_the_limit_at_once(limits: LimitStore) -> None:
    verdicts = [limits.take("rate", 5, 3600) for _ in range(6)]
    assert [v.allowed for v in verdicts] == [True] * 5 + [False]
    assert [v.remaining for v in verdicts[:5]] == [4, 3, 2, 1, 0]
    assert verdicts[5].retry_after == pytest.approx(720.0)
    assert verdicts[0].retry_after == 0.0


def test_a_budget_refills_one_unit_per_interval(limits: LimitStore, backend: StoreBackend) -> None:
    for _ in range(5):
        assert limits.take("rate", 5, 3600).allowed
    backend.advance(719)
    assert not limits.take("rate", 5, 3600).allowed
    backend.advance(1)
    assert limits.take("rate", 5, 3600).allowed
    assert not limits.take("rate", 5, 3600).allowed


def test_a_burst_at_a_window_edge_is_not_let_through_twice(
    limits: LimitStore, backend: StoreBackend
) -> None:
    backend.advance(3599)  # the end of an "hour" a fixed window would reset at
    assert all(limits.take("rate", 100, 3600).allowed for _ in range(100))
    backend.advance(2)  # the next "hour"
    allowed = sum(limits.take("rate", 100, 3600).allowed for _ in range(100))
    assert allowed == 0
    backend.advance(36)
    assert sum(limits.take("rate", 100, 3600).allowed for _ in range(100)) == 1


def test_a_request_costing_several_units_is_all_or_nothing(limits: LimitStore) -> None:
    assert limits.take("rate", 10, 600, cost=7).allowed
    refused = limits.take("rate", 10, 600, cost=4)
    assert not refused.allowed
    assert refused.remaining == 3
    assert limits.take("rate", 10, 600, cost=3).allowed


def test_a_cost_over_the_limit_is_a_bug(limits: LimitStore) -> None:
    with pytest.raises(ValueError, match="exceeds the limit"):
        limits.take("rate", 3, 60, cost=4)


def test_uneven_intervals_still_allow_the_whole_budget(limits: LimitStore) -> None:
    assert all(limits.take("rate", 7, 600).allowed for _ in range(7))
    assert not limits.take("rate", 7, 600).allowed


# --- several budgets at once ------------------------------------------------------------------


def hourly(key: str, limit: int, cost: int = 1) -> RateRequest:
    return RateRequest(key, limit, 3600.0, cost)


def daily_members(key: str, limit: int, *members: str) -> DistinctRequest:
    return DistinctRequest(key, members, limit, 86400.0)


def test_take_all_takes_every_budget_when_all_have_room(limits: LimitStore) -> None:
    taken = limits.take_all([hourly("a", 3), hourly("b", 10, cost=4)])
    assert taken.allowed
    assert [(v.allowed, v.remaining) for v in taken.rates] == [(True, 2), (True, 6)]
    assert taken.distinct == ()
    assert limits.take("a", 3, 3600, cost=2).allowed
    assert not limits.take("a", 3, 3600).allowed
    assert limits.take("b", 10, 3600, cost=6).allowed
    assert not limits.take("b", 10, 3600).allowed


def test_take_all_is_exact_at_n_minus_1_n_and_n_plus_1(limits: LimitStore) -> None:
    verdicts = [limits.take_all([hourly("m", 5)]) for _ in range(6)]
    assert [t.allowed for t in verdicts] == [True] * 5 + [False]
    assert [t.rates[0].remaining for t in verdicts] == [4, 3, 2, 1, 0, 0]
    assert verdicts[4].rates[0].retry_after == 0.0  # the N-th still goes through
    assert verdicts[5].rates[0].retry_after == pytest.approx(720.0)


def test_a_refused_budget_takes_nothing_from_the_others(limits: LimitStore) -> None:
    assert limits.take("full", 2, 3600, cost=2).allowed
    refused = limits.take_all(
        [hourly("room", 5), hourly("full", 2), hourly("more", 4, cost=3)],
        [daily_members("people", 10, "x", "y")],
    )
    assert not refused.allowed
    assert [v.allowed for v in refused.rates] == [True, False, True]
    assert refused.rates[0].remaining == 4  # as if taken: what `take` would have said
    assert refused.distinct[0].allowed
    assert refused.distinct[0].new == 2
    # Nothing was taken or noted: every other budget is still whole.
    assert limits.take("room", 5, 3600, cost=5).allowed
    assert limits.take("more", 4, 3600, cost=4).allowed
    assert limits.count("people", 86400) == 0


def test_a_refused_member_limit_takes_nothing_from_the_rates(limits: LimitStore) -> None:
    assert limits.take_all([], [daily_members("people", 3, "a", "b")]).allowed
    refused = limits.take_all([hourly("msgs", 1)], [daily_members("people", 3, "c", "d")])
    assert not refused.allowed
    assert refused.rates[0].allowed
    assert (refused.distinct[0].allowed, refused.distinct[0].new) == (False, 2)
    assert limits.count("people", 86400) == 2
    assert limits.take("msgs", 1, 3600).allowed


def test_members_count_once_however_often_they_are_noted(limits: LimitStore) -> None:
    news = []
    for _ in range(5):
        taken = limits.take_all([], [daily_members("people", 2, "a", "b", "a")])
        assert taken.allowed
        news.append(taken.distinct[0].new)
    assert news == [2, 0, 0, 0, 0]
    assert limits.count("people", 86400) == 2
    # N-1 and N are allowed above; N+1 is not, while a known member still is.
    assert not limits.take_all([], [daily_members("people", 2, "c")]).allowed
    assert limits.take_all([], [daily_members("people", 2, "b")]).allowed


def test_known_members_pass_even_over_a_lowered_limit(limits: LimitStore) -> None:
    assert limits.take_all([], [daily_members("people", 5, "a", "b", "c")]).allowed
    lowered = limits.take_all([], [daily_members("people", 2, "b", "a")])
    assert (lowered.allowed, lowered.distinct[0].new) == (True, 0)
    refused = limits.take_all([], [daily_members("people", 2, "a", "d")])
    assert (refused.allowed, refused.distinct[0].new) == (False, 1)


def test_members_leave_the_member_limit_at_the_window_end(
    limits: LimitStore, backend: StoreBackend
) -> None:
    assert limits.take_all([], [daily_members("people", 2, "a")]).allowed
    backend.advance(3600)
    assert limits.take_all([], [daily_members("people", 2, "b")]).allowed
    backend.advance(86400 - 3600 - 0.001)
    assert not limits.take_all([], [daily_members("people", 2, "c")]).allowed
    backend.advance(0.001)  # "a" is a day old now
    assert limits.take_all([], [daily_members("people", 2, "c")]).allowed
    assert not limits.take_all([], [daily_members("people", 2, "a")]).allowed


def test_noting_a_member_again_keeps_it_in_the_member_limit(
    limits: LimitStore, backend: StoreBackend
) -> None:
    assert limits.take_all([], [daily_members("people", 1, "a")]).allowed
    backend.advance(86000)
    assert limits.take_all([], [daily_members("people", 1, "a")]).allowed
    backend.advance(1000)  # a day after the first note, not after the second
    assert not limits.take_all([], [daily_members("people", 1, "b")]).allowed


def test_many_members_in_one_request(limits: LimitStore) -> None:
    members = tuple(f"m{number}" for number in range(1200))
    taken = limits.take_all([], [daily_members("people", 1200, *members)])
    assert (taken.allowed, taken.distinct[0].new) == (True, 1200)
    again = limits.take_all([], [daily_members("people", 1200, *members[::-1])])
    assert (again.allowed, again.distinct[0].new) == (True, 0)
    assert limits.count("people", 86400) == 1200
    assert not limits.take_all([], [daily_members("people", 1200, "new")]).allowed


def test_a_take_all_burst_at_an_hour_edge_is_not_let_through_twice(
    limits: LimitStore, backend: StoreBackend
) -> None:
    backend.advance(3599)
    assert sum(limits.take_all([hourly("rate", 50)]).allowed for _ in range(60)) == 50
    backend.advance(2)  # a fixed window would have reset here
    assert sum(limits.take_all([hourly("rate", 50)]).allowed for _ in range(60)) == 0
    backend.advance(72)  # 74 s after the burst: one unit back (one per 72 s), not two
    assert sum(limits.take_all([hourly("rate", 50)]).allowed for _ in range(60)) == 1


def test_take_all_and_take_share_a_budget(backend: StoreBackend) -> None:
    first, second = backend.limits(), backend.limits()
    assert first.take_all([hourly("rate", 2)]).allowed
    assert second.take("rate", 2, 3600).allowed
    assert not first.take_all([hourly("rate", 2)]).allowed


def test_concurrent_take_all_never_overspends(backend: StoreBackend) -> None:
    handles = [backend.limits(), backend.limits()]
    start = threading.Barrier(4)
    allowed: list[bool] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def spend(index: int) -> None:
        start.wait()
        try:
            for number in range(20):
                taken = handles[index % 2].take_all(
                    [hourly("msgs", 30)], [daily_members("people", 1000, f"{index}-{number}")]
                )
                with lock:
                    allowed.append(taken.allowed)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=spend, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(allowed) == 80
    assert allowed.count(True) == 30
    assert handles[0].count("people", 86400) == 30


@pytest.mark.parametrize(
    ("rates", "distinct", "problem"),
    [
        ([hourly("k", 2, cost=3)], [], "exceeds the limit"),
        ([hourly("k", 0)], [], "limit >= 1"),
        ([], [DistinctRequest("k", ("a",), -1, 60.0)], "limit >= 0"),
        ([], [DistinctRequest("k", ("a",), 1, 0.0)], "window > 0"),
        ([hourly("k", 2)], [daily_members("k", 2, "a")], "asked twice"),
    ],
)
def test_take_all_refuses_bad_requests(
    limits: LimitStore, rates: list[RateRequest], distinct: list[DistinctRequest], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        limits.take_all(rates, distinct)


# --- bans --------------------------------------------------------------------------------------


def test_a_ban_holds_until_it_ends(limits: LimitStore, backend: StoreBackend) -> None:
    now = limits.now()
    ban = limits.ban("net:192.0.2.0/24", 300, "auth failures", memory=MEMORY)
    assert (ban.since, ban.until, ban.offences, ban.reason) == (
        now,
        now + 300,
        1,
        "auth failures",
    )
    assert limits.ban_of("net:192.0.2.0/24") == ban
    assert limits.bans() == [ban]
    backend.advance(299.999)
    assert limits.ban_of("net:192.0.2.0/24") is not None
    backend.advance(0.001)
    assert limits.ban_of("net:192.0.2.0/24") is None
    assert limits.bans() == []


def test_repeat_offences_are_counted_within_the_memory(
    limits: LimitStore, backend: StoreBackend
) -> None:
    limits.ban("k", 60, "x", memory=MEMORY)
    backend.advance(600)
    assert limits.offences("k", memory=MEMORY) == 1
    assert limits.ban("k", 60, "x", memory=MEMORY).offences == 2
    backend.advance(60 + MEMORY + 1)
    assert limits.offences("k", memory=MEMORY) == 0
    assert limits.ban("k", 60, "x", memory=MEMORY).offences == 1


def test_a_ban_never_shortens_a_longer_one(limits: LimitStore) -> None:
    long = limits.ban("k", 3600, "first", memory=MEMORY)
    short = limits.ban("k", 60, "second", memory=MEMORY)
    assert (short.since, short.until) == (long.since, long.until)
    assert short.offences == 2


def test_unban_ends_the_ban_and_remembers_the_offence(limits: LimitStore) -> None:
    limits.ban("k", 3600, "x", memory=MEMORY)
    assert limits.unban("k")
    assert not limits.unban("k")
    assert limits.ban_of("k") is None
    assert limits.offences("k", memory=MEMORY) == 1


def test_bans_are_listed_by_key_and_shared(backend: StoreBackend) -> None:
    first, second = backend.limits(), backend.limits()
    first.ban("b", 60, "x", memory=MEMORY)
    first.ban("a", 60, "y", memory=MEMORY)
    assert [ban.key for ban in second.bans()] == ["a", "b"]


def test_active_bans_reads_several_keys_at_once_in_their_order(
    limits: LimitStore, backend: StoreBackend
) -> None:
    assert limits.active_bans([]) == []
    limits.ban("b", 100, "r", memory=MEMORY)
    limits.ban("a", 50, "r", memory=MEMORY)
    found = limits.active_bans(["a", "none", "b", "a"])
    assert [ban.key for ban in found] == ["a", "b"]
    assert found[0] == limits.ban_of("a")
    backend.advance(50)
    assert [ban.key for ban in limits.active_bans(["a", "b"])] == ["b"]
    limits.unban("b")
    assert limits.active_bans(["a", "b"]) == []


def test_active_bans_at_once_answers_as_active_bans_or_not_at_all(
    limits: LimitStore, backend: StoreBackend
) -> None:
    limits.ban("b", 100, "r", memory=MEMORY)
    for keys in (["a", "b"], ["b", "a", "b"], ["a"], []):
        quick = limits.active_bans_at_once(keys)
        assert quick is None or quick == limits.active_bans(keys)
    backend.advance(100)
    assert limits.active_bans_at_once(["b"]) in ([], None)

"""The LimitStore contract: what every limits backend must do (run once per backend)."""

from __future__ import annotations

import threading

import pytest
from tests.contracts.backends import StoreBackend

from sendgate.store.limits import LimitStore

WINDOW = 600.0
MEMORY = 86400.0


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

"""Tests for sendgate.server.caps: global and per-IP caps shared by worker processes."""

from __future__ import annotations

import os

from sendgate.server.caps import BUCKETS, RATE_WINDOW, ConnectionCaps


def other_ip(caps: ConnectionCaps, taken: str, candidates: list[str]) -> str:
    """The first candidate in another bucket than `taken` (buckets collide by design, rarely)."""
    for candidate in candidates:
        if caps.bucket(candidate) != caps.bucket(taken):
            return candidate
    raise AssertionError("every candidate collided with the taken address")


V4_OTHERS = [f"198.51.100.{n}" for n in range(1, 9)]


def test_global_cap() -> None:
    caps = ConnectionCaps(workers=1, max_total=3, max_per_ip=10)
    slots = [caps.acquire(f"192.0.2.{n}") for n in range(3)]
    assert all(slot is not None for slot in slots)
    assert caps.active() == 3
    assert caps.acquire("192.0.2.99") is None
    assert caps.active() == 3  # a refusal counts nothing


def test_per_ip_cap() -> None:
    caps = ConnectionCaps(workers=1, max_total=100, max_per_ip=2)
    assert caps.acquire("192.0.2.1") is not None
    assert caps.acquire("192.0.2.1") is not None
    assert caps.acquire("192.0.2.1") is None
    assert caps.acquire(other_ip(caps, "192.0.2.1", V4_OTHERS)) is not None
    assert caps.active() == 3


def test_release_frees_both_counts() -> None:
    caps = ConnectionCaps(workers=1, max_total=1, max_per_ip=1)
    slot = caps.acquire("192.0.2.1")
    assert slot is not None
    assert caps.acquire("192.0.2.1") is None
    caps.release(slot)
    assert caps.active() == 0
    again = caps.acquire("192.0.2.1")
    assert again == slot
    assert caps.active() == 1


def test_release_never_goes_below_zero() -> None:
    caps = ConnectionCaps(workers=1, max_total=1, max_per_ip=1)
    slot = caps.acquire("192.0.2.1")
    assert slot is not None
    caps.release(slot)
    caps.release(slot)
    assert caps.active() == 0
    assert caps.acquire("192.0.2.1") is not None
    assert caps.acquire("192.0.2.1") is None


def test_buckets_are_in_range_and_stable() -> None:
    caps = ConnectionCaps(workers=1, max_total=1, max_per_ip=1)
    for ip in ["192.0.2.1", "2001:db8::1", "unknown", ""]:
        bucket = caps.bucket(ip)
        assert 1 <= bucket <= BUCKETS
        assert caps.bucket(ip) == bucket


def test_ipv6_is_counted_per_64() -> None:
    caps = ConnectionCaps(workers=1, max_total=100, max_per_ip=1)
    first, same_64 = "2001:db8:1:2::1", "2001:db8:1:2:ffff:eeee:dddd:cccc"
    assert caps.bucket(first) == caps.bucket(same_64)
    assert caps.acquire(first) is not None
    assert caps.acquire(same_64) is None
    others = [f"2001:db8:1:{n:x}::1" for n in range(3, 11)]
    assert caps.acquire(other_ip(caps, first, others)) is not None


def test_ipv4_mapped_ipv6_counts_as_the_ipv4_address() -> None:
    caps = ConnectionCaps(workers=1, max_total=100, max_per_ip=1)
    assert caps.bucket("::ffff:192.0.2.1") == caps.bucket("192.0.2.1")
    assert caps.acquire("192.0.2.1") is not None
    assert caps.acquire("::ffff:192.0.2.1") is None


def test_mapped_addresses_are_not_grouped_by_64() -> None:
    # All of ::ffff:0:0/96 sits in one /64; the mapped IPv4 address, not the /64, is the key.
    caps = ConnectionCaps(workers=1, max_total=100, max_per_ip=1)
    assert caps.acquire("::ffff:192.0.2.1") is not None
    others = [f"::ffff:{ip}" for ip in V4_OTHERS]
    assert caps.acquire(other_ip(caps, "::ffff:192.0.2.1", others)) is not None


def test_workers_rows_are_summed() -> None:
    caps = ConnectionCaps(workers=2, max_total=3, max_per_ip=2)
    caps.worker = 0
    assert caps.acquire("192.0.2.1") is not None
    caps.worker = 1
    assert caps.acquire("192.0.2.1") is not None
    assert caps.active() == 2
    assert caps.acquire("192.0.2.1") is None  # per-IP cap across both workers
    assert caps.acquire(other_ip(caps, "192.0.2.1", V4_OTHERS)) is not None
    caps.worker = 0
    assert caps.acquire("203.0.113.9") is None  # global cap across both workers


def test_forget_worker_drops_only_that_workers_counts() -> None:
    caps = ConnectionCaps(workers=2, max_total=10, max_per_ip=2)
    caps.worker = 1
    assert caps.acquire("192.0.2.1") is not None
    assert caps.acquire("192.0.2.1") is not None
    caps.worker = 0
    kept = caps.acquire(other_ip(caps, "192.0.2.1", V4_OTHERS))
    assert kept is not None
    assert caps.acquire("192.0.2.1") is None
    caps.forget_worker(1)
    assert caps.active() == 1
    assert caps.acquire("192.0.2.1") is not None
    assert caps.acquire("192.0.2.1") is not None
    assert caps.acquire("192.0.2.1") is None


def test_counts_are_shared_across_fork() -> None:
    caps = ConnectionCaps(workers=2, max_total=10, max_per_ip=1)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            caps.worker = 1
            code = 0 if caps.acquire("192.0.2.1") is not None else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert caps.active() == 1
    assert caps.acquire("192.0.2.1") is None  # the child's connection counts here too
    caps.forget_worker(1)  # as the supervisor does once the child is gone
    assert caps.active() == 0
    assert caps.acquire("192.0.2.1") is not None


# --- the unauthenticated share ---


def test_unauthenticated_connections_have_their_own_share() -> None:
    caps = ConnectionCaps(workers=1, max_total=10, max_per_ip=10, max_unauthenticated=2)
    first = caps.acquire("192.0.2.1")
    assert first is not None
    assert caps.acquire("192.0.2.2") is not None
    assert caps.unauthenticated() == 2
    assert caps.acquire("192.0.2.3") is None  # the share is full, the global cap is not
    assert caps.active() == 2
    caps.promote()  # the first one logged in: it leaves the share, not the global count
    assert (caps.unauthenticated(), caps.active()) == (1, 2)
    assert caps.acquire("192.0.2.3") is not None
    caps.release(first, authenticated=True)
    assert (caps.unauthenticated(), caps.active()) == (2, 2)


def test_the_share_never_exceeds_the_global_cap() -> None:
    caps = ConnectionCaps(workers=1, max_total=3, max_per_ip=10, max_unauthenticated=50)
    assert caps.max_unauthenticated == 3
    assert ConnectionCaps(1, 3, 10).max_unauthenticated == 3  # by default: no smaller share


def test_address_full_tells_the_per_ip_cap_from_the_others() -> None:
    caps = ConnectionCaps(workers=1, max_total=2, max_per_ip=1)
    assert caps.acquire("192.0.2.1") is not None
    assert caps.address_full("192.0.2.1")
    other = other_ip(caps, "192.0.2.1", V4_OTHERS)
    assert not caps.address_full(other)
    assert caps.acquire(other) is not None
    assert caps.acquire(other_ip(caps, other, V4_OTHERS[::-1])) is None  # global, not per IP


def test_pressure_from_half_the_share_or_three_quarters_of_the_cap() -> None:
    caps = ConnectionCaps(workers=2, max_total=8, max_per_ip=100, max_unauthenticated=4)
    assert not caps.under_pressure()
    caps.acquire("192.0.2.1")
    assert not caps.under_pressure()
    caps.worker = 1  # counted by another worker: pressure is global
    caps.acquire("192.0.2.2")
    assert caps.under_pressure()  # 2 of a share of 4
    caps.promote()
    caps.worker = 0
    caps.promote()
    assert not caps.under_pressure()  # 2 of 8 in all, none unauthenticated
    for n in range(4):
        caps.acquire(f"192.0.2.{10 + n}")
        caps.promote()
    assert caps.unauthenticated() == 0
    assert caps.active() == 6
    assert caps.under_pressure()  # 6 of 8


def test_counts_never_go_below_zero() -> None:
    caps = ConnectionCaps(workers=1, max_total=2, max_per_ip=2)
    slot = caps.acquire("192.0.2.1")
    assert slot is not None
    caps.promote()
    caps.promote()  # one too many: a bug elsewhere must not wrap the counter
    caps.release(slot)
    caps.release(slot)
    assert (caps.active(), caps.unauthenticated()) == (0, 0)
    assert caps.acquire("192.0.2.1") is not None


# --- the rate of connections that end without a login ---


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_connections_ending_without_a_login_are_counted_per_window() -> None:
    clock = Clock()
    caps = ConnectionCaps(2, 100, 100, max_anonymous_per_window=3, clock=clock)
    ip = "192.0.2.1"
    for worker in (0, 1, 0):  # counted by whichever worker served them
        caps.worker = worker
        slot = caps.acquire(ip)
        assert slot is not None
        assert not caps.over_rate(ip)
        caps.release(slot)
    assert caps.over_rate(ip)
    assert not caps.over_rate(other_ip(caps, ip, V4_OTHERS))
    clock.now += RATE_WINDOW  # a new window: the counts start again
    assert not caps.over_rate(ip)
    caps.worker = 1
    slot = caps.acquire(ip)
    assert slot is not None
    caps.release(slot)
    assert not caps.over_rate(ip)  # the old window's counts are gone, not added


def test_logged_in_connections_never_count_against_the_rate() -> None:
    caps = ConnectionCaps(1, 100, 100, max_anonymous_per_window=1, clock=Clock())
    for _ in range(5):
        slot = caps.acquire("192.0.2.1")
        assert slot is not None
        caps.promote()
        caps.release(slot, authenticated=True)
    assert not caps.over_rate("192.0.2.1")


def test_no_rate_limit_by_default() -> None:
    caps = ConnectionCaps(1, 100, 100)
    for _ in range(50):
        slot = caps.acquire("192.0.2.1")
        assert slot is not None
        caps.release(slot)
    assert not caps.over_rate("192.0.2.1")


def test_an_address_where_someone_logged_in_is_not_refused_for_the_rate() -> None:
    clock = Clock()
    caps = ConnectionCaps(2, 100, 100, max_anonymous_per_window=2, clock=clock)
    ip = "192.0.2.1"
    for _ in range(3):
        slot = caps.acquire(ip)
        assert slot is not None
        caps.release(slot)
    assert caps.over_rate(ip)
    caps.worker = 1
    slot = caps.acquire(ip)
    assert slot is not None
    caps.promote(slot)  # a real user logged in from there (through another worker)
    caps.release(slot, authenticated=True)
    assert not caps.over_rate(ip)
    clock.now += RATE_WINDOW  # and in the next window too
    assert not caps.over_rate(ip)
    caps.worker = 0
    for _ in range(2):
        slot = caps.acquire(ip)
        assert slot is not None
        caps.release(slot)
    clock.now += RATE_WINDOW  # two windows on, the login no longer covers the address
    for _ in range(2):
        slot = caps.acquire(ip)
        assert slot is not None
        caps.release(slot)
    assert caps.over_rate(ip)

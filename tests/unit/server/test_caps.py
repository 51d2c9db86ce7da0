"""Tests for sendgate.server.limits: global and per-IP caps shared by worker processes."""

from __future__ import annotations

import os

from sendgate.server.limits import BUCKETS, ConnectionLimiter


def other_ip(limiter: ConnectionLimiter, taken: str, candidates: list[str]) -> str:
    """The first candidate in another bucket than `taken` (buckets collide by design, rarely)."""
    for candidate in candidates:
        if limiter.bucket(candidate) != limiter.bucket(taken):
            return candidate
    raise AssertionError("every candidate collided with the taken address")


V4_OTHERS = [f"198.51.100.{n}" for n in range(1, 9)]


def test_global_cap() -> None:
    limiter = ConnectionLimiter(workers=1, max_total=3, max_per_ip=10)
    slots = [limiter.acquire(f"192.0.2.{n}") for n in range(3)]
    assert all(slot is not None for slot in slots)
    assert limiter.active() == 3
    assert limiter.acquire("192.0.2.99") is None
    assert limiter.active() == 3  # a refusal counts nothing


def test_per_ip_cap() -> None:
    limiter = ConnectionLimiter(workers=1, max_total=100, max_per_ip=2)
    assert limiter.acquire("192.0.2.1") is not None
    assert limiter.acquire("192.0.2.1") is not None
    assert limiter.acquire("192.0.2.1") is None
    assert limiter.acquire(other_ip(limiter, "192.0.2.1", V4_OTHERS)) is not None
    assert limiter.active() == 3


def test_release_frees_both_counts() -> None:
    limiter = ConnectionLimiter(workers=1, max_total=1, max_per_ip=1)
    slot = limiter.acquire("192.0.2.1")
    assert slot is not None
    assert limiter.acquire("192.0.2.1") is None
    limiter.release(slot)
    assert limiter.active() == 0
    again = limiter.acquire("192.0.2.1")
    assert again == slot
    assert limiter.active() == 1


def test_release_never_goes_below_zero() -> None:
    limiter = ConnectionLimiter(workers=1, max_total=1, max_per_ip=1)
    slot = limiter.acquire("192.0.2.1")
    assert slot is not None
    limiter.release(slot)
    limiter.release(slot)
    assert limiter.active() == 0
    assert limiter.acquire("192.0.2.1") is not None
    assert limiter.acquire("192.0.2.1") is None


def test_buckets_are_in_range_and_stable() -> None:
    limiter = ConnectionLimiter(workers=1, max_total=1, max_per_ip=1)
    for ip in ["192.0.2.1", "2001:db8::1", "unknown", ""]:
        bucket = limiter.bucket(ip)
        assert 1 <= bucket <= BUCKETS
        assert limiter.bucket(ip) == bucket


def test_ipv6_is_counted_per_64() -> None:
    limiter = ConnectionLimiter(workers=1, max_total=100, max_per_ip=1)
    first, same_64 = "2001:db8:1:2::1", "2001:db8:1:2:ffff:eeee:dddd:cccc"
    assert limiter.bucket(first) == limiter.bucket(same_64)
    assert limiter.acquire(first) is not None
    assert limiter.acquire(same_64) is None
    others = [f"2001:db8:1:{n:x}::1" for n in range(3, 11)]
    assert limiter.acquire(other_ip(limiter, first, others)) is not None


def test_ipv4_mapped_ipv6_counts_as_the_ipv4_address() -> None:
    limiter = ConnectionLimiter(workers=1, max_total=100, max_per_ip=1)
    assert limiter.bucket("::ffff:192.0.2.1") == limiter.bucket("192.0.2.1")
    assert limiter.acquire("192.0.2.1") is not None
    assert limiter.acquire("::ffff:192.0.2.1") is None


def test_mapped_addresses_are_not_grouped_by_64() -> None:
    # All of ::ffff:0:0/96 sits in one /64; the mapped IPv4 address, not the /64, is the key.
    limiter = ConnectionLimiter(workers=1, max_total=100, max_per_ip=1)
    assert limiter.acquire("::ffff:192.0.2.1") is not None
    others = [f"::ffff:{ip}" for ip in V4_OTHERS]
    assert limiter.acquire(other_ip(limiter, "::ffff:192.0.2.1", others)) is not None


def test_workers_rows_are_summed() -> None:
    limiter = ConnectionLimiter(workers=2, max_total=3, max_per_ip=2)
    limiter.worker = 0
    assert limiter.acquire("192.0.2.1") is not None
    limiter.worker = 1
    assert limiter.acquire("192.0.2.1") is not None
    assert limiter.active() == 2
    assert limiter.acquire("192.0.2.1") is None  # per-IP cap across both workers
    assert limiter.acquire(other_ip(limiter, "192.0.2.1", V4_OTHERS)) is not None
    limiter.worker = 0
    assert limiter.acquire("203.0.113.9") is None  # global cap across both workers


def test_forget_worker_drops_only_that_workers_counts() -> None:
    limiter = ConnectionLimiter(workers=2, max_total=10, max_per_ip=2)
    limiter.worker = 1
    assert limiter.acquire("192.0.2.1") is not None
    assert limiter.acquire("192.0.2.1") is not None
    limiter.worker = 0
    kept = limiter.acquire(other_ip(limiter, "192.0.2.1", V4_OTHERS))
    assert kept is not None
    assert limiter.acquire("192.0.2.1") is None
    limiter.forget_worker(1)
    assert limiter.active() == 1
    assert limiter.acquire("192.0.2.1") is not None
    assert limiter.acquire("192.0.2.1") is not None
    assert limiter.acquire("192.0.2.1") is None


def test_counts_are_shared_across_fork() -> None:
    limiter = ConnectionLimiter(workers=2, max_total=10, max_per_ip=1)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            limiter.worker = 1
            code = 0 if limiter.acquire("192.0.2.1") is not None else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert limiter.active() == 1
    assert limiter.acquire("192.0.2.1") is None  # the child's connection counts here too
    limiter.forget_worker(1)  # as the supervisor does once the child is gone
    assert limiter.active() == 0
    assert limiter.acquire("192.0.2.1") is not None

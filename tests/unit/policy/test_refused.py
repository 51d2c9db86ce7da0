"""Tests for sendgate.policy.refused: refusals remembered briefly, never past the ban."""

from __future__ import annotations

from tests.support.clock import FakeClock

from sendgate.policy.refused import TTL, RecentlyRefused
from sendgate.store.limits import Ban


def ban(until: float) -> Ban:
    return Ban("net:192.0.2.1/32", 0.0, until, "host_failures", 1)


def test_a_refusal_is_remembered_for_ttl_seconds() -> None:
    clock = FakeClock()
    cache = RecentlyRefused(clock)
    assert cache.get("192.0.2.1") is None
    cache.add("192.0.2.1", ban(clock.now + 3600))
    clock.advance(TTL - 0.001)
    assert cache.get("192.0.2.1") == ban(clock.now - TTL + 0.001 + 3600)
    clock.advance(0.001)
    assert cache.get("192.0.2.1") is None
    assert cache.get("192.0.2.2") is None


def test_never_past_the_end_of_the_ban() -> None:
    clock = FakeClock()
    cache = RecentlyRefused(clock)
    cache.add("192.0.2.1", ban(clock.now + 1))
    clock.advance(0.999)
    assert cache.get("192.0.2.1") is not None
    clock.advance(0.001)
    assert cache.get("192.0.2.1") is None


def test_the_oldest_entry_goes_when_full() -> None:
    clock = FakeClock()
    cache = RecentlyRefused(clock, size=2)
    for address in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
        cache.add(address, ban(clock.now + 60))
    assert cache.get("192.0.2.1") is None
    assert cache.get("192.0.2.2") is not None
    assert cache.get("192.0.2.3") is not None

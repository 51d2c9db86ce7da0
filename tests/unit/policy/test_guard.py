"""Tests for sendgate.policy.guard: failure counts, delays, bans and the known-network rules."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from tests.support.clock import FakeClock

from sendgate.config.schema import LoginLimitsConfig
from sendgate.policy import keys
from sendgate.policy.guard import ACCOUNT_LOCKED, KNOWN_LOCKED, NETWORK_BANNED, LoginGuard
from sendgate.policy.networks import ClientNetworks
from sendgate.store.limits import Ban
from sendgate.store.local.limits import LocalLimitStore

SECRET = b"k" * 32
CFG = LoginLimitsConfig()


class FakeAccounts:
    """Known networks as the UserStore keeps them: (user, network) -> last login time."""

    def __init__(self) -> None:
        self.logins: dict[tuple[str, str], float] = {}

    def is_known(self, username: str, network: str, at: float, *, memory: float) -> bool:
        last = self.logins.get((username, network))
        return last is not None and at - last < memory

    def network_known(self, network: str, at: float, *, memory: float) -> bool:
        return any(net == network and at - t < memory for (_, net), t in self.logins.items())


class Rig:
    def __init__(self, tmp_path: Path, cfg: LoginLimitsConfig = CFG) -> None:
        self.clock = FakeClock()
        self.limits = LocalLimitStore(tmp_path / "limits.db", clock=self.clock)
        self.accounts = FakeAccounts()
        self.guard = LoginGuard(self.limits, self.accounts, cfg, SECRET)

    def know(self, user: str, ip: str) -> None:
        self.accounts.logins[(user, str(ClientNetworks.of(ip).block))] = self.clock.now


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def fail(rig: Rig, ip: str, n: int, user: str = "alice@example.org", start: int = 0) -> None:
    for i in range(start, start + n):
        rig.guard.failed(ClientNetworks.of(ip), user, f"guess-{i}")


def test_an_address_is_banned_at_exactly_host_failures(rig: Rig) -> None:
    client = ClientNetworks.of("192.0.2.7")
    fail(rig, "192.0.2.7", CFG.host_failures - 2)
    last_free = rig.guard.failed(client, "alice@example.org", "one-more")
    assert last_free.failures == CFG.host_failures - 1
    assert last_free.bans == ()
    assert rig.guard.admit(client).ban is None
    banning = rig.guard.failed(client, "alice@example.org", "the-tenth")
    assert banning.failures == CFG.host_failures
    assert [ban.key for ban in banning.bans] == ["net:192.0.2.7/32"]
    assert banning.bans[0].until == rig.clock.now + CFG.ban_time
    verdict = rig.guard.admit(client)
    assert verdict.refuse
    assert verdict.ban is not None
    assert verdict.ban.key == "net:192.0.2.7/32"
    # Neighbours in the /24 are not refused by the /32's ban.
    assert not rig.guard.admit(ClientNetworks.of("192.0.2.8")).refuse


def test_the_failure_after_the_ban_counts_afresh(rig: Rig) -> None:
    fail(rig, "192.0.2.7", CFG.host_failures)
    after = rig.guard.failed(ClientNetworks.of("192.0.2.7"), "alice@example.org", "eleventh")
    assert after.failures == 1  # the counter that banned was cleared; the ban itself holds


def test_delays_start_after_delay_after_and_double_up_to_the_cap(rig: Rig) -> None:
    client = ClientNetworks.of("198.51.100.1")
    delays = [rig.guard.failed(client, "bob@example.org", f"p{i}").delay for i in range(9)]
    assert delays == [0.0, 0.0, 0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 16.0]


def test_delay_for_is_capped_for_absurd_counts(rig: Rig) -> None:
    assert rig.guard.delay_for(10**9) == CFG.delay_max
    assert rig.guard.delay_for(0) == 0.0


def test_no_delay_when_the_delay_is_zero(tmp_path: Path) -> None:
    rig = Rig(tmp_path, replace(CFG, delay=0.0))
    assert rig.guard.delay_for(9) == 0.0


def test_the_same_wrong_password_counts_once(rig: Rig) -> None:
    client = ClientNetworks.of("192.0.2.7")
    results = [rig.guard.failed(client, "alice@example.org", "stale") for _ in range(50)]
    assert {r.failures for r in results} == {1}
    assert not rig.guard.admit(client).refuse
    # The same password for another account is another guess.
    assert rig.guard.failed(client, "carol@example.org", "stale").failures == 2


def test_a_ban_ends_at_its_time(rig: Rig) -> None:
    client = ClientNetworks.of("192.0.2.7")
    fail(rig, "192.0.2.7", CFG.host_failures)
    rig.clock.advance(CFG.ban_time - 0.001)
    assert rig.guard.admit(client).refuse
    rig.clock.advance(0.001)
    assert rig.guard.admit(client).ban is None


def test_repeat_offenders_wait_twice_as_long_each_time_up_to_ban_max(tmp_path: Path) -> None:
    rig = Rig(tmp_path, replace(CFG, ban_time=100.0, ban_max=350.0))
    lengths = []
    for round_ in range(4):
        fail(rig, "192.0.2.7", CFG.host_failures, start=round_ * 100)
        (ban,) = rig.limits.active_bans(["net:192.0.2.7/32"])
        lengths.append(ban.until - ban.since)
        rig.clock.advance(ban.until - rig.clock.now)
    assert lengths == [100.0, 200.0, 350.0, 350.0]


def test_offences_are_forgotten_after_ban_memory(tmp_path: Path) -> None:
    rig = Rig(tmp_path, replace(CFG, ban_time=100.0, ban_memory=1000.0))
    fail(rig, "192.0.2.7", CFG.host_failures)
    rig.clock.advance(100 + 1000 + 1)
    fail(rig, "192.0.2.7", CFG.host_failures, start=100)
    (ban,) = rig.limits.active_bans(["net:192.0.2.7/32"])
    assert ban.until - ban.since == 100.0
    assert ban.offences == 1


def test_a_block_is_banned_when_failures_spread_over_its_addresses(rig: Rig) -> None:
    for i in range(CFG.block_failures - 1):
        rig.guard.failed(ClientNetworks.of(f"203.0.113.{i + 1}"), "x@example.org", f"p{i}")
    assert rig.guard.admit(ClientNetworks.of("203.0.113.200")).ban is None
    last = rig.guard.failed(ClientNetworks.of("203.0.113.99"), "x@example.org", "last")
    assert "net:203.0.113.0/24" in [ban.key for ban in last.bans]
    assert rig.guard.admit(ClientNetworks.of("203.0.113.200")).refuse


def test_ipv6_is_counted_per_64_and_banned_bans_escalate(tmp_path: Path) -> None:
    rig = Rig(tmp_path, replace(CFG, block_failures=10**6))
    # Every address of one /64 is the same client.
    for i in range(CFG.host_failures):
        rig.guard.failed(ClientNetworks.of(f"2001:db8:0:1::{i + 1:x}"), "x@example.org", f"p{i}")
    assert rig.guard.admit(ClientNetworks.of("2001:db8:0:1::ffff")).refuse
    assert not rig.guard.admit(ClientNetworks.of("2001:db8:0:2::1")).refuse
    # Three banned /64s in one /56 ban the whole /56.
    for subnet in (2, 3):
        bans: list[Ban] = []
        for i in range(CFG.host_failures):
            client = ClientNetworks.of(f"2001:db8:0:{subnet}::{i + 1:x}")
            bans.extend(rig.guard.failed(client, "x@example.org", f"s{subnet}-{i}").bans)
    assert [ban.key for ban in bans] == ["net:2001:db8:0:3::/64", "net:2001:db8::/56"]
    assert bans[1].reason == "ipv6_escalation"
    assert rig.guard.admit(ClientNetworks.of("2001:db8:0:ff::1")).refuse
    assert not rig.guard.admit(ClientNetworks.of("2001:db8:0:100::1")).refuse


def test_banned_56s_escalate_to_the_48(tmp_path: Path) -> None:
    rig = Rig(tmp_path, replace(CFG, ipv6_escalation=2, block_failures=10**6))
    for middle in (0x100, 0x200):
        for subnet in (middle, middle + 1):
            for i in range(CFG.host_failures):
                client = ClientNetworks.of(f"2001:db8:0:{subnet:x}::{i + 1:x}")
                rig.guard.failed(client, "x@example.org", f"{subnet}-{i}")
    assert rig.limits.active_bans(["net:2001:db8::/48"]) != []
    assert rig.guard.admit(ClientNetworks.of("2001:db8:0:ffff::1")).refuse


def test_ipv4_bans_do_not_escalate(tmp_path: Path) -> None:
    rig = Rig(tmp_path, replace(CFG, block_failures=10**6))
    for host in range(1, 6):
        fail(rig, f"192.0.2.{host}", CFG.host_failures, start=host * 100)
    assert rig.guard.admit(ClientNetworks.of("192.0.2.77")).ban is None


def test_an_account_is_locked_for_unknown_networks_only(rig: Rig) -> None:
    rig.know("alice@example.org", "198.51.100.20")
    for i in range(CFG.account_failures - 1):
        rig.guard.failed(ClientNetworks.of(f"10.{i}.0.1"), "alice@example.org", f"p{i}")
    assert rig.guard.check(ClientNetworks.of("10.200.0.1"), "alice@example.org").refused is None
    last = rig.guard.failed(ClientNetworks.of("10.99.0.1"), "Alice@Example.org", "last")
    assert [ban.key for ban in last.bans] == [keys.account_key("alice@example.org")]
    refused = rig.guard.check(ClientNetworks.of("10.200.0.1"), "alice@example.org").refused
    assert refused is not None
    assert refused[0] == ACCOUNT_LOCKED
    # The real user's network still gets to try its password.
    assert rig.guard.check(ClientNetworks.of("198.51.100.21"), "alice@example.org").refused is None
    # Other accounts are not affected.
    assert rig.guard.check(ClientNetworks.of("10.200.0.1"), "bob@example.org").refused is None


def test_unknown_account_names_are_locked_like_real_ones(rig: Rig) -> None:
    for i in range(CFG.account_failures):
        rig.guard.failed(ClientNetworks.of(f"10.{i}.0.1"), "nobody@example.org", f"p{i}")
    refused = rig.guard.check(ClientNetworks.of("10.200.0.1"), "nobody@example.org").refused
    assert refused is not None
    assert refused[0] == ACCOUNT_LOCKED


def test_failures_from_a_known_network_count_apart_and_lock_there(rig: Rig) -> None:
    rig.know("alice@example.org", "198.51.100.20")
    client = ClientNetworks.of("198.51.100.20")
    for i in range(CFG.known_failures - 1):
        assert rig.guard.failed(client, "alice@example.org", f"p{i}").bans == ()
        rig.clock.advance(70)  # slower than the network limits, to see the known limit alone
    assert rig.guard.check(client, "alice@example.org").refused is None
    # The account-wide counter saw none of these.
    assert rig.limits.count(keys.account_failures_key("alice@example.org"), 3600) == 0
    last = rig.guard.failed(client, "alice@example.org", "last")
    assert "known_failures" in [ban.reason for ban in last.bans]
    refused = rig.guard.check(client, "alice@example.org").refused
    assert refused is not None
    assert refused[0] == KNOWN_LOCKED


def test_a_shared_network_is_banned_at_auth_not_at_accept(rig: Rig) -> None:
    rig.know("alice@example.org", "192.0.2.50")
    office = ClientNetworks.of("192.0.2.50")
    fail(rig, "192.0.2.50", CFG.host_failures, user="mallory@example.org")
    verdict = rig.guard.admit(office)
    assert verdict.ban is not None
    assert not verdict.refuse
    assert rig.guard.check(office, "alice@example.org").refused is None
    refused = rig.guard.check(office, "mallory@example.org").refused
    assert refused is not None
    assert refused[0] == NETWORK_BANNED


def test_the_allow_list_is_never_counted_delayed_or_banned(tmp_path: Path) -> None:
    rig = Rig(tmp_path, replace(CFG, allow=("192.0.2.0/24",)))
    client = ClientNetworks.of("192.0.2.7")
    results = [rig.guard.failed(client, f"u{i}@example.org", "p") for i in range(100)]
    assert {(r.failures, r.delay) for r in results} == {(0, 0.0)}
    assert rig.guard.admit(client) == rig.guard.admit(ClientNetworks.of("192.0.2.8"))
    assert not rig.guard.admit(client).refuse
    rig.limits.ban("net:192.0.2.0/24", 100, "operator", memory=0)
    assert rig.guard.admit(client).ban is None  # an allow-listed client is never refused
    assert rig.guard.check(client, "u1@example.org").refused is None


def test_loopback_is_not_allow_listed_by_default(rig: Rig) -> None:
    fail(rig, "127.0.0.1", CFG.host_failures)
    assert rig.guard.admit(ClientNetworks.of("127.0.0.1")).refuse


def test_passwords_never_reach_the_store(rig: Rig, tmp_path: Path) -> None:
    rig.guard.failed(ClientNetworks.of("192.0.2.7"), "alice@example.org", "Sup3r-Secret-Guess")
    raw = (tmp_path / "limits.db").read_bytes() + (tmp_path / "limits.db-wal").read_bytes()
    assert b"Sup3r-Secret-Guess" not in raw


def test_a_name_with_a_bar_cannot_forge_a_known_network_lock(rig: Rig) -> None:
    rig.know("bob@example.org", "198.51.100.7")
    forged = "bob@example.org|198.51.100.0/24"
    for i in range(CFG.account_failures + 5):
        rig.guard.failed(ClientNetworks.of(f"10.{i}.0.1"), forged, f"p{i}")
    assert rig.guard.check(ClientNetworks.of("198.51.100.7"), "bob@example.org").refused is None


def test_a_ban_already_in_force_is_not_a_new_offence(rig: Rig) -> None:
    key = "net:192.0.2.7/32"
    rig.limits.ban(key, CFG.ban_time, "host_failures", memory=CFG.ban_memory)
    fail(rig, "192.0.2.7", CFG.host_failures)
    (ban,) = rig.limits.active_bans([key])
    assert ban.offences == 1
    assert ban.until - ban.since == CFG.ban_time


def test_repeated_is_none_for_a_new_guess_and_a_failure_for_a_replay(rig: Rig) -> None:
    client = ClientNetworks.of("192.0.2.7")
    assert rig.guard.repeated(client, "alice@example.org", "guess", 1) is None
    rig.guard.failed(client, "alice@example.org", "guess", 1)
    replay = rig.guard.repeated(client, "Alice@example.org", "guess", 1)
    assert replay is not None
    assert replay.repeated
    assert replay.failures == 1
    assert rig.guard.repeated(client, "alice@example.org", "guess", 2) is None

"""MTA-STS discovery: TXT lookup, fetch, the on-disk cache and the in-memory recheck interval.

Lookups use the real Resolver against a loopback ZoneServer (127.0.54.53) and a real HTTPS
policy server (127.0.54.54), both on free ports.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from tests.peers.dns_server import ZoneServer
from tests.peers.https_server import HttpsServer
from tests.support import tls
from tests.support.clock import FakeClock
from tests.unit.delivery.mtasts_samples import DOMAIN, PATH, RFC_POLICY

from sendgate.delivery.dns import Resolver
from sendgate.delivery.mtasts import RECHECK_SECONDS, MtaSts
from sendgate.delivery.mtasts_policy import MtaStsError, StsPolicy


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    return tls.client_context(ca)


class World:
    """A DNS zone, an HTTPS policy server on a free port, and an MtaSts over them."""

    def __init__(
        self, zone: ZoneServer, https: HttpsServer, cache_dir: Path, context: ssl.SSLContext
    ) -> None:
        self.zone = zone
        self.https = https
        self.cache_dir = cache_dir
        self.clock = FakeClock(1_000_000.0)
        self.context = context
        self.sts = self.new_mtasts()

    def new_mtasts(self) -> MtaSts:
        resolver = Resolver([self.zone.nameserver], timeout=5)
        port = self.https.address[1]
        return MtaSts(resolver, self.cache_dir, self.context, self.clock, timeout=5, port=port)

    def publish(self, policy_id: str, body: bytes = RFC_POLICY, status: int = 200) -> None:
        self.zone.remove(f"_mta-sts.{DOMAIN}", "TXT")
        self.zone.add(f"_mta-sts.{DOMAIN}", "TXT", f'"v=STSv1; id={policy_id};"')
        self.https.routes[PATH] = (status, "text/plain", body)

    def lookup(self) -> StsPolicy | None:
        """A full discovery, as by a new runner (the in-memory recheck memo is tested apart)."""
        self.sts = self.new_mtasts()
        return asyncio.run(self.sts.policy(DOMAIN))

    def lookup_again(self) -> StsPolicy | None:
        """A lookup by the same MtaSts, which remembers answers for RECHECK_SECONDS."""
        return asyncio.run(self.sts.policy(DOMAIN))

    @property
    def fetches(self) -> int:
        return len(self.https.requests)


@pytest.fixture
def world(ca: trustme.CA, client_context: ssl.SSLContext, tmp_path: Path) -> Iterator[World]:
    with (
        ZoneServer("127.0.54.53", 0) as zone,
        HttpsServer("127.0.54.54", 0, ca.issue_cert(f"mta-sts.{DOMAIN}")) as https,
    ):
        zone.add(f"mta-sts.{DOMAIN}", "A", "127.0.54.54")
        yield World(zone, https, tmp_path / "mta-sts", client_context)


def test_policy_is_fetched_and_cached_on_disk(world: World) -> None:
    world.publish("one")
    policy = world.lookup()
    assert policy is not None
    assert (policy.mode, policy.policy_id, policy.fetched_at) == ("enforce", "one", 1_000_000.0)
    stored = json.loads((world.cache_dir / f"{DOMAIN}.json").read_text())
    assert stored["policy_id"] == "one"
    assert stored["mx"] == ["mail.example.com", "*.example.net", "backupmx.example.com"]
    assert [p.name for p in world.cache_dir.iterdir()] == [f"{DOMAIN}.json"]


def test_same_id_reuses_the_cache_without_fetching(world: World) -> None:
    world.publish("one")
    first = world.lookup()
    world.clock.advance(1000)
    world.sts = world.new_mtasts()  # a new process: only the file remembers
    assert world.lookup() == first
    assert world.fetches == 1


def test_new_id_refetches(world: World) -> None:
    world.publish("one")
    world.lookup()
    world.clock.advance(10)
    world.publish("two", RFC_POLICY.replace(b"enforce", b"testing"))
    policy = world.lookup()
    assert policy is not None
    assert (policy.policy_id, policy.mode, policy.fetched_at) == ("two", "testing", 1_000_010.0)
    assert world.fetches == 2
    stored = json.loads((world.cache_dir / f"{DOMAIN}.json").read_text())
    assert stored["policy_id"] == "two"


def test_expired_cache_is_refetched_even_with_the_same_id(world: World) -> None:
    world.publish("one", b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 60\n")
    world.lookup()
    world.clock.advance(60)
    policy = world.lookup()
    assert policy is not None
    assert policy.fetched_at == world.clock.now
    assert world.fetches == 2


def test_fetch_failure_keeps_the_unexpired_cache(world: World) -> None:
    world.publish("one", b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 60\n")
    first = world.lookup()
    world.clock.advance(30)
    world.publish("two", status=500)
    assert world.lookup() == first
    world.publish("three", b"version: STSv2\n")  # parse failure
    assert world.lookup() == first
    world.clock.advance(30)  # now expired, and the fetch still fails
    assert world.lookup() is None
    assert world.fetches == 4


def test_no_txt_record_uses_the_cache_or_nothing(world: World) -> None:
    assert world.lookup() is None
    assert world.fetches == 0
    world.publish("one")
    first = world.lookup()
    world.zone.remove(f"_mta-sts.{DOMAIN}", "TXT")
    assert world.lookup() == first
    assert world.fetches == 1


def test_txt_without_sts_record_means_no_policy(world: World) -> None:
    world.zone.add(f"_mta-sts.{DOMAIN}", "TXT", '"v=spf1 -all"')
    assert world.lookup() is None
    assert world.fetches == 0


def test_dns_failure_uses_the_cache(world: World) -> None:
    world.publish("one")
    first = world.lookup()
    world.zone.fail(f"_mta-sts.{DOMAIN}", "TXT")
    world.clock.advance(5)
    assert world.lookup() == first


def test_missing_policy_host_address_means_no_policy(world: World) -> None:
    world.publish("one")
    world.zone.remove(f"mta-sts.{DOMAIN}", "A")
    assert world.lookup() is None
    assert not (world.cache_dir / f"{DOMAIN}.json").exists()


def test_mode_none_is_cached_and_returned(world: World) -> None:
    world.publish("gone", b"version: STSv1\nmode: none\nmax_age: 86400\n")
    policy = world.lookup()
    assert policy is not None
    assert (policy.mode, policy.mx) == ("none", ())
    world.clock.advance(100)
    assert world.lookup() == policy
    assert world.fetches == 1


def test_corrupt_cache_file_is_ignored_and_replaced(world: World) -> None:
    world.cache_dir.mkdir()
    (world.cache_dir / f"{DOMAIN}.json").write_text('{"mode": "enforce", "mx": 3}')
    world.publish("one")
    policy = world.lookup()
    assert policy is not None
    assert policy.policy_id == "one"
    assert json.loads((world.cache_dir / f"{DOMAIN}.json").read_text())["mx"][0] == (
        "mail.example.com"
    )


def test_unwritable_cache_still_returns_the_policy(world: World) -> None:
    world.cache_dir.write_text("a file where the directory should be")
    world.publish("one")
    policy = world.lookup()
    assert policy is not None
    assert policy.policy_id == "one"


def test_policy_refuses_an_invalid_domain(world: World) -> None:
    with pytest.raises(MtaStsError, match="not a valid domain"):
        asyncio.run(world.sts.policy("../../etc/passwd"))


def test_answers_are_remembered_briefly_so_messages_do_not_each_ask_dns(world: World) -> None:
    world.publish("one")
    first = world.lookup()
    asked = len(world.zone.queries)
    world.clock.advance(RECHECK_SECONDS - 1)
    assert world.lookup_again() == first
    assert len(world.zone.queries) == asked
    world.clock.advance(2)
    assert world.lookup_again() == first
    assert len(world.zone.queries) > asked  # the TXT record is asked again
    assert world.fetches == 1


def test_no_policy_is_remembered_too(world: World) -> None:
    assert world.lookup() is None
    asked = len(world.zone.queries)
    world.publish("one")
    assert world.lookup_again() is None  # within the recheck interval
    assert len(world.zone.queries) == asked


def test_a_policy_past_half_its_max_age_is_refreshed_early(world: World) -> None:
    world.publish("one", b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 86400\n")
    world.lookup()
    world.clock.advance(43201)
    refreshed = world.lookup()
    assert refreshed is not None
    assert refreshed.fetched_at == world.clock.now
    assert world.fetches == 2


def test_a_failed_early_refresh_keeps_the_cached_policy(world: World) -> None:
    world.publish("one", b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 86400\n")
    first = world.lookup()
    world.https.routes[PATH] = (404, "text/plain", b"gone")
    world.clock.advance(43201)
    assert world.lookup() == first
    assert world.fetches == 2

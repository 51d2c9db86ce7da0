"""Tests for sendgate.delivery.route against a real DNS server on 127.0.53.26-50."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.peers.dns_server import ZoneServer

from sendgate.delivery.dns import Resolver
from sendgate.delivery.route import Hop, MxRoute, RouteError, mx_route


def route(server: ZoneServer, domain: str, seed: int = 0) -> MxRoute:
    resolver = Resolver([server.nameserver], timeout=5.0)
    return asyncio.run(mx_route(resolver, domain, rng=random.Random(seed)))


def route_error(server: ZoneServer, domain: str) -> RouteError:
    with pytest.raises(RouteError) as caught:
        route(server, domain)
    assert "\n" not in str(caught.value)
    return caught.value


def test_hosts_are_tried_by_preference() -> None:
    with ZoneServer("127.0.53.26") as server:
        server.add("example.test", "MX", "30 c.example.test.")
        server.add("example.test", "MX", "10 a.example.test.")
        server.add("example.test", "MX", "20 b.example.test.")
        for i, host in enumerate("abc"):
            server.add(f"{host}.example.test", "A", f"192.0.2.{i + 1}")
        result = route(server, "example.test")
    assert result == MxRoute(
        domain="example.test",
        hops=(
            Hop("a.example.test", ("192.0.2.1",), 10),
            Hop("b.example.test", ("192.0.2.2",), 20),
            Hop("c.example.test", ("192.0.2.3",), 30),
        ),
        mx_secure=False,
        implicit=False,
    )


def test_equal_preferences_are_shuffled_by_rng() -> None:
    with ZoneServer("127.0.53.27") as server:
        server.add("example.test", "MX", "10 a.example.test.")
        server.add("example.test", "MX", "10 b.example.test.")
        server.add("example.test", "MX", "5 first.example.test.")
        for host in ("a", "b", "first"):
            server.add(f"{host}.example.test", "A", "192.0.2.1")
        orders = {
            seed: tuple(hop.host for hop in route(server, "example.test", seed).hops)
            for seed in range(16)
        }
        again = tuple(hop.host for hop in route(server, "example.test", 3).hops)
    assert set(orders.values()) == {
        ("first.example.test", "a.example.test", "b.example.test"),
        ("first.example.test", "b.example.test", "a.example.test"),
    }
    assert again == orders[3]


def test_null_mx_means_no_mail() -> None:
    with ZoneServer("127.0.53.28") as server:
        server.add("nomail.test", "MX", "0 .")
        server.add("nomail.test", "A", "192.0.2.1")  # never used as an implicit MX
        error = route_error(server, "nomail.test")
    assert (error.permanent, error.status) == (True, "5.1.10")
    assert "null MX" in str(error)


def test_null_mx_among_real_ones_is_ignored() -> None:
    with ZoneServer("127.0.53.29") as server:
        server.add("mixed.test", "MX", "0 .")
        server.add("mixed.test", "MX", "10 mx.mixed.test.")
        server.add("mx.mixed.test", "A", "192.0.2.1")
        result = route(server, "mixed.test")
    assert result.hops == (Hop("mx.mixed.test", ("192.0.2.1",), 10),)


def test_missing_domain_is_permanent() -> None:
    with ZoneServer("127.0.53.30") as server:
        server.add("other.test", "MX", "10 mx.other.test.")
        error = route_error(server, "missing.test")
    assert (error.permanent, error.status) == (True, "5.1.2")
    assert "'missing.test' does not exist" in str(error)


def test_failed_mx_lookup_is_temporary() -> None:
    with ZoneServer("127.0.53.31") as server:
        server.add("broken.test", "MX", "10 mx.broken.test.")
        server.fail("broken.test", "MX")
        error = route_error(server, "broken.test")
    assert (error.permanent, error.status) == (False, "4.4.3")


def test_implicit_mx_uses_the_domains_addresses() -> None:
    with ZoneServer("127.0.53.32") as server:
        server.set_secure("signed.test")
        server.add("signed.test", "A", "192.0.2.7")
        server.add("signed.test", "AAAA", "2001:db8::7")
        server.add("signed.test", "TXT", '"exists, but has no MX"')
        result = route(server, "Signed.Test.")
    assert result == MxRoute(
        domain="signed.test",
        hops=(Hop("signed.test", ("2001:db8::7", "192.0.2.7"), 0),),
        mx_secure=True,
        implicit=True,
    )


def test_implicit_mx_without_addresses_is_permanent() -> None:
    with ZoneServer("127.0.53.33") as server:
        server.add("bare.test", "TXT", '"no MX, no A, no AAAA"')
        error = route_error(server, "bare.test")
    assert (error.permanent, error.status) == (True, "5.1.2")


def test_implicit_mx_with_failed_address_lookup_is_temporary() -> None:
    with ZoneServer("127.0.53.34") as server:
        server.add("flaky.test", "TXT", '"no MX"')
        server.fail("flaky.test", "A")
        server.fail("flaky.test", "AAAA")
        error = route_error(server, "flaky.test")
    assert (error.permanent, error.status) == (False, "4.4.3")


def test_hosts_without_addresses_are_dropped() -> None:
    with ZoneServer("127.0.53.35") as server:
        server.add("example.test", "MX", "10 failing.example.test.")
        server.add("example.test", "MX", "20 missing.example.test.")
        server.add("example.test", "MX", "30 empty.example.test.")
        server.add("example.test", "MX", "40 good.example.test.")
        server.add("failing.example.test", "A", "192.0.2.1")
        server.fail("failing.example.test")
        server.add("empty.example.test", "TXT", '"no addresses"')
        server.add("good.example.test", "AAAA", "2001:db8::4")
        result = route(server, "example.test")
    assert result.hops == (Hop("good.example.test", ("2001:db8::4",), 40),)


def test_all_hosts_dropped_with_a_temporary_failure_is_temporary() -> None:
    with ZoneServer("127.0.53.36") as server:
        server.add("example.test", "MX", "10 failing.example.test.")
        server.add("example.test", "MX", "20 missing.example.test.")
        server.add("failing.example.test", "A", "192.0.2.1")
        server.fail("failing.example.test")
        error = route_error(server, "example.test")
    assert (error.permanent, error.status) == (False, "4.4.3")


def test_all_hosts_dropped_without_failures_is_permanent() -> None:
    with ZoneServer("127.0.53.37") as server:
        server.add("example.test", "MX", "10 missing.example.test.")
        server.add("example.test", "MX", "20 empty.example.test.")
        server.add("empty.example.test", "TXT", '"no addresses"')
        error = route_error(server, "example.test")
    assert (error.permanent, error.status) == (True, "5.1.2")


def test_ip_literals_and_odd_names_in_mx_are_dropped() -> None:
    with ZoneServer("127.0.53.38") as server:
        server.add("example.test", "MX", "1 192.0.2.1.")  # resolvable, but not a host name
        server.add("example.test", "MX", "2 bad\\032name.example.test.")
        server.add("example.test", "MX", "3 good.example.test.")
        server.add("example.test", "MX", "4 under_score.example.test.")  # found in the wild
        hosts = ("192.0.2.1", "bad\\032name.example.test", "good.example.test")
        for host in (*hosts, "under_score.example.test"):
            server.add(host, "A", "192.0.2.9")
        result = route(server, "example.test")
        asked = {query.name for query in server.queries if query.rdtype == "A"}
    assert result.hops == (
        Hop("good.example.test", ("192.0.2.9",), 3),
        Hop("under_score.example.test", ("192.0.2.9",), 4),
    )
    assert asked == {"good.example.test", "under_score.example.test"}


def test_unspecified_addresses_are_dropped() -> None:
    with ZoneServer("127.0.53.39") as server:
        server.add("example.test", "MX", "10 zero.example.test.")
        server.add("example.test", "MX", "20 mixed.example.test.")
        server.add("zero.example.test", "A", "0.0.0.0")  # noqa: S104 - the test's point
        server.add("zero.example.test", "AAAA", "::")
        server.add("mixed.example.test", "A", "0.0.0.0")  # noqa: S104
        server.add("mixed.example.test", "A", "192.0.2.5")
        result = route(server, "example.test")
    assert result.hops == (Hop("mixed.example.test", ("192.0.2.5",), 20),)


def test_at_most_ten_hops() -> None:
    with ZoneServer("127.0.53.40") as server:
        for i in range(15):
            server.add("big.test", "MX", f"{i} mx{i}.big.test.")
            server.add(f"mx{i}.big.test", "A", "192.0.2.1")
        result = route(server, "big.test")
        asked = {query.name for query in server.queries if query.rdtype == "A"}
    assert [hop.host for hop in result.hops] == [f"mx{i}.big.test" for i in range(10)]
    assert len(asked) == 10  # the rest are not even looked up


def test_mx_secure_is_the_ad_flag_of_the_mx_rrset() -> None:
    with ZoneServer("127.0.53.41") as server:
        server.set_secure("signed.test")
        server.add("signed.test", "MX", "10 mx.plain.test.")
        server.add("plain.test", "MX", "10 mx.plain.test.")
        server.add("mx.plain.test", "A", "192.0.2.1")
        signed = route(server, "signed.test")
        plain = route(server, "plain.test")
    assert signed.mx_secure is True
    assert plain.mx_secure is False


def test_a_host_listed_twice_keeps_its_best_preference() -> None:
    with ZoneServer("127.0.53.42") as server:
        server.add("example.test", "MX", "10 a.example.test.")
        server.add("example.test", "MX", "20 a.example.test.")
        server.add("example.test", "MX", "15 b.example.test.")
        server.add("a.example.test", "A", "192.0.2.1")
        server.add("b.example.test", "A", "192.0.2.2")
        result = route(server, "example.test")
    assert [(hop.host, hop.preference) for hop in result.hops] == [
        ("a.example.test", 10),
        ("b.example.test", 15),
    ]


def test_invalid_domain_is_permanent() -> None:
    with ZoneServer("127.0.53.43") as server:
        error = route_error(server, "a..b")
    assert (error.permanent, error.status) == (True, "5.1.2")


_MX_SETS = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=3),  # preference
        st.integers(min_value=0, max_value=5),  # which host
    ),
    min_size=1,
    max_size=8,
    unique=True,
)


def test_route_invariants_for_any_mx_set() -> None:
    with ZoneServer("127.0.53.44") as server:

        @settings(max_examples=40, deadline=None)
        @given(_MX_SETS, st.sets(st.integers(min_value=0, max_value=5)), st.integers(0, 99))
        def check(mx_set: list[tuple[int, int]], with_address: set[int], seed: int) -> None:
            server.clear()
            for preference, host in mx_set:
                server.add("p.test", "MX", f"{preference} h{host}.p.test.")
            for host in with_address:
                server.add(f"h{host}.p.test", "A", f"192.0.2.{host + 1}")
            best = {}
            for preference, host in sorted(mx_set, reverse=True):
                best[f"h{host}.p.test"] = preference
            reachable = {name for name in best if int(name[1]) in with_address}
            if not reachable:
                error = route_error(server, "p.test")
                assert (error.permanent, error.status) == (True, "5.1.2")
                return
            result = route(server, "p.test", seed)
            hosts = [hop.host for hop in result.hops]
            assert set(hosts) == reachable
            assert len(hosts) == len(reachable)
            assert [hop.preference for hop in result.hops] == sorted(best[h] for h in hosts)
            assert all(hop.preference == best[hop.host] for hop in result.hops)

        check()

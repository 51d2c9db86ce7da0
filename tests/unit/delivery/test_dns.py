"""Tests for sendgate.delivery.dns against a real DNS server on 127.0.53.1-25."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable
from typing import TypeVar

import dns.flags
import dns.name
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.peers.dns_server import ZoneServer

from sendgate.delivery.dns import Answer, DnsError, MxRecord, Resolver, TlsaRecord

_T = TypeVar("_T")

SHA256 = "8f" * 32


def run(awaitable: Awaitable[_T]) -> _T:
    async def wrapper() -> _T:
        return await awaitable

    return asyncio.run(wrapper())


def resolver_for(server: ZoneServer) -> Resolver:
    return Resolver([server.nameserver], timeout=5.0)


def txt_text(strings: list[bytes]) -> str:
    """Zone-file text of a TXT record with these character-strings, every byte escaped."""
    return " ".join('"' + "".join(f"\\{byte:03d}" for byte in s) + '"' for s in strings)


def test_mx_records_are_lower_case_without_trailing_dot() -> None:
    with ZoneServer("127.0.53.1") as server:
        server.add("example.test", "MX", "10 MX1.Example.TEST.")
        server.add("example.test", "MX", "20 mx2.example.test.")
        answer = run(resolver_for(server).mx("Example.Test."))
    assert sorted(answer.records) == [
        MxRecord(10, "mx1.example.test"),
        MxRecord(20, "mx2.example.test"),
    ]
    assert answer.secure is False


def test_null_mx_host_is_empty() -> None:
    with ZoneServer("127.0.53.2") as server:
        server.add("nomail.test", "MX", "0 .")
        answer = run(resolver_for(server).mx("nomail.test"))
    assert answer.records == (MxRecord(0, ""),)


def test_nxdomain_is_permanent() -> None:
    with ZoneServer("127.0.53.3") as server:
        server.add("exists.test", "A", "192.0.2.1")
        with pytest.raises(DnsError, match=r"missing\.test: domain does not exist") as caught:
            run(resolver_for(server).mx("missing.test"))
    assert caught.value.permanent is True


def test_nodata_is_an_empty_answer() -> None:
    with ZoneServer("127.0.53.4") as server:
        server.add("a-only.test", "A", "192.0.2.1")
        answer = run(resolver_for(server).mx("a-only.test"))
    assert answer == Answer((), secure=False)


def test_servfail_is_temporary() -> None:
    with ZoneServer("127.0.53.5") as server:
        server.add("broken.test", "MX", "10 mx.broken.test.")
        server.fail("broken.test")
        with pytest.raises(DnsError, match="SERVFAIL") as caught:
            run(resolver_for(server).mx("broken.test"))
    assert caught.value.permanent is False


def test_timeout_is_temporary() -> None:
    # A bound UDP socket that never answers: the resolver's lifetime runs out.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.53.6", 0))
        resolver = Resolver([silent.getsockname()], timeout=0.3)
        with pytest.raises(DnsError, match="timed out") as caught:
            run(resolver.mx("example.test"))
        received = silent.recv(4096)
    assert caught.value.permanent is False
    assert b"\x07example\x04test\x00" in received


def test_no_nameservers_is_temporary() -> None:
    with pytest.raises(DnsError, match="no nameserver") as caught:
        run(Resolver([], timeout=1.0).mx("example.test"))
    assert caught.value.permanent is False


def test_invalid_nameserver_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"'dns\.example' is not an IP address"):
        Resolver([("dns.example", 53)])
    with pytest.raises(ValueError, match="port 0 is out of range"):
        Resolver([("127.0.0.1", 0)])


def test_addresses_ipv6_first_then_ipv4() -> None:
    with ZoneServer("127.0.53.7") as server:
        server.add("mx.test", "A", "192.0.2.1")
        server.add("mx.test", "A", "192.0.2.2")
        server.add("mx.test", "AAAA", "2001:db8::1")
        server.add("v4only.test", "A", "192.0.2.9")
        resolver = resolver_for(server)
        both = run(resolver.addresses("mx.test"))
        v4only = run(resolver.addresses("v4only.test"))
    assert both.records[0] == "2001:db8::1"
    assert sorted(both.records[1:]) == ["192.0.2.1", "192.0.2.2"]
    assert v4only.records == ("192.0.2.9",)


def test_addresses_with_one_family_failing() -> None:
    with ZoneServer("127.0.53.8") as server:
        server.set_secure("test")
        server.add("half.test", "A", "192.0.2.1")
        server.add("half.test", "AAAA", "2001:db8::1")
        server.fail("half.test", "AAAA")
        server.add("none.test", "A", "192.0.2.1")
        server.fail("none.test")
        resolver = resolver_for(server)
        half = run(resolver.addresses("half.test"))
        with pytest.raises(DnsError) as caught:
            run(resolver.addresses("none.test"))
    # The A records are usable, but an incomplete set is never reported as validated.
    assert half == Answer(("192.0.2.1",), secure=False)
    assert caught.value.permanent is False


def test_addresses_of_missing_host_are_permanent_failure() -> None:
    with ZoneServer("127.0.53.9") as server:
        server.add("other.test", "A", "192.0.2.1")
        with pytest.raises(DnsError, match="does not exist") as caught:
            run(resolver_for(server).addresses("gone.test"))
    assert caught.value.permanent is True


def test_secure_is_the_ad_flag_and_queries_ask_for_it() -> None:
    with ZoneServer("127.0.53.10") as server:
        server.set_secure("signed.test")
        server.add("signed.test", "MX", "10 mx.signed.test.")
        server.add("plain.test", "MX", "10 mx.plain.test.")
        resolver = resolver_for(server)
        signed = run(resolver.mx("signed.test"))
        plain = run(resolver.mx("plain.test"))
        empty_signed = run(resolver.txt("signed.test"))
        queries = server.queries
    assert signed.secure is True
    assert plain.secure is False
    assert empty_signed == Answer((), secure=True)
    assert len(queries) == 3
    for query in queries:
        assert query.flags & dns.flags.AD
        assert query.flags & dns.flags.RD
        assert query.edns == 0
        assert query.payload == 1232
        assert not query.ednsflags & dns.flags.DO


def test_txt_strings_are_joined() -> None:
    with ZoneServer("127.0.53.11") as server:
        server.add("example.test", "TXT", '"v=spf1 " "-all"')
        server.add("_mta-sts.example.test", "TXT", '"v=STSv1; id=1"')
        resolver = resolver_for(server)
        spf = run(resolver.txt("example.test"))
        sts = run(resolver.txt("_mta-sts.example.test"))
    assert spf.records == (b"v=spf1 -all",)
    assert sts.records == (b"v=STSv1; id=1",)


def test_tlsa_records_are_parsed() -> None:
    with ZoneServer("127.0.53.12") as server:
        server.add("_25._tcp.mx.example.test", "TLSA", f"3 1 1 {SHA256}")
        server.add("_25._tcp.mx.example.test", "TLSA", "2 0 0 0102030405")
        answer = run(resolver_for(server).tlsa("_25._tcp.mx.example.test"))
    assert sorted(answer.records) == [
        TlsaRecord(2, 0, 0, bytes([1, 2, 3, 4, 5])),
        TlsaRecord(3, 1, 1, bytes.fromhex(SHA256)),
    ]


def test_truncated_udp_answer_is_retried_over_tcp() -> None:
    strings = [bytes([ord("a") + i % 26]) * 200 for i in range(20)]  # 4000 bytes > 1232
    with ZoneServer("127.0.53.13") as server:
        server.add("big.test", "TXT", txt_text(strings))
        answer = run(resolver_for(server).txt("big.test"))
        transports = [query.transport for query in server.queries]
    assert answer.records == (b"".join(strings),)
    assert transports == ["udp", "tcp"]


def test_cname_chain_is_followed() -> None:
    with ZoneServer("127.0.53.14") as server:
        server.set_secure("signed.test")
        server.add("alias.signed.test", "CNAME", "middle.signed.test.")
        server.add("middle.signed.test", "CNAME", "target.signed.test.")
        server.add("target.signed.test", "MX", "5 mx.target.test.")
        server.add("alias.signed.test", "TXT", '"unused"')  # other types do not leak in
        server.add("leak.signed.test", "CNAME", "target.unsigned.test.")
        server.add("target.unsigned.test", "MX", "7 mx.unsigned.test.")
        resolver = resolver_for(server)
        chained = run(resolver.mx("alias.signed.test"))
        leaked = run(resolver.mx("leak.signed.test"))
    assert chained == Answer((MxRecord(5, "mx.target.test"),), secure=True)
    # One insecure link makes the whole answer insecure.
    assert leaked == Answer((MxRecord(7, "mx.unsigned.test"),), secure=False)


def test_huge_rrset_is_cut_at_100_records() -> None:
    with ZoneServer("127.0.53.15") as server:
        for i in range(150):
            server.add("many.test", "A", f"10.0.{i // 250}.{i % 250 + 1}")
        answer = run(resolver_for(server).addresses("many.test"))
    assert len(answer.records) == 100
    assert len(set(answer.records)) == 100


@pytest.mark.parametrize("name", ["", ".", "a..b", "x" * 64 + ".test", "a." * 130 + "test"])
def test_invalid_name_is_permanent_and_not_queried(name: str) -> None:
    with ZoneServer("127.0.53.16") as server:
        with pytest.raises(DnsError, match="invalid domain name") as caught:
            run(resolver_for(server).mx(name))
        queries = server.queries
    assert caught.value.permanent is True
    assert "\n" not in str(caught.value)
    assert queries == []


def test_names_are_absolute_without_search_domains() -> None:
    with ZoneServer("127.0.53.17") as server:
        with pytest.raises(DnsError):
            run(resolver_for(server).mx("localhost"))
        names = [query.name for query in server.queries]
    assert names == ["localhost"]


def test_nameserver_on_another_port() -> None:
    with ZoneServer("127.0.53.18", port=0) as server:
        server.add("example.test", "MX", "10 mx.example.test.")
        answer = run(resolver_for(server).mx("example.test"))
        port = server.port
    assert port != 53
    assert answer.records == (MxRecord(10, "mx.example.test"),)


def test_txt_round_trips_any_bytes() -> None:
    with ZoneServer("127.0.53.19") as server:
        resolver = resolver_for(server)

        @settings(max_examples=40, deadline=None)
        @given(st.lists(st.binary(max_size=255), min_size=1, max_size=6))
        def check(strings: list[bytes]) -> None:
            server.clear()
            server.add("p.test", "TXT", txt_text(strings))
            assert run(resolver.txt("p.test")).records == (b"".join(strings),)

        check()


def test_mx_host_text_is_one_lower_case_line() -> None:
    with ZoneServer("127.0.53.20") as server:
        resolver = resolver_for(server)

        @settings(max_examples=40, deadline=None)
        @given(st.lists(st.binary(min_size=1, max_size=20), min_size=1, max_size=4))
        def check(labels: list[bytes]) -> None:
            escaped = ".".join("".join(f"\\{byte:03d}" for byte in label) for label in labels)
            server.clear()
            server.add("p.test", "MX", f"10 {escaped}.")
            host = run(resolver.mx("p.test")).records[0].host
            assert host == host.lower()
            assert host.isprintable()
            # The text names the same host (dnspython compares names case-insensitively).
            assert dns.name.from_text(host) == dns.name.Name([*labels, b""])

        check()


def test_any_name_gives_a_one_line_dns_error() -> None:
    # The server knows no names: every name is either refused locally or NXDOMAIN.
    with ZoneServer("127.0.53.21") as server:
        resolver = resolver_for(server)

        @settings(max_examples=60, deadline=None)
        @given(st.text(max_size=80))
        def check(name: str) -> None:
            with pytest.raises(DnsError) as caught:
                run(resolver.mx(name))
            assert caught.value.permanent is True
            assert "\n" not in str(caught.value)

        check()

"""Tests for sendgate.delivery.plan: relay choice, relay passwords, relay targets, DANE per MX host.

DNS answers come from a real ZoneServer on 127.0.62.53 (a free port per test, so parallel runs
do not clash); MX targets under MTA-STS are covered by tests/integration/test_delivery.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given
from hypothesis import strategies as st
from tests.peers.dns_server import ZoneServer

from sendgate.config.kinds import HostPort
from sendgate.config.load import load_config
from sendgate.config.schema import Config, RouteConfig
from sendgate.delivery.dns import Resolver
from sendgate.delivery.plan import MAX_TARGETS, PlanError, Planner, Relay, load_relays, relay_for
from sendgate.delivery.route import RouteError
from sendgate.delivery.runner import trust_store
from sendgate.delivery.target import Target, TlsRequirement
from sendgate.errors import ConfigError
from sendgate.scaffold import init_instance

NAMESERVER = "127.0.62.53"
SHA256 = "8f" * 32


@pytest.fixture
def dns() -> Iterator[ZoneServer]:
    with ZoneServer(NAMESERVER, 0) as server:
        yield server


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _planner(server: ZoneServer, relays: Sequence[Relay] = (), *, dane: bool = True) -> Planner:
    return Planner(
        relays=relays,
        resolver=Resolver([server.nameserver], timeout=5.0),
        mta_sts=None,
        dane_enabled=dane,
        rng=random.Random(0),
    )


def _targets(planner: Planner, domain: str) -> list[Target]:
    return asyncio.run(planner.targets(domain))


def _plan_error(planner: Planner, domain: str) -> PlanError:
    with pytest.raises(PlanError) as caught:
        _targets(planner, domain)
    assert "\n" not in str(caught.value)
    return caught.value


def _relay(
    *domains: str, host: str = "relay.example.net", port: int = 587, tls: str = "starttls"
) -> Relay:
    return Relay(domains, host, port, tls, None)


# --- relay_for ----------------------------------------------------------------------------------


def test_an_exact_name_beats_suffixes_and_the_wildcard_in_any_order() -> None:
    exact, suffix, star = _relay("mail.example.com"), _relay(".example.com"), _relay("*")
    for relays in ([exact, suffix, star], [star, suffix, exact], [suffix, exact, star]):
        assert relay_for(relays, "mail.example.com") is exact


def test_the_longest_suffix_wins() -> None:
    short, long_ = _relay(".com"), _relay(".example.com")
    for relays in ([short, long_], [long_, short]):
        assert relay_for(relays, "a.b.example.com") is long_
        assert relay_for(relays, "example.org.com") is short


def test_the_wildcard_catches_the_rest_and_without_it_nothing_matches() -> None:
    suffix, star = _relay(".example.com"), _relay("*")
    assert relay_for([suffix, star], "example.org") is star
    assert relay_for([suffix], "example.org") is None
    assert relay_for([], "example.org") is None


def test_a_suffix_does_not_match_the_domain_itself_or_a_lookalike() -> None:
    suffix = _relay(".example.com")
    assert relay_for([suffix], "example.com") is None
    assert relay_for([suffix], "badexample.com") is None
    assert relay_for([suffix], "x.example.com") is suffix


def test_matching_ignores_the_case_of_the_domain() -> None:
    exact = _relay("example.com")
    assert relay_for([exact], "EXAMPLE.Com") is exact


def test_one_route_may_serve_several_patterns() -> None:
    both, star = _relay("example.com", ".example.net"), _relay("*")
    assert relay_for([star, both], "example.com") is both
    assert relay_for([star, both], "mx.example.net") is both
    assert relay_for([star, both], "example.net") is star


_LABEL = st.sampled_from(["a", "b", "mail", "example", "com"])
_DOMAIN = st.lists(_LABEL, min_size=1, max_size=4).map(".".join)
_PATTERN = st.one_of(st.just("*"), _DOMAIN, _DOMAIN.map(lambda domain: "." + domain))


@given(st.lists(st.lists(_PATTERN, min_size=1, max_size=3), max_size=5), _DOMAIN)
def test_relay_for_picks_the_most_specific_matching_pattern(
    patterns: list[list[str]], domain: str
) -> None:
    relays = [_relay(*each) for each in patterns]
    chosen = relay_for(relays, domain)
    every = {pattern for each in patterns for pattern in each}
    suffixes = [p for p in every if p.startswith(".") and domain.endswith(p)]
    if domain in every:
        assert chosen is not None
        assert domain in chosen.domains
    elif suffixes:
        longest = max(map(len, suffixes))
        assert chosen is not None
        assert any(p in suffixes and len(p) == longest for p in chosen.domains)
    elif "*" in every:
        assert chosen is not None
        assert "*" in chosen.domains
    else:
        assert chosen is None


# --- load_relays --------------------------------------------------------------------------------


def _route(**fields: object) -> RouteConfig:
    values: dict[str, object] = {
        "domains": ("*",),
        "smarthost": HostPort("relay.example.net", 587),
        "tls": "starttls",
        **fields,
    }
    return RouteConfig(**values)  # type: ignore[arg-type]


def test_a_route_without_credentials_has_no_auth() -> None:
    [relay] = load_relays([_route(domains=("example.com", ".example.net"), tls="implicit")])
    assert relay == Relay(
        ("example.com", ".example.net"), "relay.example.net", 587, "implicit", None
    )


def test_an_inline_password_is_used() -> None:
    [relay] = load_relays([_route(username="alice", password="s3cret pass")])
    assert relay.auth == ("alice", "s3cret pass")


def test_a_password_file_gives_its_first_line(tmp_path: Path) -> None:
    secret = tmp_path / "relay.pw"
    secret.write_text("first line pw\r\nsecond line\n", "utf-8")
    [relay] = load_relays([_route(username="alice", password_file=secret)])
    assert relay.auth == ("alice", "first line pw")


def test_the_error_names_the_route_index_the_file_and_the_reason(tmp_path: Path) -> None:
    missing = tmp_path / "gone.pw"
    good = _route(domains=("example.com",))
    with pytest.raises(ConfigError) as caught:
        load_relays([good, _route(username="alice", password_file=missing)])
    assert str(caught.value) == (
        f"delivery.routes[1].password_file: cannot read a password from {missing}: "
        "No such file or directory"
    )


def test_an_empty_password_file_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pw"
    empty.write_bytes(b"")
    with pytest.raises(ConfigError) as caught:
        load_relays([_route(username="alice", password_file=empty)])
    assert str(caught.value).endswith(f"{empty}: empty file")


def test_a_directory_as_password_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_relays([_route(username="alice", password_file=tmp_path)])
    assert str(caught.value).endswith(f"{tmp_path}: Is a directory")


def test_a_password_file_that_is_not_utf8_is_named_as_such(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.pw"
    latin1.write_bytes(b"p\xe4ssword\n")
    with pytest.raises(ConfigError) as caught:
        load_relays([_route(username="alice", password_file=latin1)])
    assert "empty file" not in str(caught.value)
    assert "UTF-8" in str(caught.value)


# --- relay targets ------------------------------------------------------------------------------


def test_a_plaintext_relay_on_an_ip_literal_needs_no_dns(dns: ZoneServer) -> None:
    relay = Relay(("*",), "127.0.0.1", 2525, "none", ("alice", "pw"))
    [target] = _targets(_planner(dns, [relay]), "example.org")
    assert target == Target(
        host="127.0.0.1",
        address="127.0.0.1",
        port=2525,
        tls=TlsRequirement(mode="none", verify="none", reason="smarthost"),
        auth=("alice", "pw"),
    )
    assert dns.queries == []


def test_an_ipv6_literal_is_used_in_its_canonical_form(dns: ZoneServer) -> None:
    relay = Relay(("*",), "0:0:0:0:0:0:0:1", 25, "none", None)
    [target] = _targets(_planner(dns, [relay]), "example.org")
    assert target.address == "::1"
    assert dns.queries == []


@pytest.mark.parametrize(("mode", "implicit"), [("starttls", False), ("implicit", True)])
def test_a_tls_relay_requires_a_certificate_for_its_name(
    dns: ZoneServer, mode: str, implicit: bool
) -> None:
    dns.add("relay.example.net", "A", "192.0.2.7")
    relay = Relay(("*",), "relay.example.net", 465, mode, None)
    [target] = _targets(_planner(dns, [relay]), "example.org")
    assert target.host == "relay.example.net"
    assert target.address == "192.0.2.7"
    assert target.port == 465
    assert target.tls == TlsRequirement(
        mode="required",
        verify="pkix",
        names=("relay.example.net",),
        implicit=implicit,
        reason="smarthost",
    )


def test_relay_addresses_come_ipv6_first_and_are_capped(dns: ZoneServer) -> None:
    for i in range(1, 5):
        dns.add("relay.example.net", "AAAA", f"2001:db8::{i}")
        dns.add("relay.example.net", "A", f"192.0.2.{i}")
    relay = Relay(("*",), "relay.example.net", 587, "starttls", None)
    targets = _targets(_planner(dns, [relay]), "example.org")
    assert len(targets) == MAX_TARGETS
    addresses = [t.address for t in targets]
    assert all(":" in a for a in addresses[:4])
    assert "." in addresses[4]
    assert {t.host for t in targets} == {"relay.example.net"}


def test_the_relay_is_chosen_by_recipient_domain_and_mx_is_not_looked_up(dns: ZoneServer) -> None:
    relays = [
        Relay(("example.com",), "127.0.0.2", 25, "none", None),
        Relay(("*",), "127.0.0.3", 25, "none", None),
    ]
    planner = _planner(dns, relays)
    assert [t.address for t in _targets(planner, "example.com")] == ["127.0.0.2"]
    assert [t.address for t in _targets(planner, "Other.Example")] == ["127.0.0.3"]
    assert dns.queries == []


def test_a_relay_by_address_gives_the_same_targets_each_time_and_a_named_one_asks_again(
    dns: ZoneServer,
) -> None:
    by_address = Relay(("example.com",), "127.0.0.2", 25, "none", None)
    by_name = Relay(("*",), "relay.example.net", 587, "starttls", None)
    planner = _planner(dns, [by_address, by_name])
    first = _targets(planner, "example.com")
    first.clear()  # a caller's list is its own
    assert [t.address for t in _targets(planner, "example.com")] == ["127.0.0.2"]
    dns.add("relay.example.net", "A", "192.0.2.7")
    assert [t.address for t in _targets(planner, "example.org")] == ["192.0.2.7"]
    dns.remove("relay.example.net", "A")
    dns.add("relay.example.net", "A", "192.0.2.8")
    assert [t.address for t in _targets(planner, "example.org")] == ["192.0.2.8"]


def test_a_relay_name_that_does_not_exist_defers_rather_than_bounces(dns: ZoneServer) -> None:
    relay = Relay(("*",), "relay.example.net", 587, "starttls", None)
    error = _plan_error(_planner(dns, [relay]), "example.org")
    assert not error.permanent
    assert error.status == "4.4.3"
    assert str(error).startswith("smarthost relay.example.net: ")


def test_a_relay_name_with_no_address_defers(dns: ZoneServer) -> None:
    dns.add("relay.example.net", "MX", "10 elsewhere.example.net.")  # NODATA for A/AAAA
    relay = Relay(("*",), "relay.example.net", 587, "starttls", None)
    error = _plan_error(_planner(dns, [relay]), "example.org")
    assert str(error) == "smarthost relay.example.net: no address"
    assert (error.permanent, error.status) == (False, "4.4.3")


def test_a_failing_relay_lookup_defers(dns: ZoneServer) -> None:
    dns.fail("relay.example.net")
    relay = Relay(("*",), "relay.example.net", 587, "starttls", None)
    error = _plan_error(_planner(dns, [relay]), "example.org")
    assert (error.permanent, error.status) == (False, "4.4.3")
    assert "SERVFAIL" in str(error)


# --- MX targets: DANE requirements --------------------------------------------------------------


def _secure_mx(dns: ZoneServer, *hosts: tuple[str, str]) -> None:
    dns.set_secure("example.org")
    for index, (host, address) in enumerate(hosts):
        dns.add("example.org", "MX", f"{10 * (index + 1)} {host}.")
        dns.add(host, "A", address)


def _der(ca: trustme.CA, name: str = "mx1.example.org") -> bytes:
    pem = ca.issue_cert(name).cert_chain_pems[0].bytes()
    return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)


def _spki_sha256(der: bytes) -> str:
    key = x509.load_der_x509_certificate(der).public_key()
    return hashlib.sha256(
        key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    ).hexdigest()


def test_a_failed_tlsa_lookup_requires_dane_that_never_matches(
    dns: ZoneServer, ca: trustme.CA
) -> None:
    _secure_mx(dns, ("mx1.example.org", "192.0.2.1"))
    dns.fail("_25._tcp.mx1.example.org", "TLSA")
    [target] = _targets(_planner(dns), "example.org")
    tls = target.tls
    assert (tls.mode, tls.verify, tls.reason) == ("required", "dane", "dane (TLSA lookup failed)")
    assert tls.leaf_check is not None
    assert not tls.leaf_check(_der(ca))


def test_dane_ta_records_alone_require_dane_that_never_matches(
    dns: ZoneServer, ca: trustme.CA
) -> None:
    der = _der(ca)
    _secure_mx(dns, ("mx1.example.org", "192.0.2.1"))
    dns.add("_25._tcp.mx1.example.org", "TLSA", f"2 1 1 {_spki_sha256(der)}")
    [target] = _targets(_planner(dns), "example.org")
    tls = target.tls
    assert (tls.mode, tls.verify, tls.reason) == ("required", "dane", "dane (DANE-TA only)")
    assert tls.leaf_check is not None
    assert not tls.leaf_check(der)


@pytest.mark.parametrize(
    "record",
    [
        f"0 1 1 {SHA256}",  # PKIX-TA: not for SMTP (RFC 7672 3.1.3)
        f"1 1 1 {SHA256}",  # PKIX-EE
        "3 1 9 abcd",  # unknown matching type
        f"3 7 1 {SHA256}",  # unknown selector
    ],
)
def test_unusable_tlsa_records_require_encryption_without_verification(
    dns: ZoneServer, record: str
) -> None:
    _secure_mx(dns, ("mx1.example.org", "192.0.2.1"))
    dns.add("_25._tcp.mx1.example.org", "TLSA", record)
    [target] = _targets(_planner(dns), "example.org")
    assert target.tls == TlsRequirement(
        mode="required", verify="none", reason="dane (unusable TLSA)"
    )


def test_dane_ee_records_check_the_leaf(dns: ZoneServer, ca: trustme.CA) -> None:
    der, other = _der(ca), _der(ca)
    _secure_mx(dns, ("mx1.example.org", "192.0.2.1"))
    dns.add("mx1.example.org", "AAAA", "2001:db8::1")
    dns.add("_25._tcp.mx1.example.org", "TLSA", f"3 1 1 {_spki_sha256(der)}")
    targets = _targets(_planner(dns), "example.org")
    assert [t.address for t in targets] == ["2001:db8::1", "192.0.2.1"]
    for target in targets:  # every address of the host gets the host's requirement
        assert (target.tls.mode, target.tls.verify, target.tls.reason) == (
            "required",
            "dane",
            "dane",
        )
        assert target.tls.leaf_check is not None
        assert target.tls.leaf_check(der)
        assert not target.tls.leaf_check(other)


def test_each_mx_host_gets_its_own_requirement(dns: ZoneServer) -> None:
    _secure_mx(dns, ("mx1.example.org", "192.0.2.1"), ("mx2.example.org", "192.0.2.2"))
    dns.add("_25._tcp.mx1.example.org", "TLSA", f"2 0 1 {SHA256}")
    targets = _targets(_planner(dns), "example.org")
    assert [(t.host, t.tls.reason) for t in targets] == [
        ("mx1.example.org", "dane (DANE-TA only)"),
        ("mx2.example.org", "opportunistic"),  # NXDOMAIN for its TLSA name: no DANE
    ]
    assert targets[1].tls.mode == "opportunistic"


def test_an_insecure_mx_answer_skips_the_tlsa_lookup(dns: ZoneServer) -> None:
    dns.add("example.org", "MX", "10 mx1.example.org.")
    dns.add("mx1.example.org", "A", "192.0.2.1")
    dns.add("_25._tcp.mx1.example.org", "TLSA", f"3 1 1 {SHA256}")
    [target] = _targets(_planner(dns), "example.org")
    assert target.tls.reason == "opportunistic"
    assert not [q for q in dns.queries if q.rdtype == "TLSA"]


def test_insecure_tlsa_records_under_a_secure_mx_are_ignored(dns: ZoneServer) -> None:
    dns.set_secure("example.org")
    dns.add("example.org", "MX", "10 mx.provider.test.")  # the MX host's zone is not signed
    dns.add("mx.provider.test", "A", "192.0.2.1")
    dns.add("_25._tcp.mx.provider.test", "TLSA", f"3 1 1 {SHA256}")
    [target] = _targets(_planner(dns), "example.org")
    assert target.tls.reason == "opportunistic"
    assert [q.name for q in dns.queries if q.rdtype == "TLSA"] == ["_25._tcp.mx.provider.test"]


def test_with_dane_disabled_tlsa_records_are_not_looked_up(dns: ZoneServer) -> None:
    _secure_mx(dns, ("mx1.example.org", "192.0.2.1"))
    dns.add("_25._tcp.mx1.example.org", "TLSA", f"3 1 1 {SHA256}")
    [target] = _targets(_planner(dns, dane=False), "example.org")
    assert target.tls.reason == "opportunistic"
    assert not [q for q in dns.queries if q.rdtype == "TLSA"]


def test_mx_targets_are_capped(dns: ZoneServer) -> None:
    for i in range(1, 8):
        dns.add("example.org", "MX", f"{i} mx{i}.example.org.")
        dns.add(f"mx{i}.example.org", "A", f"192.0.2.{i}")
    targets = _targets(_planner(dns), "example.org")
    assert [t.host for t in targets] == [f"mx{i}.example.org" for i in range(1, MAX_TARGETS + 1)]
    assert {t.port for t in targets} == {25}


def test_no_usable_mx_host_is_a_route_error(dns: ZoneServer) -> None:
    dns.add("example.org", "MX", "0 .")
    with pytest.raises(RouteError) as caught:
        _targets(_planner(dns), "example.org")
    assert (caught.value.permanent, caught.value.status) == (True, "5.1.10")


def test_localhost_smarthost_is_loopback_without_asking_dns(dns: ZoneServer) -> None:
    dns.add("localhost", "A", "192.0.2.66")  # a lying resolver must not move plaintext mail
    targets = _targets(_planner(dns, [_relay("*", host="localhost", tls="none")]), "x.test")
    assert [t.address for t in targets] == ["::1", "127.0.0.1"]
    assert dns.queries == []


def test_relay_password_is_not_in_its_repr() -> None:
    relay = Relay(("*",), "relay.example.net", 587, "starttls", ("user", "s3cret-pw-123"))
    assert "s3cret-pw-123" not in repr(relay)


def test_a_ca_file_that_is_not_pem_stops_the_start_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    cfg = _config_with_ca(tmp_path, bad)
    with pytest.raises(ConfigError, match=r"^delivery\.ca_file: cannot load CA certificates") as e:
        trust_store(cfg)
    assert "\n" not in str(e.value)


def _config_with_ca(tmp_path: Path, ca_file: Path) -> Config:
    path = init_instance(
        tmp_path / "inst",
        hostname="mx.example.test",
        submission="127.0.0.1:0",
        submissions="127.0.0.1:0",
    )
    base = load_config(path)
    return dataclasses.replace(base, delivery=dataclasses.replace(base.delivery, ca_file=ca_file))


# --- REQUIRETLS (RFC 8689 4.2.1): authenticated MX names, verified certificates -------------------


def _requiretls_targets(planner: Planner, domain: str) -> list[Target]:
    return asyncio.run(planner.targets(domain, requiretls=True))


def test_requiretls_to_a_dnssec_mx_verifies_the_host_name(dns: ZoneServer) -> None:
    _secure_mx(dns, ("mx1.example.org", "192.0.2.1"))
    [target] = _requiretls_targets(_planner(dns), "example.org")
    assert target.tls == TlsRequirement(
        mode="required", verify="pkix", names=("mx1.example.org",), reason="requiretls"
    )
    # Without REQUIRETLS the same host is opportunistic.
    assert _targets(_planner(dns), "example.org")[0].tls.mode == "opportunistic"


def test_requiretls_keeps_dane_and_verifies_where_tlsa_records_are_unusable(
    dns: ZoneServer,
) -> None:
    _secure_mx(dns, ("mx1.example.org", "192.0.2.1"), ("mx2.example.org", "192.0.2.2"))
    dns.add("_25._tcp.mx1.example.org", "TLSA", f"3 1 1 {SHA256}")
    dns.add("_25._tcp.mx2.example.org", "TLSA", f"1 1 1 {SHA256}")  # PKIX-EE: unusable
    first, second = _requiretls_targets(_planner(dns), "example.org")
    assert (first.tls.verify, first.tls.reason) == ("dane", "dane")
    assert (second.tls.verify, second.tls.names, second.tls.reason) == (
        "pkix",
        ("mx2.example.org",),
        "requiretls",
    )


def test_requiretls_to_an_unsigned_mx_without_mta_sts_fails_for_good(dns: ZoneServer) -> None:
    dns.add("example.org", "MX", "10 mx1.example.org.")
    dns.add("mx1.example.org", "A", "192.0.2.1")
    with pytest.raises(PlanError) as caught:
        _requiretls_targets(_planner(dns), "example.org")
    error = caught.value
    assert (error.permanent, error.status) == (True, "5.7.30")
    assert "REQUIRETLS: no MX host of example.org is authenticated" in str(error)
    assert "mx1.example.org" in str(error)


def test_requiretls_refuses_a_plaintext_route_and_keeps_a_tls_one(dns: ZoneServer) -> None:
    plain = _relay("example.org", host="127.0.0.1", tls="none")
    with pytest.raises(PlanError) as caught:
        _requiretls_targets(_planner(dns, [plain]), "example.org")
    assert (caught.value.permanent, caught.value.status) == (True, "5.7.30")
    assert "does not use TLS" in str(caught.value)
    verified = _relay("example.org", host="192.0.2.9", tls="starttls")
    [target] = _requiretls_targets(_planner(dns, [verified]), "example.org")
    assert (target.tls.mode, target.tls.verify) == ("required", "pkix")

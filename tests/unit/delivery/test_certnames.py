"""Tests for sendgate.delivery.certnames: RFC 6125 name matching and the certificate checks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.unit.delivery.client_peers import Pki

from sendgate.delivery.certnames import certificate_matches, certificate_problem, dns_name_matches
from sendgate.delivery.target import Target, TlsRequirement

label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
hostname = st.lists(label, min_size=2, max_size=4).map(".".join)


@given(hostname)
def test_a_name_matches_itself_in_any_case(name: str) -> None:
    assert dns_name_matches(name, name)
    assert dns_name_matches(name.upper(), name + ".")


@given(label, label, hostname)
def test_wildcard_stands_for_exactly_one_label(first: str, second: str, base: str) -> None:
    pattern = "*." + base
    assert dns_name_matches(pattern, f"{first}.{base}") == (base.count(".") >= 1)
    assert not dns_name_matches(pattern, base)
    assert not dns_name_matches(pattern, f"{first}.{second}.{base}")
    assert not dns_name_matches(f"{first}.*.{base}", f"{first}.{second}.{base}")


@pytest.mark.parametrize(
    ("pattern", "name", "ok"),
    [
        ("*.example.com", "mx.example.com", True),
        ("*.com", "example.com", False),  # too broad
        ("f*.example.com", "foo.example.com", False),  # partial wildcards are not honoured
        ("example.com", "*.example.com", False),
        ("ex\u00e4mple.com", "ex\u00e4mple.com", False),  # A-labels only
    ],
)
def test_dns_name_examples(pattern: str, name: str, ok: bool) -> None:
    assert dns_name_matches(pattern, name) is ok


def test_certificate_matches_reads_the_san(pki: Pki) -> None:
    wildcard = pki.ca.issue_cert("*.pool.test")
    assert certificate_matches(Pki.der(pki.mx), ["nope.test", "relay.test"])
    assert not certificate_matches(Pki.der(pki.mx), ["other.test"])
    assert certificate_matches(Pki.der(wildcard), ["a.pool.test"])
    assert not certificate_matches(Pki.der(wildcard), ["a.b.pool.test", "pool.test"])
    assert not certificate_matches(b"not a certificate", ["mx.test"])


# --- certificate_problem -----------------------------------------------------------------------


def _target(tls: TlsRequirement, host: str = "mx.test") -> Target:
    return Target(host, "127.0.55.1", 25, tls)


def test_pkix_accepts_the_host_itself_or_a_name_the_certificate_covers(pki: Pki) -> None:
    leaf = Pki.der(pki.mx)  # mx.test and relay.test
    named = TlsRequirement("required", "pkix", names=("mx.test",), reason="mta-sts")
    assert certificate_problem(_target(named), None) is None  # OpenSSL matched the host
    other = TlsRequirement("required", "pkix", names=("relay.test", "x.test"), reason="mta-sts")
    assert certificate_problem(_target(other), leaf) is None
    assert certificate_problem(_target(other), None) == (
        "certificate is not valid for relay.test, x.test"
    )
    wrong = TlsRequirement("required", "pkix", names=("other.test",), reason="mta-sts")
    assert certificate_problem(_target(wrong), leaf) == "certificate is not valid for other.test"


@pytest.mark.parametrize(("accepts", "leaf"), [(True, b"leaf"), (False, b"leaf"), (True, None)])
def test_dane_asks_the_leaf_check(accepts: bool, leaf: bytes | None) -> None:
    seen: list[bytes] = []

    def check(der: bytes) -> bool:
        seen.append(der)
        return accepts

    tls = TlsRequirement("required", "dane", leaf_check=check, reason="dane")
    problem = certificate_problem(_target(tls), leaf)
    assert problem == (None if accepts and leaf else "certificate does not match TLSA")
    assert seen == ([leaf] if leaf else [])


def test_no_verification_has_no_problem() -> None:
    assert certificate_problem(_target(TlsRequirement("required", "none")), None) is None

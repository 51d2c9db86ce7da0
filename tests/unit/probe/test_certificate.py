"""Certificate names and dates, as the probe (and the audit) judge them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import trustme
from cryptography import x509
from hypothesis import given
from hypothesis import strategies as st

from sendgate.probe.certificate import cert_findings, cert_names, matches

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def leaf(
    *names: str, not_after: datetime | None = None, not_before: datetime | None = None
) -> x509.Certificate:
    ca = trustme.CA()
    cert = ca.issue_cert(
        *names,
        not_before=not_before or NOW - timedelta(days=30),
        not_after=not_after or NOW + timedelta(days=90),
    )
    return x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes())


def codes(cert: x509.Certificate, name: str) -> list[str]:
    return [finding.code for finding in cert_findings(cert, name, NOW, "probe")]


def test_a_good_certificate_has_no_finding() -> None:
    assert codes(leaf("mx.example.test", "127.0.0.1"), "mx.example.test") == []
    assert codes(leaf("mx.example.test", "127.0.0.1"), "127.0.0.1") == []


def test_names_come_from_the_san() -> None:
    assert cert_names(leaf("mx.example.test", "*.example.org", "::1")) == [
        "mx.example.test",
        "*.example.org",
        "::1",
    ]


def test_a_wrong_name_is_critical() -> None:
    (finding,) = cert_findings(leaf("mx.example.test"), "mail.example.test", NOW, "probe")
    assert (finding.code, finding.severity.label) == ("probe.cert_name_mismatch", "critical")
    assert finding.evidence == "names in the certificate: mx.example.test"


@pytest.mark.parametrize(
    ("days", "code", "message"),
    [
        (-1, "probe.cert_expired", "the certificate expired on 2026-12-04"),
        (1, "probe.cert_expires_soon", "the certificate expires in 1 day"),
        (21, "probe.cert_expires_soon", "the certificate expires in 21 days"),
    ],
)
def test_dates(days: int, code: str, message: str) -> None:
    (finding,) = cert_findings(
        leaf("mx.example.test", not_after=NOW + timedelta(days=days)), "mx.example.test", NOW,
        "audit",
    )  # fmt: skip
    assert finding.code == code.replace("probe.", "audit.")
    assert finding.message == message


def test_22_days_left_is_fine_and_not_yet_valid_is_critical() -> None:
    assert codes(leaf("a.example", not_after=NOW + timedelta(days=22)), "a.example") == []
    later = leaf("a.example", not_before=NOW + timedelta(hours=2))
    assert codes(later, "a.example") == ["probe.cert_not_yet_valid"]


@pytest.mark.parametrize(
    ("name", "patterns", "expected"),
    [
        ("MX.Example.Test", ["mx.example.test"], True),
        ("mx.example.test.", ["mx.example.test"], True),
        ("mx.example.test", ["*.example.test"], True),
        ("a.mx.example.test", ["*.example.test"], False),  # one label only
        ("example.test", ["*.example.test"], False),
        ("mx.test", ["*.test"], False),  # never a wildcard over a whole TLD
        ("127.0.0.1", ["127.0.0.1"], True),
        ("127.0.0.1", ["127.0.0.2", "localhost"], False),
        ("::1", ["0:0:0:0:0:0:0:1"], True),
        ("localhost", ["127.0.0.1"], False),
    ],
)
def test_matches(name: str, patterns: list[str], expected: bool) -> None:
    assert matches(name, patterns) is expected


@given(st.from_regex(r"[a-z][a-z0-9]{0,9}(\.[a-z][a-z0-9]{0,9}){1,3}", fullmatch=True))
def test_a_name_matches_itself_and_its_wildcard(name: str) -> None:
    assert matches(name, [name.upper()])
    rest = name.split(".", 1)[1]
    assert matches(name, [f"*.{rest}"]) == ("." in rest)

"""DANE: which TLSA records are usable, leaf matching with real certificates, requirements."""

from __future__ import annotations

import datetime
import hashlib

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from sendgate.delivery.dane import leaf_matches, requirement, usable
from sendgate.delivery.dns import TlsaRecord


def _trustme_leaf(ca: trustme.CA, name: str = "mx.example.test") -> x509.Certificate:
    pem = ca.issue_cert(name).cert_chain_pems[0].bytes()
    return x509.load_pem_x509_certificate(pem)


def _ed25519_self_signed() -> x509.Certificate:
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mx.example.test")])
    # Expired on purpose: DANE-EE ignores validity dates (RFC 7672 section 3.1.1).
    start = datetime.datetime(2001, 1, 1, tzinfo=datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=1))
        .sign(key, None)
    )


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def leaf(ca: trustme.CA) -> x509.Certificate:
    return _trustme_leaf(ca)


def _selected(cert: x509.Certificate, selector: int) -> bytes:
    if selector == 0:
        return cert.public_bytes(Encoding.DER)
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _association(cert: x509.Certificate, selector: int, mtype: int) -> bytes:
    data = _selected(cert, selector)
    if mtype == 1:
        return hashlib.sha256(data).digest()
    if mtype == 2:
        return hashlib.sha512(data).digest()
    return data


def _record(cert: x509.Certificate, usage: int, selector: int, mtype: int) -> TlsaRecord:
    return TlsaRecord(usage, selector, mtype, _association(cert, selector, mtype))


# -- usable ------------------------------------------------------------------------------------


def test_usable_keeps_dane_records_with_known_parameters() -> None:
    good = [
        TlsaRecord(3, 1, 1, b"a" * 32),
        TlsaRecord(3, 0, 2, b"b" * 64),
        TlsaRecord(2, 0, 0, b"full certificate"),
        TlsaRecord(2, 1, 1, b"c" * 32),
    ]
    bad = [
        TlsaRecord(0, 0, 1, b"a" * 32),  # PKIX-TA
        TlsaRecord(1, 1, 1, b"a" * 32),  # PKIX-EE
        TlsaRecord(4, 1, 1, b"a" * 32),  # unknown usage
        TlsaRecord(3, 2, 1, b"a" * 32),  # unknown selector
        TlsaRecord(3, 1, 3, b"a" * 32),  # unknown matching type
        TlsaRecord(3, 1, 1, b"a" * 31),  # sha256 of the wrong length
        TlsaRecord(3, 1, 1, b"a" * 64),
        TlsaRecord(3, 1, 2, b"a" * 32),  # sha512 of the wrong length
        TlsaRecord(3, 0, 0, b""),  # empty full value
    ]
    assert usable(bad + good + bad) == tuple(good)


@given(
    st.lists(
        st.builds(
            TlsaRecord,
            st.integers(0, 255),
            st.integers(0, 255),
            st.integers(0, 255),
            st.binary(max_size=70),
        ),
        max_size=6,
    )
)
def test_usable_is_a_subset_of_valid_records(records: list[TlsaRecord]) -> None:
    kept = usable(records)
    assert all(record in records for record in kept)
    for record in kept:
        assert record.usage in (2, 3)
        assert record.selector in (0, 1)
        assert {0: len(record.data) > 0, 1: len(record.data) == 32, 2: len(record.data) == 64}[
            record.mtype
        ]


# -- leaf_matches ------------------------------------------------------------------------------


@pytest.mark.parametrize("selector", [0, 1])
@pytest.mark.parametrize("mtype", [0, 1, 2])
def test_dane_ee_matches_the_leaf(leaf: x509.Certificate, selector: int, mtype: int) -> None:
    record = _record(leaf, 3, selector, mtype)
    assert leaf_matches([record], leaf.public_bytes(Encoding.DER))


@pytest.mark.parametrize("selector", [0, 1])
@pytest.mark.parametrize("mtype", [0, 1, 2])
def test_dane_ee_for_another_certificate_does_not_match(
    ca: trustme.CA, leaf: x509.Certificate, selector: int, mtype: int
) -> None:
    other = _trustme_leaf(ca, "mx.example.test")  # same name, new key
    record = _record(other, 3, selector, mtype)
    assert not leaf_matches([record], leaf.public_bytes(Encoding.DER))


def test_spki_record_survives_reissue_with_the_same_key(leaf: x509.Certificate) -> None:
    # Another issuer certifies the same public key: the SPKI matches, the full cert does not.
    issuer_key = ec.generate_private_key(ec.SECP256R1())
    reissued = (
        x509.CertificateBuilder()
        .subject_name(leaf.subject)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Other CA")]))
        .public_key(leaf.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(leaf.not_valid_before_utc)
        .not_valid_after(leaf.not_valid_after_utc)
        .sign(issuer_key, hashes.SHA256())
    )
    reissued_der = reissued.public_bytes(Encoding.DER)
    assert leaf_matches([_record(leaf, 3, 1, 1)], reissued_der)
    assert not leaf_matches([_record(leaf, 3, 0, 1)], reissued_der)


def test_ed25519_leaf_matches_by_spki_and_ignores_expiry() -> None:
    cert = _ed25519_self_signed()
    der = cert.public_bytes(Encoding.DER)
    assert leaf_matches([_record(cert, 3, 1, 1)], der)
    assert leaf_matches([_record(cert, 3, 0, 2)], der)


def test_any_matching_record_is_enough(leaf: x509.Certificate) -> None:
    stale = TlsaRecord(3, 1, 1, b"\x00" * 32)
    assert leaf_matches([stale, _record(leaf, 3, 1, 2)], leaf.public_bytes(Encoding.DER))


@pytest.mark.parametrize("usage", [0, 1, 2])
def test_only_dane_ee_records_are_matched_against_the_leaf(
    leaf: x509.Certificate, usage: int
) -> None:
    assert not leaf_matches([_record(leaf, usage, 1, 1)], leaf.public_bytes(Encoding.DER))


def test_unusable_digest_lengths_never_match(leaf: x509.Certificate) -> None:
    digest = _association(leaf, 1, 1)
    truncated = TlsaRecord(3, 1, 1, digest[:16])
    mislabelled = TlsaRecord(3, 1, 2, digest)  # a sha256 digest labelled sha512
    assert not leaf_matches([truncated, mislabelled], leaf.public_bytes(Encoding.DER))


def test_garbage_certificate_never_matches(leaf: x509.Certificate) -> None:
    record = TlsaRecord(3, 0, 0, b"not a certificate")
    assert not leaf_matches([record], b"not a certificate")
    assert not leaf_matches([_record(leaf, 3, 1, 1)], b"\x30\x03\x02\x01\x00")


def test_no_records_never_match(leaf: x509.Certificate) -> None:
    assert not leaf_matches([], leaf.public_bytes(Encoding.DER))


# -- requirement -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        ([], "none"),
        ([TlsaRecord(3, 1, 1, b"a" * 32)], "dane"),
        ([TlsaRecord(3, 1, 1, b"a" * 32), TlsaRecord(2, 0, 1, b"b" * 32)], "dane"),
        ([TlsaRecord(2, 0, 1, b"b" * 32)], "defer"),  # DANE-TA only: cannot be checked here
        ([TlsaRecord(2, 0, 1, b"b" * 32), TlsaRecord(1, 1, 1, b"c" * 32)], "defer"),
        ([TlsaRecord(1, 1, 1, b"c" * 32)], "encrypt"),  # RFC 7672 2.2: TLS, unauthenticated
        ([TlsaRecord(0, 0, 1, b"c" * 32), TlsaRecord(3, 1, 1, b"short")], "encrypt"),
    ],
)
def test_requirement(records: list[TlsaRecord], expected: str) -> None:
    assert requirement(records) == expected

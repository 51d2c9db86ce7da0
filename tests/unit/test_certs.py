"""Tests for sendgate.certs: self-signed generation, pair checks and one-line descriptions."""

import datetime
import os
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sendgate.certs import check_pair, describe_certificate, generate_self_signed
from sendgate.errors import TlsConfigError


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    generate_self_signed("mail.example.com", cert, key)
    return cert, key


@pytest.fixture
def open_umask() -> Iterator[None]:
    """Run with umask 0, so any mode a file gets must have been set on purpose."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, hostname: str) -> None:
    """A complete TLS handshake in memory, without sockets or threads."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_side = server.wrap_bio(to_server, to_client, server_side=True)
    client_side = client.wrap_bio(to_client, to_server, server_hostname=hostname)
    pending = {server_side, client_side}
    for _ in range(10):
        for side in list(pending):
            try:
                side.do_handshake()
                pending.discard(side)
            except ssl.SSLWantReadError:
                pass
        if not pending:
            return
    raise AssertionError("handshake did not finish")


def test_generated_pair_serves_tls_that_verifies_the_host_name(pair: tuple[Path, Path]) -> None:
    cert, key = pair
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))

    _handshake(server, client, "mail.example.com")


def test_generated_certificate_fails_verification_for_another_name(
    pair: tuple[Path, Path],
) -> None:
    cert, key = pair
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))

    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        _handshake(server, client, "localhost")


def test_generated_key_is_pkcs8_ecdsa_p256(pair: tuple[Path, Path]) -> None:
    data = pair[1].read_bytes()

    key = serialization.load_pem_private_key(data, password=None)

    assert data.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"


def test_generated_certificate_has_the_agreed_fields(pair: tuple[Path, Path]) -> None:
    cert = x509.load_pem_x509_certificate(pair[0].read_bytes())
    now = datetime.datetime.now(datetime.UTC)

    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "mail.example.com"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mail.example.com"]
    assert list(san) == [x509.DNSName("mail.example.com")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical
    assert basic.value.ca is False
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    lifetime = cert.not_valid_after_utc - now
    assert datetime.timedelta(days=824) < lifetime <= datetime.timedelta(days=825)
    assert cert.not_valid_before_utc <= now


def test_days_sets_the_validity(tmp_path: Path) -> None:
    generate_self_signed("mail.example.com", tmp_path / "c.pem", tmp_path / "k.pem", days=30)
    cert = x509.load_pem_x509_certificate((tmp_path / "c.pem").read_bytes())

    lifetime = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)

    assert datetime.timedelta(days=29) < lifetime <= datetime.timedelta(days=30)


def test_days_below_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^days must be at least 1, got 0$"):
        generate_self_signed("mail.example.com", tmp_path / "c.pem", tmp_path / "k.pem", days=0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.usefixtures("open_umask")
def test_modes_are_exact_whatever_the_umask(tmp_path: Path) -> None:
    generate_self_signed("mail.example.com", tmp_path / "cert.pem", tmp_path / "key.pem")

    assert (tmp_path / "key.pem").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "cert.pem").stat().st_mode & 0o777 == 0o644
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cert.pem", "key.pem"]


def test_generating_again_replaces_both_files(pair: tuple[Path, Path]) -> None:
    cert, key = pair
    os.chmod(key, 0o644)
    old_key = key.read_bytes()

    generate_self_signed("mail.example.com", cert, key)

    assert key.read_bytes() != old_key
    assert key.stat().st_mode & 0o777 == 0o600
    assert check_pair(cert, key) == "ECDSA"


def test_long_host_name_goes_in_the_san_only(tmp_path: Path) -> None:
    name = "a" * 60 + ".example.com"
    generate_self_signed(name, tmp_path / "c.pem", tmp_path / "k.pem")

    cert = x509.load_pem_x509_certificate((tmp_path / "c.pem").read_bytes())

    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME) == []
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [name]


def test_writing_into_a_missing_directory_names_the_file(tmp_path: Path) -> None:
    key = tmp_path / "absent" / "key.pem"

    with pytest.raises(TlsConfigError) as caught:
        generate_self_signed("mail.example.com", tmp_path / "cert.pem", key)

    assert str(caught.value) == f"{key}: cannot write: No such file or directory"


def test_describe_certificate_is_one_line(pair: tuple[Path, Path]) -> None:
    cert = x509.load_pem_x509_certificate(pair[0].read_bytes())
    not_after = cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")

    assert describe_certificate(pair[0]) == (
        f"CN=mail.example.com; SAN=DNS:mail.example.com; key=ECDSA P-256; not after {not_after}"
    )


def test_describe_rsa_certificate_with_ip_san(tmp_path: Path) -> None:
    ca = trustme.CA(key_type=trustme.KeyType.RSA)
    leaf = ca.issue_cert("mail.example.com", "127.0.0.1", key_type=trustme.KeyType.RSA)
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "c.pem"))

    description = describe_certificate(tmp_path / "c.pem")

    assert "; SAN=DNS:mail.example.com, IP:127.0.0.1; key=RSA 2048 bits; not after " in description


def test_describe_escapes_control_characters_from_the_certificate(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "evil\nINFO forged=1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    description = describe_certificate(tmp_path / "c.pem")

    assert "\n" not in description
    assert description.startswith("CN=evil\\nINFO forged=1; SAN=(none); key=ECDSA P-256; ")


def test_describe_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(TlsConfigError) as caught:
        describe_certificate(tmp_path / "none.pem")

    assert str(caught.value) == f"{tmp_path}/none.pem: cannot read: No such file or directory"


def test_describe_non_certificate_names_it(pair: tuple[Path, Path]) -> None:
    with pytest.raises(TlsConfigError) as caught:
        describe_certificate(pair[1])

    assert str(caught.value) == f"{pair[1]}: no valid PEM certificate found"


def test_check_pair_returns_the_key_type(pair: tuple[Path, Path], tmp_path: Path) -> None:
    leaf = trustme.CA().issue_cert("mail.example.com", key_type=trustme.KeyType.RSA)
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "rsa.pem"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "rsa-key.pem"))

    assert check_pair(*pair) == "ECDSA"
    assert check_pair(tmp_path / "rsa.pem", tmp_path / "rsa-key.pem") == "RSA"


def test_check_pair_accepts_a_full_chain_file(tmp_path: Path) -> None:
    leaf = trustme.CA().issue_cert("mail.example.com")
    chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
    (tmp_path / "fullchain.pem").write_bytes(chain + trustme.CA().cert_pem.bytes())
    leaf.private_key_pem.write_to_path(str(tmp_path / "key.pem"))

    assert check_pair(tmp_path / "fullchain.pem", tmp_path / "key.pem") == "ECDSA"


def test_check_pair_refuses_a_key_of_another_certificate(
    pair: tuple[Path, Path], tmp_path: Path
) -> None:
    other_key = tmp_path / "other-key.pem"
    generate_self_signed("mail.example.com", tmp_path / "other.pem", other_key)

    with pytest.raises(TlsConfigError) as caught:
        check_pair(pair[0], other_key)

    assert str(caught.value) == (f"{other_key}: private key does not match certificate {pair[0]}")


def test_check_pair_refuses_an_encrypted_key(pair: tuple[Path, Path], tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(pair[1].read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )

    with pytest.raises(TlsConfigError) as caught:
        check_pair(pair[0], encrypted)

    assert str(caught.value) == (
        f"{encrypted}: private key is encrypted; sendgate needs it unencrypted"
    )


def test_check_pair_refuses_a_garbage_key(pair: tuple[Path, Path], tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")

    with pytest.raises(TlsConfigError) as caught:
        check_pair(pair[0], garbage)

    assert str(caught.value) == f"{garbage}: no valid PEM private key found"

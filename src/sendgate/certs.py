"""Certificates for the TLS listeners: make a self-signed pair, check a pair, describe one.

Security: the certificate and key files named by the operator are parsed by `cryptography` only,
and text taken from them (subject, names, paths) is escaped before it goes into a message, so a
crafted certificate cannot inject lines into a log. Keys are written atomically
(fsutil.atomic_replace) with mode 0600 from the start, so no reader ever sees a half-written key
or one briefly open to others.
"""

import datetime
from pathlib import Path
from types import MappingProxyType

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
    PublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sendgate.errors import TlsConfigError
from sendgate.fsutil import atomic_replace
from sendgate.text import iso_utc, printable

# X.520 caps a commonName at 64 characters; longer host names go in the SAN only.
_MAX_COMMON_NAME = 64

_CURVE_NAMES = MappingProxyType({"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"})


def generate_self_signed(
    hostname: str, cert_path: Path, key_path: Path, *, days: int = 825
) -> None:
    """Write a new ECDSA P-256 key (mode 0600) and a self-signed server certificate (mode 0644).

    The certificate names `hostname` in its subject CN and as its only SAN; the caller validates
    the name. 825 days is the longest validity that Apple platforms still accept.
    """
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, hostname)]
        if len(hostname) <= _MAX_COMMON_NAME
        else []
    )
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # Backdated a little so a client whose clock runs slow still accepts it.
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_atomic(key_path, key_pem, 0o600)
    _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def check_pair(cert_path: Path, key_path: Path) -> str:
    """Check that the key belongs to the (first) certificate; return the key type, e.g. "ECDSA".

    Raises TlsConfigError naming the file that is unreadable, malformed or mismatched.
    """
    cert = _load_certificate(cert_path)
    key = _load_private_key(key_path)
    if _public_der(cert.public_key()) != _public_der(key.public_key()):
        raise TlsConfigError(
            f"{printable(str(key_path), keep_tabs=False)}: private key does not match "
            f"certificate {printable(str(cert_path), keep_tabs=False)}"
        )
    return _key_type(key.public_key())[0]


def describe_certificate(cert_path: Path) -> str:
    """One line about the (first) certificate in a PEM file: subject CN, SANs, key, not-after."""
    cert = _load_certificate(cert_path)
    common_names = [
        str(attribute.value)
        for attribute in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [f"DNS:{name}" for name in san.get_values_for_type(x509.DNSName)]
        names += [f"IP:{address}" for address in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = []
    key = " ".join(part for part in _key_type(cert.public_key()) if part)
    not_after = iso_utc(cert.not_valid_after_utc.timestamp())
    return (
        f"CN={printable(', '.join(common_names), keep_tabs=False) or '(none)'}; "
        f"SAN={printable(', '.join(names), keep_tabs=False) or '(none)'}; "
        f"key={key}; not after {not_after}"
    )


def _load_certificate(path: Path) -> x509.Certificate:
    # A full-chain file is fine: the server's own certificate comes first.
    try:
        return x509.load_pem_x509_certificates(_read(path))[0]
    except ValueError:
        raise TlsConfigError(
            f"{printable(str(path), keep_tabs=False)}: no valid PEM certificate found"
        ) from None


def _load_private_key(path: Path) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(_read(path), password=None)
    except TypeError:
        # cryptography signals "encrypted but no password" with TypeError.
        raise TlsConfigError(
            f"{printable(str(path), keep_tabs=False)}: private key is encrypted; "
            "sendgate needs it unencrypted"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise TlsConfigError(
            f"{printable(str(path), keep_tabs=False)}: no valid PEM private key found"
        ) from None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise TlsConfigError(
            f"{printable(str(path), keep_tabs=False)}: cannot read: {error.strerror or error}"
        ) from None


def _public_der(key: PublicKeyTypes | CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _key_type(key: PublicKeyTypes | CertificatePublicKeyTypes) -> tuple[str, str]:
    """(type, detail): the type is what TLS picks a certificate by; the detail is for people."""
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA", f"{key.key_size} bits"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "ECDSA", _CURVE_NAMES.get(key.curve.name, key.curve.name)
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519", ""
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448", ""
    if isinstance(key, dsa.DSAPublicKey):
        return "DSA", f"{key.key_size} bits"
    return type(key).__name__, ""


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    try:
        atomic_replace(path, data, tmp_dir=path.parent, mode=mode)
    except OSError as error:
        raise TlsConfigError(
            f"{printable(str(path), keep_tabs=False)}: cannot write: {error.strerror or error}"
        ) from None

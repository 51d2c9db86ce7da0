"""Certificate checks beyond OpenSSL's (RFC 6125 names, the DANE leaf), and TLS failure reasons.

OpenSSL checks the chain and `Target.host`; a route may accept other names (MTA-STS "mx"
patterns, a smarthost's names), and DANE replaces both checks with the plan's leaf check.

Security: the certificate comes from the network; it is parsed by cryptography, only its DNS
subjectAltNames count (no Common Name fallback), and an unparsable one never matches.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Sequence

from cryptography import x509

from sendgate.delivery.target import Target, TlsRequirement


def dns_name_matches(pattern: str, name: str) -> bool:
    """Whether a certificate's DNS name `pattern` covers host `name` (RFC 6125 6.4.3, strict).

    Case-insensitive, A-labels only. A wildcard counts only as the whole left-most label of a
    pattern with at least three labels, and stands for exactly one label of `name`.
    """
    pattern = pattern.lower().removesuffix(".")
    name = name.lower().removesuffix(".")
    if not (pattern.isascii() and name.isascii()) or not name or "*" in name:
        return False
    if not pattern.startswith("*."):
        return "*" not in pattern and pattern == name
    suffix = pattern[1:]
    if "*" in suffix or suffix.count(".") < 2:
        return False
    first, dot, rest = name.partition(".")
    return bool(first) and bool(dot) and "." + rest == suffix


def certificate_matches(der: bytes, names: Iterable[str]) -> bool:
    """Whether the DER certificate's DNS subjectAltNames cover one of `names`.

    Only the SAN extension counts (no Common Name fallback); unparsable certificates never match.
    """
    try:
        certificate = x509.load_der_x509_certificate(der)
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        patterns = san.get_values_for_type(x509.DNSName)
    except (ValueError, x509.ExtensionNotFound, x509.DuplicateExtension):
        return False
    wanted = tuple(names)
    return any(dns_name_matches(pattern, name) for pattern in patterns for name in wanted)


def certificate_problem(target: Target, leaf: bytes | None) -> str | None:
    """What is wrong with the peer's certificate (DER `leaf`) beyond OpenSSL's checks, or None.

    verify "dane": the requirement's `leaf_check` must accept it. verify "pkix": OpenSSL
    matched it to `target.host`; that host must be an acceptable name, or the certificate
    must cover one of the names too. verify "none": nothing to check.
    """
    tls = target.tls
    if tls.verify == "dane":
        if leaf is None or tls.leaf_check is None or not tls.leaf_check(leaf):
            return "certificate does not match TLSA"
    elif tls.verify == "pkix" and not _names_covered(target.host, tls.names, leaf):
        return f"certificate is not valid for {', '.join(tls.names)}"
    return None


def _names_covered(host: str, names: Sequence[str], leaf: bytes | None) -> bool:
    if any(dns_name_matches(name, host) for name in names):
        return True
    return leaf is not None and certificate_matches(leaf, names)


def tls_failure(tls: TlsRequirement, exc: BaseException) -> str:
    """Why a TLS handshake under `tls` ended with `exc`, for the log and the delivery state."""
    policy = f"TLS policy ({tls.reason}): " if tls.mode == "required" else ""
    error = ssl_error(exc)
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"{policy}certificate not accepted: {error.verify_message}"
    if error is not None:
        return f"{policy}TLS handshake failed: {error.reason or error}"
    return f"{policy}TLS handshake failed: connection lost"


def ssl_error(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind `exc` (aiosmtplib wraps handshake errors of implicit TLS)."""
    for candidate in (exc, exc.__cause__):
        if isinstance(candidate, ssl.SSLError):
            return candidate
    return None

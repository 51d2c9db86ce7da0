"""What a server certificate says about itself: its names and its dates (the chain is `dialog`'s).

`cert_findings` is shared with the audit, which reads the certificate file instead of the wire.

Security: the certificate is untrusted input, parsed by `cryptography`; only its names and
dates are read.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.x509.oid import NameOID

from sendgate.findings import Finding, Severity

EXPIRY_WARNING = timedelta(days=21)


def cert_findings(cert: x509.Certificate, name: str, now: datetime, prefix: str) -> list[Finding]:
    """Findings about dates and `name` for a certificate; codes are `{prefix}.cert_...`."""
    findings = []
    names = cert_names(cert)
    shown = ", ".join(names) or "none"
    if not matches(name, names):
        findings.append(
            Finding(
                f"{prefix}.cert_name_mismatch",
                Severity.CRITICAL,
                f"the certificate is not valid for {name}",
                f"names in the certificate: {shown}",
                f"get a certificate that names {name} (or probe the name clients use)",
            )
        )
    after = cert.not_valid_after_utc
    before = cert.not_valid_before_utc
    dates = f"valid from {before:%Y-%m-%d %H:%M} to {after:%Y-%m-%d %H:%M} UTC"
    if after <= now:
        findings.append(
            Finding(
                f"{prefix}.cert_expired",
                Severity.CRITICAL,
                f"the certificate expired on {after:%Y-%m-%d}",
                dates,
                "renew the certificate; sendgate reloads it without a restart",
            )
        )
    elif before > now:
        findings.append(
            Finding(
                f"{prefix}.cert_not_yet_valid",
                Severity.CRITICAL,
                f"the certificate is valid only from {before:%Y-%m-%d %H:%M} UTC",
                dates,
                "check the clock of this machine and of the server; reissue if it is wrong",
            )
        )
    elif after - now <= EXPIRY_WARNING:
        days = (after - now).days
        findings.append(
            Finding(
                f"{prefix}.cert_expires_soon",
                Severity.WARNING,
                f"the certificate expires in {days} day{'s' if days != 1 else ''}",
                dates,
                "renew the certificate now (automatic renewal may have stopped)",
            )
        )
    return findings


def cert_names(cert: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses a certificate is for (the CN only without a SAN)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        common = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return [str(attr.value) for attr in common]
    dns = san.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return [*dns, *ips]


def matches(name: str, names: list[str]) -> bool:
    """RFC 6125: exact names case-insensitively, a `*.` wildcard for one leftmost label."""
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        address = None
    if address is not None:
        return any(_same_address(address, entry) for entry in names)
    wanted = name.lower().rstrip(".")
    for entry in names:
        pattern = entry.lower().rstrip(".")
        if pattern == wanted:
            return True
        if pattern.startswith("*.") and "." in wanted:
            label, rest = wanted.split(".", 1)
            if label and rest == pattern[2:] and "." in rest:
                return True
    return False


def _same_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address, entry: str) -> bool:
    try:
        return ipaddress.ip_address(entry) == address
    except ValueError:
        return False

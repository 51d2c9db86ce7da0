"""The audit of the TLS setup: the unsafe settings in force, and each certificate file.

Security: certificate and key files are read, never written; a file that cannot be read or
parsed is a finding, not an error, so the rest of the audit still runs.
"""

from __future__ import annotations

import ipaddress
import ssl
import warnings
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from sendgate.certs import check_pair
from sendgate.config.schema import Config
from sendgate.config.unsafe import unsafe_settings
from sendgate.errors import ConfigError, TlsConfigError
from sendgate.findings import Finding, Severity
from sendgate.probe.certificate import cert_findings, cert_names


def unsafe_findings(cfg: Config) -> list[Finding]:
    """Each unsafe setting: a warning when its override allows it, critical when not (serve
    refuses to start then)."""
    try:
        found = unsafe_settings(cfg)
    except ConfigError as exc:
        return [Finding("audit.unsafe_unknown", Severity.CRITICAL, str(exc), fix="fix the file")]
    findings = []
    for unsafe in found:
        allowed = unsafe.override in cfg.unsafe_overrides
        findings.append(
            Finding(
                "audit.unsafe_override" if allowed else "audit.unsafe_setting",
                Severity.WARNING if allowed else Severity.CRITICAL,
                unsafe.description
                + ("" if allowed else " (not in unsafe_overrides: serve refuses to start)"),
                f"{unsafe.key}; override {unsafe.override}",
                f"change {unsafe.key} back to its safe value, then remove "
                f"{unsafe.override} from unsafe_overrides",
            )
        )
    return findings


def certificate_findings(cfg: Config, now: datetime, roots: Path | None) -> list[Finding]:
    """Per certificate file: readable, its key's match, names, dates, and its chain."""
    findings: list[Finding] = []
    for pair in cfg.tls.certificates:
        try:
            chain = x509.load_pem_x509_certificates(pair.cert.read_bytes())
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "no PEM certificate"
            findings.append(
                Finding(
                    "audit.cert_unreadable",
                    Severity.CRITICAL,
                    f"{pair.cert}: cannot read the certificate: {reason}",
                    fix="restore the file or point tls.certificates at the right one",
                )
            )
            continue
        try:
            check_pair(pair.cert, pair.key)
        except TlsConfigError as exc:
            findings.append(
                Finding(
                    "audit.cert_key_mismatch",
                    Severity.CRITICAL,
                    str(exc),
                    f"certificate {pair.cert}, key {pair.key}",
                    "install the key that belongs to the certificate (or the matching pair)",
                )
            )
        leaf = chain[0]
        for finding in cert_findings(leaf, cfg.hostname, now, "audit"):
            findings.append(_about(pair.cert, finding))
        untrusted = _chain_problem(leaf, chain[1:], now, roots)
        if untrusted:
            findings.append(
                Finding(
                    "audit.cert_untrusted",
                    Severity.CRITICAL,
                    f"{pair.cert}: clients cannot verify the certificate: {untrusted}",
                    f"verified against {roots or 'the system CA store'}",
                    "use a certificate from a public CA (e.g. Let's Encrypt) and put the "
                    "intermediate certificates after it in the file",
                )
            )
    return findings


def _about(path: Path, finding: Finding) -> Finding:
    return Finding(
        finding.code, finding.severity, f"{path}: {finding.message}", finding.evidence, finding.fix
    )


def _chain_problem(
    leaf: x509.Certificate, intermediates: list[x509.Certificate], now: datetime, roots: Path | None
) -> str:
    """Why the chain does not verify ("" if it does). Names and dates are their own findings,
    so the chain is checked for a name it carries, at a time it is valid."""
    if leaf.issuer == leaf.subject and not intermediates:
        return "it is self-signed"
    try:
        with warnings.catch_warnings():
            # A system store may hold an old root with a serial RFC 5280 forbids; cryptography
            # warns on stderr (a stray line in the log), yet the root is the system's choice.
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            anchors = x509.load_pem_x509_certificates((roots or _system_roots()).read_bytes())
    except (OSError, ValueError):
        return ""  # no CA store to judge by: not this check's finding
    names = [name for name in cert_names(leaf) if not name.startswith("*.")]
    if not names:
        return ""  # no name to verify for; the name finding says so
    when = min(max(now, leaf.not_valid_before_utc), leaf.not_valid_after_utc - timedelta(seconds=1))
    # The leaf's extensions are not judged by the Web PKI's rules (private CAs break several,
    # harmlessly): the question here is only whether the chain leads to a trusted CA.
    leaf_policy = ExtensionPolicy.permit_all().require_present(
        x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
    )
    builder = (
        PolicyBuilder()
        .store(Store(anchors))
        .time(when)
        .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=leaf_policy)
    )
    try:
        builder.build_server_verifier(_subject(names[0])).verify(leaf, intermediates)
    except VerificationError:
        return "the chain does not lead to a trusted CA"
    return ""


def _subject(name: str) -> x509.verification.Subject:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _system_roots() -> Path:
    return Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt")

"""`probe`: findings about any submission server, seen from outside as a client sees it.

Harmless by default: without credentials it never sends a message, and with them it sends only
to the user's own address. Each check opens its own connections: five without a login for a
well-set server (more where a screening question must be broken down), under the rate at which
a defended server starts refusing an address; the login checks add seven that log in.
"""

from __future__ import annotations

from sendgate.findings import Finding, Severity
from sendgate.probe.dialog import session_findings
from sendgate.probe.injection import injection_findings
from sendgate.probe.protocols import protocol_findings
from sendgate.probe.smuggling import smuggling_findings
from sendgate.probe.target import SUBMISSION, SUBMISSIONS, Credentials, ProbeError, Target
from sendgate.probe.wire import CertificateVerifyError, HandshakeError

__all__ = ["SUBMISSION", "SUBMISSIONS", "Credentials", "ProbeError", "Target", "probe"]


def probe(
    target: Target, credentials: Credentials | None = None, address: str = ""
) -> list[Finding]:
    """Every check that applies to `target`; ProbeError if it cannot be reached or greets no one.

    `address` is where the messages of the login checks go (and come from); default: the user.
    """
    try:
        findings = session_findings(target)
    except HandshakeError as exc:
        if isinstance(exc, CertificateVerifyError) or not target.implicit_tls:
            raise
        return [
            Finding(
                "probe.implicit_tls_failed",
                Severity.CRITICAL,
                f"{target.shown} does not speak TLS from the first byte (RFC 8314)",
                str(exc),
                "serve implicit TLS on port 465, or probe this port without --implicit-tls",
            )
        ]
    if not any(f.code in _NO_TLS for f in findings):
        findings += protocol_findings(target)
        findings += injection_findings(target)
    if credentials is not None:
        findings += smuggling_findings(target, credentials, address or credentials.user)
    return findings


_NO_TLS = frozenset({"probe.starttls_missing", "probe.starttls_refused", "probe.starttls_failed"})

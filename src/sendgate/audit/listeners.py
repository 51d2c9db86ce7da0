"""The live part of the audit: `probe` run against this server's own listeners.

A wildcard address (0.0.0.0, ::) is probed on loopback. The probe's certificate findings are
dropped: the audit judges the certificate files themselves (`certificates`), and a second
finding about the same file would only repeat it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from sendgate.findings import Finding, Severity
from sendgate.probe import ProbeError, Target, probe


@dataclass(frozen=True, slots=True)
class Listener:
    host: str
    port: int
    implicit_tls: bool


def listener_findings(
    listeners: list[Listener], hostname: str, *, down: Severity, timeout: float = 10.0
) -> list[Finding]:
    """Findings of a probe of each listener; `down` is the severity of one that does not answer
    (a warning inside `serve`, information for a command run while the server is stopped)."""
    findings = []
    for listener in listeners:
        if listener.port == 0:
            continue  # a port the kernel picks at start: only `serve` knows it
        target = Target(
            _reachable(listener.host),
            listener.port,
            listener.implicit_tls,
            server_name=hostname,
            timeout=timeout,
        )
        try:
            found = probe(target)
        except ProbeError as exc:
            findings.append(
                Finding(
                    "audit.listener_down",
                    down,
                    f"{target.shown} did not answer the live probe",
                    str(exc),
                    "start sendgate (or check its log) to include the live probe",
                )
            )
            continue
        for finding in found:
            if finding.code.startswith("probe.cert_"):
                continue
            findings.append(
                Finding(
                    "audit.listener." + finding.code.removeprefix("probe."),
                    finding.severity,
                    f"{target.shown}: {finding.message}",
                    finding.evidence,
                    finding.fix,
                )
            )
    return findings


def _reachable(host: str) -> str:
    if not host:
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host  # a name: connect to what it resolves to
    if address.is_unspecified:
        return "::1" if address.version == 6 else "127.0.0.1"
    return str(address)

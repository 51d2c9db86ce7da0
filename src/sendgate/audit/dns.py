"""The DNS part of the audit: what each sending domain publishes, and the host's own names.

Per domain users send from: SPF, DKIM (our keys' records), DMARC, the MTA-STS TXT record and
its policy file (fetched over HTTPS, its MX patterns against the domain's MX hosts) and TLS-RPT,
judged as `sendgate dns --check` judges them. For the host: `hostname` resolves, and each of
its addresses has a PTR record naming it (receivers distrust mail from addresses whose reverse
and forward names disagree).

Security: answers and the policy file are untrusted; they are parsed by the same code delivery
uses and only shown, cut short, as evidence.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Sequence

import dns.exception
import dns.reversename

from sendgate.config.schema import Config
from sendgate.delivery.dns import DnsError
from sendgate.delivery.mtasts import fetch_policy
from sendgate.delivery.mtasts_policy import MtaStsError, parse_policy
from sendgate.dkim.keys import DkimKey
from sendgate.dnsrecords import Checked, Kind, Lookup, Verdict, check, records
from sendgate.findings import Finding, Severity

_CHECKED = (Kind.SPF, Kind.DKIM, Kind.DMARC, Kind.MTA_STS, Kind.TLS_RPT)
_SEVERITY = {
    (Kind.DKIM, Verdict.WRONG): Severity.CRITICAL,  # our signatures fail: DMARC rejects the mail
    (Kind.MTA_STS, Verdict.MISSING): Severity.INFO,  # protects mail *to* the domain: advice
    (Kind.TLS_RPT, Verdict.MISSING): Severity.INFO,
}
_FIXES = {
    Kind.SPF: "publish the SPF record `sendgate dns DOMAIN` prints (one record only)",
    Kind.DKIM: "publish the DKIM record `sendgate dns DOMAIN` prints for this key",
    Kind.DMARC: "publish a DMARC record with p=quarantine or p=reject",
    Kind.MTA_STS: "publish the MTA-STS TXT record and policy file `sendgate dns DOMAIN` prints",
    Kind.TLS_RPT: "publish the TLS-RPT record `sendgate dns DOMAIN` prints",
}


def dns_findings(
    cfg: Config,
    domains: Sequence[str],
    keys: Sequence[DkimKey],
    lookup: Lookup,
    trust: ssl.SSLContext,
    *,
    timeout: float = 10.0,
) -> list[Finding]:
    findings: list[Finding] = []
    unknown: list[str] = []
    for domain in domains:
        wanted = [r for r in records(cfg, domain, keys, mx=False) if r.kind in _CHECKED]
        for result in check(wanted, lookup, cfg.hostname):
            if result.verdict is Verdict.UNKNOWN:
                unknown.append(f"{result.record.name}: {result.detail}")
            elif result.verdict is not Verdict.OK:
                findings.append(_record_finding(domain, result))
            elif result.record.kind is Kind.MTA_STS:
                findings += _policy_findings(domain, lookup, trust, timeout)
    findings += _host_findings(cfg.hostname, lookup, unknown)
    if unknown:
        findings.append(
            Finding(
                "audit.dns_unanswered",
                Severity.WARNING,
                f"DNS did not answer {len(unknown)} lookup{'s' if len(unknown) > 1 else ''}: "
                "those records were not checked",
                "; ".join(unknown[:3]) + (" ..." if len(unknown) > 3 else ""),
                "check delivery.resolver (or the system's resolver) and the network",
            )
        )
    return findings


def _record_finding(domain: str, result: Checked) -> Finding:
    kind, verdict = result.record.kind, result.verdict
    severity = _SEVERITY.get((kind, verdict), Severity.WARNING)
    what = "is not published" if verdict is Verdict.MISSING else "is wrong"
    code = f"audit.dns_{kind.name.lower()}_{verdict.value}"
    return Finding(
        code,
        severity,
        f"{domain}: the {kind.value} record {what} ({result.record.name})",
        result.detail or f"no {kind.value} record at {result.record.name}",
        _FIXES[kind],
    )


def _policy_findings(
    domain: str, lookup: Lookup, trust: ssl.SSLContext, timeout: float
) -> list[Finding]:
    """The MTA-STS policy file: reachable over verified HTTPS, and covering the MX hosts."""
    host = f"mta-sts.{domain}"
    try:
        addresses = lookup(host, "AAAA") + lookup(host, "A")
    except DnsError:
        addresses = []
    try:
        body = asyncio.run(fetch_policy(domain, addresses, ssl_context=trust, timeout=timeout))
        policy = parse_policy(body, policy_id="", fetched_at=time.time())
    except MtaStsError as exc:
        return [
            Finding(
                "audit.mta_sts_policy_unreachable",
                Severity.WARNING,
                f"{domain}: the MTA-STS TXT record is published but its policy file cannot be "
                "fetched: senders may defer mail to the domain",
                str(exc),
                f"serve the policy at https://{host}/.well-known/mta-sts.txt with a valid "
                "certificate, or remove the TXT record",
            )
        ]
    findings = []
    try:
        mx_hosts = [text.split()[-1].rstrip(".").lower() for text in lookup(domain, "MX")]
    except DnsError:
        mx_hosts = []
    uncovered = [h for h in mx_hosts if h and not policy.allows(h)]
    if uncovered:
        findings.append(
            Finding(
                "audit.mta_sts_policy_mx",
                Severity.CRITICAL if policy.mode == "enforce" else Severity.WARNING,
                f"{domain}: the MTA-STS policy does not cover MX host(s) {', '.join(uncovered)}"
                ": senders that enforce it will not deliver there",
                f"policy mx: {', '.join(policy.mx)}; mode {policy.mode}",
                "list every MX host in the policy file, then change the id in the TXT record",
            )
        )
    if policy.mode != "enforce":
        findings.append(
            Finding(
                "audit.mta_sts_policy_not_enforced",
                Severity.INFO,
                f"{domain}: the MTA-STS policy is in {policy.mode} mode",
                f"mode: {policy.mode}",
                "switch to mode: enforce once TLS-RPT reports show no failures",
            )
        )
    return findings


def _host_findings(hostname: str, lookup: Lookup, unknown: list[str]) -> list[Finding]:
    """`hostname` resolves, and each address has a PTR naming it (forward-confirmed)."""
    try:
        addresses = lookup(hostname, "AAAA") + lookup(hostname, "A")
    except DnsError as exc:
        if not exc.permanent:
            unknown.append(str(exc))
            return []
        addresses = []
    if not addresses:
        return [
            Finding(
                "audit.hostname_unresolved",
                Severity.WARNING,
                f"{hostname} (hostname) has no address in DNS: clients cannot find the server "
                "and receivers distrust its HELO",
                f"no A or AAAA record for {hostname}",
                f"publish A/AAAA records for {hostname}, or set hostname to the server's name",
            )
        ]
    findings = []
    for address in addresses:
        try:
            pointer = dns.reversename.from_address(address).to_text(omit_final_dot=True)
        except (dns.exception.SyntaxError, ValueError):
            continue
        try:
            names = [name.rstrip(".").lower() for name in lookup(pointer, "PTR")]
        except DnsError as exc:
            if not exc.permanent:
                unknown.append(str(exc))
                continue
            names = []
        if hostname.lower() not in names:
            findings.append(
                Finding(
                    "audit.ptr_mismatch",
                    Severity.WARNING,
                    f"{address} (an address of {hostname}) has no PTR record naming {hostname}: "
                    "receivers score its mail as suspect",
                    f"PTR of {address}: {', '.join(names) or 'none'}",
                    f"ask the address's provider to set its reverse DNS to {hostname}",
                )
            )
    return findings

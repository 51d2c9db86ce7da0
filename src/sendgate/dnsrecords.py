"""The DNS records a domain publishes for mail sent through sendgate, and their check in DNS.

`records` makes the list from the configuration: SPF, DKIM for each key (a rotation's staged
key and the retired ones still to be kept too), DMARC, MTA-STS, TLS-RPT, the RFC 6186/8314 SRV
records for submission, the names mail clients fetch their settings from (Thunderbird's
autoconfig, Outlook's autodiscover), and MX when asked. `zone_text` prints them in zone-file
syntax; `check` asks DNS (the configured resolver) what is published today and judges each
record: present and right, missing, or wrong (with what DNS says).

Judging is by meaning, not by equal text: an admin's own SPF or DMARC record is right when it
does what ours would (one record, sendgate's host allowed, a DMARC policy that acts), a DKIM
record is right when it publishes our key, and the autoconfig name when it is an alias of the
host or has one of its addresses.

Security: DNS answers are untrusted text; they are only compared and shown (escaped by the
caller), and at most `MAX_SHOWN` characters of each.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sendgate.config.schema import Config
from sendgate.delivery.dns import DnsError, Resolver
from sendgate.dkim.keys import DkimKey
from sendgate.dkim.rotation import RetiredRecord
from sendgate.text import utc_minute

TTL = 3600
TXT_STRING_MAX = 255
MAX_SHOWN = 200
MTA_STS_MAX_AGE = 604800  # one week: RFC 8461 recommends weeks once a policy is stable


class Kind(enum.Enum):
    SPF = "SPF"
    DKIM = "DKIM"
    DMARC = "DMARC"
    MTA_STS = "MTA-STS"
    TLS_RPT = "TLS-RPT"
    SUBMISSION = "submission SRV"
    SUBMISSIONS = "submissions SRV"
    AUTOCONFIG = "autoconfig"
    AUTODISCOVER = "autodiscover SRV"
    MX = "MX"


@dataclass(frozen=True, slots=True)
class Record:
    """One resource record: owner name (absolute, no final dot), type, rdata text."""

    kind: Kind
    name: str
    rtype: str
    value: str  # TXT: the whole string, unquoted; others: the rdata in presentation format
    about: str  # one line for the comment above it

    def zone_line(self) -> str:
        if self.rtype == "TXT":
            return f"{self.name}. {TTL} IN TXT {txt_rdata(self.value)}"
        return f"{self.name}. {TTL} IN {self.rtype} {self.value}"


class Verdict(enum.Enum):
    OK = "ok"
    MISSING = "missing"
    WRONG = "wrong"
    UNKNOWN = "unknown"  # DNS did not answer


@dataclass(frozen=True, slots=True)
class Checked:
    record: Record
    verdict: Verdict
    detail: str  # what DNS said, when it is not OK


def txt_rdata(value: str) -> str:
    """A TXT value as quoted strings of at most 255 octets, escaped for zone files."""
    pieces = [value[i : i + TXT_STRING_MAX] for i in range(0, len(value), TXT_STRING_MAX)]
    quoted = ['"' + p.replace("\\", "\\\\").replace('"', '\\"') + '"' for p in pieces or [""]]
    return quoted[0] if len(quoted) == 1 else "( " + " ".join(quoted) + " )"


def records(
    cfg: Config,
    domain: str,
    keys: Sequence[DkimKey],
    *,
    mx: bool,
    staged: Sequence[DkimKey] = (),
    retired: Sequence[RetiredRecord] = (),
    now: float | None = None,
) -> list[Record]:
    """What `domain` should publish for mail sent through this server (`cfg.hostname`).

    Besides the signing `keys`: the `staged` keys (published before they sign) and the `retired`
    records whose time to stay published is not over.
    """
    host = cfg.hostname
    moment = now if now is not None else time.time()
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(moment))
    out = [
        Record(
            Kind.SPF,
            domain,
            "TXT",
            f"v=spf1 a:{host} -all",
            f"SPF: only {host} sends mail from {domain} (add your other senders)",
        )
    ]
    for key in keys:
        if key.domain == domain:
            about = f"the {key.algorithm} key sendgate signs with (selector {key.selector})"
            out.append(_dkim(key.selector, domain, key.public_record, about))
    for key in staged:
        if key.domain == domain:
            about = (
                f"the staged {key.algorithm} key (selector {key.selector}): publish it now; "
                f"`sendgate dkim switch {domain}` signs with it once DNS has it"
            )
            out.append(_dkim(key.selector, domain, key.public_record, about))
    for old in retired:
        if old.domain == domain and old.until > moment:
            until = utc_minute(old.until)
            about = (
                f"the retired {old.algorithm} key (selector {old.selector}): keep it until "
                f"{until}, mail signed with it is still verified"
            )
            out.append(_dkim(old.selector, domain, old.public_record, about))
    out += [
        Record(
            Kind.DMARC,
            f"_dmarc.{domain}",
            "TXT",
            f"v=DMARC1; p=quarantine; adkim=s; aspf=s; rua=mailto:postmaster@{domain}",
            "DMARC: mail failing SPF and DKIM alignment is quarantined; reports to postmaster",
        ),
        Record(
            Kind.MTA_STS,
            f"_mta-sts.{domain}",
            "TXT",
            f"v=STSv1; id={stamp}",
            f"MTA-STS: a policy at https://mta-sts.{domain}/.well-known/mta-sts.txt "
            "(change id when the policy changes)",
        ),
        Record(
            Kind.TLS_RPT,
            f"_smtp._tls.{domain}",
            "TXT",
            f"v=TLSRPTv1; rua=mailto:postmaster@{domain}",
            "TLS-RPT: where senders report TLS failures delivering to this domain",
        ),
    ]
    for kind, service, addresses in (
        (Kind.SUBMISSION, "_submission", cfg.listen.submission),
        (Kind.SUBMISSIONS, "_submissions", cfg.listen.submissions),
    ):
        port = next((a.port for a in addresses if a.port), 587 if service == "_submission" else 465)
        out.append(
            Record(
                kind,
                f"{service}._tcp.{domain}",
                "SRV",
                f"0 1 {port} {host}.",
                f"RFC 6186/8314: mail clients find the {service[1:]} port by themselves",
            )
        )
    out += [
        Record(
            Kind.AUTOCONFIG,
            f"autoconfig.{domain}",
            "CNAME",
            f"{host}.",
            f"autoconfig: Thunderbird fetches its settings from https://autoconfig.{domain}"
            f"/mail/config-v1.1.xml (a web server at {host}, with a certificate for that name)",
        ),
        Record(
            Kind.AUTODISCOVER,
            f"_autodiscover._tcp.{domain}",
            "SRV",
            f"0 1 443 {host}.",
            f"autodiscover: Outlook asks https://{host}/autodiscover/autodiscover.xml",
        ),
    ]
    if mx:
        out.append(Record(Kind.MX, domain, "MX", f"10 {host}.", f"MX: {host} receives mail"))
    return out


def _dkim(selector: str, domain: str, value: str, about: str) -> Record:
    return Record(Kind.DKIM, f"{selector}._domainkey.{domain}", "TXT", value, f"DKIM: {about}")


def mta_sts_policy(mx_hosts: Sequence[str]) -> str:
    """The policy file for https://mta-sts.DOMAIN/.well-known/mta-sts.txt (RFC 8461 3.2)."""
    lines = ["version: STSv1", "mode: enforce", *(f"mx: {h}" for h in mx_hosts)]
    return "\r\n".join([*lines, f"max_age: {MTA_STS_MAX_AGE}", ""])


def zone_text(domain: str, found: Sequence[Record], mx_hosts: Sequence[str]) -> str:
    lines = [f"; DNS records for {domain}: add them to its zone, then check with --check"]
    for record in found:
        lines += ["", f"; {record.about}", record.zone_line()]
    lines += [
        "",
        f"; the MTA-STS policy file, served at https://mta-sts.{domain}/.well-known/mta-sts.txt",
        "; (a web server with its own A/AAAA record and certificate):",
    ]
    policy = mta_sts_policy(mx_hosts or [f"<one line per MX host of {domain}>"])
    lines += [f";   {line}" for line in policy.split("\r\n") if line]
    return "\n".join(lines) + "\n"


Lookup = Callable[[str, str], list[str]]


def resolver_lookup(cfg: Config, timeout: float = 10.0) -> Lookup:
    """A blocking lookup through the configured resolver: TXT records joined, others as text."""
    nameservers = [(hp.host, hp.port) for hp in cfg.delivery.resolver] or None
    resolver = Resolver(nameservers, timeout=timeout)

    def lookup(name: str, rtype: str) -> list[str]:
        return asyncio.run(resolver.texts(name, rtype))

    return lookup


def check(found: Sequence[Record], lookup: Lookup, host: str) -> list[Checked]:
    """Each record judged against what DNS publishes now."""
    results = []
    for record in found:
        try:
            published = lookup(record.name, record.rtype)
        except DnsError as exc:
            if exc.permanent:  # NXDOMAIN: nothing at that name
                results.append(Checked(record, Verdict.MISSING, "no such name"))
            else:
                results.append(Checked(record, Verdict.UNKNOWN, str(exc)))
            continue
        judged = _judge(record, published, host)
        if record.rtype == "CNAME" and judged.verdict is not Verdict.OK:
            judged = _same_addresses(judged, lookup, host)
        results.append(judged)
    return results


def _same_addresses(judged: Checked, lookup: Lookup, host: str) -> Checked:
    """A name with address records of its own is as good as the CNAME when it shares one of
    `host`'s addresses (clients reach the same server)."""
    name = judged.record.name
    try:
        mine = {a for rtype in ("A", "AAAA") for a in lookup(name, rtype)}
        theirs = {a for rtype in ("A", "AAAA") for a in lookup(host, rtype)}
    except DnsError:
        return judged
    if mine & theirs:
        return Checked(judged.record, Verdict.OK, "")
    if mine:
        return Checked(
            judged.record, Verdict.WRONG, f"its addresses are not {host}'s: {_shown(sorted(mine))}"
        )
    return judged


_TAGS = {
    Kind.SPF: "v=spf1",
    Kind.DKIM: "v=dkim1",
    Kind.DMARC: "v=dmarc1",
    Kind.MTA_STS: "v=stsv1",
    Kind.TLS_RPT: "v=tlsrptv1",
}


def _judge(record: Record, published: list[str], host: str) -> Checked:
    if record.rtype != "TXT":
        wanted = record.value.lower().split()
        if any(p.lower().split() == wanted for p in published):
            return Checked(record, Verdict.OK, "")
        verdict = Verdict.WRONG if published else Verdict.MISSING
        return Checked(record, verdict, _shown(published))
    tag = _TAGS[record.kind]
    # DKIM records may leave out v= (RFC 6376 3.6.1); the others must start with it.
    mine = [
        p for p in published
        if p.lower().startswith(tag) or (record.kind is Kind.DKIM and "p=" in p)
    ]  # fmt: skip
    if not mine:
        return Checked(record, Verdict.MISSING, _shown(published) if published else "")
    if len(mine) > 1:
        return Checked(
            record, Verdict.WRONG, f"{len(mine)} records (receivers ignore all): {_shown(mine)}"
        )
    value = mine[0]
    problem = _problem(record, value, host)
    return Checked(record, Verdict.WRONG if problem else Verdict.OK, problem)


def _problem(record: Record, value: str, host: str) -> str:
    tags = _tags(value)
    if record.kind is Kind.DKIM:
        if tags.get("p", "") != _tags(record.value).get("p"):
            return f"another key is published: {_shown([value])}"
    elif record.kind is Kind.SPF:
        terms = value.lower().split()
        if f"a:{host.lower()}" not in terms and "a" not in terms and "mx" not in terms:
            return f"{host} is not named (a:{host}): {_shown([value])}"
        if terms[-1] in ("+all", "all"):
            return f"ends in {terms[-1]}: anyone may send as the domain"
    elif record.kind is Kind.DMARC:
        policy = tags.get("p", "")
        if policy not in ("quarantine", "reject"):
            return f"p={policy or '(none given)'}: receivers are asked to do nothing"
    elif record.kind is Kind.MTA_STS and not tags.get("id"):
        return "no id= (senders cannot tell a new policy)"
    elif record.kind is Kind.TLS_RPT and not tags.get("rua"):
        return "no rua= (reports go nowhere)"
    return ""


def _tags(value: str) -> dict[str, str]:
    """A tag=value list (DKIM, DMARC, MTA-STS, TLS-RPT), names lower-cased, spaces dropped."""
    tags = {}
    for part in value.split(";"):
        name, sep, tag_value = part.partition("=")
        if sep:
            tags[name.strip().lower()] = "".join(tag_value.split())
    return tags


def _shown(values: Sequence[str]) -> str:
    text = " | ".join(values)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "..."

"""The audit of DKIM signing: a key for every domain users send from, rotations left half-way."""

from __future__ import annotations

from sendgate.dkim.keys import DkimKey
from sendgate.dkim.rotation import RetiredRecord
from sendgate.findings import Finding, Severity
from sendgate.store.users import UserRecord
from sendgate.text import utc_minute


def sending_domains(users: list[UserRecord]) -> list[str]:
    """The domains of every address users may send as (`bob@d` and `@d` both give d)."""
    return sorted({address.rpartition("@")[2].lower() for u in users for address in u.addresses})


def dkim_findings(users: list[UserRecord], keys: tuple[DkimKey, ...]) -> list[Finding]:
    signed = {key.domain for key in keys}
    return [
        Finding(
            "audit.dkim_key_missing",
            Severity.WARNING,
            f"mail from {domain} goes out unsigned: no DKIM key for it",
            f"users send as {domain}; keys exist for: {', '.join(sorted(signed)) or 'none'}",
            f"sendgate --config FILE dkim keygen {domain}, then publish the record it prints",
        )
        for domain in sending_domains(users)
        if domain not in signed
    ]


def rotation_findings(
    staged: tuple[DkimKey, ...], retired: tuple[RetiredRecord, ...], now: float
) -> list[Finding]:
    """A staged key waiting for its switch; a retired record whose time to stay is over."""
    findings = [
        Finding(
            "audit.dkim_key_staged",
            Severity.INFO,
            f"a staged {key.algorithm} key for {key.domain} waits for its switch",
            f"selector {key.selector}: nothing signs with it yet",
            f"publish its record, check with `sendgate dns {key.domain} --check`, then "
            f"`sendgate dkim switch {key.domain}`",
        )
        for key in staged
    ]
    findings += (
        Finding(
            "audit.dkim_retired_record_over",
            Severity.INFO,
            f"the retired DKIM record {old.selector}._domainkey.{old.domain} may go",
            "it was to stay published until " + utc_minute(old.until),
            "remove it from DNS, then run `sendgate dkim prune`",
        )
        for old in retired
        if old.until <= now
    )
    return findings

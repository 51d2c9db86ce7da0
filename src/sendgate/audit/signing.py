"""The audit of DKIM signing: a key for every domain users send from, each loadable."""

from __future__ import annotations

from sendgate.dkim.keys import DkimKey
from sendgate.findings import Finding, Severity
from sendgate.store.users import UserRecord


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

"""`audit`: findings about this installation, from its files, its stores and its listeners.

`run_audit` is what `sendgate audit` prints and what `serve` logs on a schedule
(`audit.schedule`). Each part is a module of this package; none of them raises for what it
finds, so one broken file never hides the other findings.
"""

from __future__ import annotations

import ssl
from datetime import datetime
from pathlib import Path

from sendgate.audit.accounts import account_findings
from sendgate.audit.certificates import certificate_findings, unsafe_findings
from sendgate.audit.defences import defence_findings
from sendgate.audit.dns import dns_findings
from sendgate.audit.files import file_findings
from sendgate.audit.listeners import Listener, listener_findings
from sendgate.audit.signing import dkim_findings, rotation_findings, sending_domains
from sendgate.config.schema import Config
from sendgate.dkim.keys import DkimKey, load_keys
from sendgate.dkim.rotation import retired_records, staged_keys
from sendgate.dnsrecords import Lookup
from sendgate.errors import ConfigError
from sendgate.findings import Finding, Severity
from sendgate.store.users import UserRecord

__all__ = ["Listener", "configured_listeners", "run_audit"]


def configured_listeners(cfg: Config) -> list[Listener]:
    return [
        Listener(hostport.host, hostport.port, implicit)
        for implicit, addresses in ((False, cfg.listen.submission), (True, cfg.listen.submissions))
        for hostport in addresses
    ]


def run_audit(
    cfg: Config,
    config_path: Path,
    users: list[UserRecord],
    now: datetime,
    listeners: list[Listener],
    *,
    listener_down: Severity = Severity.INFO,
    roots: Path | None = None,
    lookup: Lookup | None = None,
    trust: ssl.SSLContext | None = None,
) -> list[Finding]:
    """Every finding, in a fixed order: settings, certificates, files, accounts, defences,
    DKIM keys, DNS (when given a `lookup` and the `trust` store for HTTPS), then the live probe
    of `listeners` ([] for none)."""
    findings = unsafe_findings(cfg)
    findings += certificate_findings(cfg, now, roots)
    findings += file_findings(cfg, config_path)
    findings += account_findings(users)
    findings += defence_findings(cfg)
    keys: tuple[DkimKey, ...] = ()
    try:
        keys = load_keys(cfg.dkim.key_dir)
        findings += dkim_findings(users, keys)
    except ConfigError as exc:
        findings.append(
            Finding(
                "audit.dkim_key_broken",
                Severity.CRITICAL,
                str(exc),
                fix="fix or remove the file: serve refuses to start with it",
            )
        )
    try:
        rotation = staged_keys(cfg.dkim.key_dir), retired_records(cfg.dkim.key_dir)
        findings += rotation_findings(*rotation, now.timestamp())
    except ConfigError as exc:
        findings.append(
            Finding(
                "audit.dkim_rotation_broken",
                Severity.WARNING,
                str(exc),
                fix="fix or remove the file: `sendgate dkim` and `sendgate dns` refuse it",
            )
        )
    if lookup is not None and trust is not None:
        findings += dns_findings(cfg, sending_domains(users), keys, lookup, trust)
    findings += listener_findings(listeners, cfg.hostname, down=listener_down)
    return findings

"""The scheduled audit: a child process of `serve` that audits at start and every interval.

It runs apart from the acceptors and the delivery runner, so an audit that is slow (a probe
waiting on a timeout) or broken (a bug) never delays mail: a failed audit is one error line,
and the next one runs on time. Findings never stop the server; each is one log line
(`event=audit_finding`) and every audit ends with `event=audit` and the counts.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from sendgate.audit import Listener, run_audit
from sendgate.config.schema import Config
from sendgate.delivery.runner import trust_store
from sendgate.dnsrecords import resolver_lookup
from sendgate.findings import Finding, Severity
from sendgate.log import EventLog
from sendgate.store.users import UserStore

DNS_TIMEOUT = 5.0
_LEVELS = {Severity.INFO: "info", Severity.WARNING: "warning", Severity.CRITICAL: "error"}


def log_findings(log: EventLog, findings: list[Finding]) -> None:
    for finding in findings:
        log.event(
            "audit_finding",
            _LEVELS[finding.severity],
            code=finding.code,
            severity=finding.severity.label,
            message=finding.message,
            evidence=finding.evidence,
        )
    counts = {level: sum(f.severity == level for f in findings) for level in Severity}
    log.event(
        "audit",
        "warning" if counts[Severity.CRITICAL] or counts[Severity.WARNING] else "info",
        critical=counts[Severity.CRITICAL],
        warning=counts[Severity.WARNING],
        info=counts[Severity.INFO],
    )


def run_auditor(
    cfg: Config,
    config_path: Path,
    log: EventLog,
    open_users: Callable[[], UserStore],
    listeners: list[Listener],
) -> int:
    """Audit until SIGTERM; the exit status for the supervisor (0)."""
    # SIGTERM stays pending during an audit and ends the wait that follows it at once.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    while True:
        try:
            users = open_users()
            try:
                listed = users.list_users()
            finally:
                users.close()
            findings = run_audit(
                cfg,
                config_path,
                listed,
                datetime.now(UTC),
                listeners,
                listener_down=Severity.WARNING,
                lookup=resolver_lookup(cfg, timeout=DNS_TIMEOUT),
                trust=trust_store(cfg),
            )
            log_findings(log, findings)
        except Exception as exc:  # a bug or a broken store: say so, audit again next time
            log.event("audit_failed", "error", error=f"{type(exc).__name__}: {exc}")
        if signal.sigtimedwait({signal.SIGTERM, signal.SIGINT}, cfg.audit.interval) is not None:
            return 0

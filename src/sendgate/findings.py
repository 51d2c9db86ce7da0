"""Findings: what `audit` and `probe` report, each with a stable code, a severity and a fix.

Both commands print the same shape (`{"findings": [...]}` with `--json`) and exit the same
way: 0 when nothing is a warning or worse, 1 otherwise, 2 when the check itself could not run
(that is an exception, not a finding).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass


class Severity(enum.IntEnum):
    """Ordered, so that the worst finding is `max(...)`."""

    INFO = 0
    WARNING = 1
    CRITICAL = 2

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Finding:
    """One observation. `code` never changes once published: scripts and alerts match it.

    `evidence` says what was sent and seen (or read) so that an admin can check the claim;
    `fix` is empty for findings that need none.
    """

    code: str
    severity: Severity
    message: str
    evidence: str = ""
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return {
            "code": self.code,
            "severity": self.severity.label,
            "message": self.message,
            "evidence": self.evidence,
            "fix": self.fix,
        }


def exit_status(findings: Iterable[Finding]) -> int:
    """0 when every finding is informational, 1 when any is a warning or critical."""
    return 1 if any(f.severity >= Severity.WARNING for f in findings) else 0


def as_document(findings: Iterable[Finding]) -> dict[str, list[dict[str, str]]]:
    """The `--json` document."""
    return {"findings": [finding.as_dict() for finding in findings]}


def sorted_by_severity(findings: Iterable[Finding]) -> list[Finding]:
    """Worst first; equal severities keep the order the checks ran in."""
    return sorted(findings, key=lambda finding: -finding.severity)

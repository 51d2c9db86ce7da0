"""How `audit` and `probe` print findings: worst first, a summary line, or one JSON document."""

from __future__ import annotations

from sendgate.cli.command import print_json
from sendgate.findings import Finding, Severity, as_document, exit_status, sorted_by_severity


def report(title: str, findings: list[Finding], as_json: bool) -> int:
    """Print the findings; the exit status (0, or 1 for a warning or worse)."""
    findings = sorted_by_severity(findings)
    if as_json:
        print_json(as_document(findings))
        return exit_status(findings)
    counts = {level: sum(f.severity == level for f in findings) for level in Severity}
    summary = ", ".join(f"{counts[level]} {level.label}" for level in reversed(Severity))
    lines = [f"{title}: {summary}"]
    for finding in findings:
        lines.append(f"{finding.severity.label.upper():8} {finding.code}: {finding.message}")
        if finding.evidence:
            lines.append(f"         seen: {finding.evidence}")
        if finding.fix:
            lines.append(f"         fix:  {finding.fix}")
    print("\n".join(lines))
    return exit_status(findings)

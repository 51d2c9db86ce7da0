"""How `audit` and `probe` print findings: worst first, a summary line, or one JSON document."""

from __future__ import annotations

from sendgate.cli.command import print_json
from sendgate.findings import Finding, Severity, as_document, exit_status, sorted_by_severity
from sendgate.text import printable


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
        # Messages and evidence quote what a server sent: shown, never acted on by the terminal.
        message, evidence, fix = (
            printable(text, keep_tabs=False)
            for text in (finding.message, finding.evidence, finding.fix)
        )
        lines.append(f"{finding.severity.label.upper():8} {finding.code}: {message}")
        if evidence:
            lines.append(f"         seen: {evidence}")
        if fix:
            lines.append(f"         fix:  {fix}")
    print("\n".join(lines))
    return exit_status(findings)

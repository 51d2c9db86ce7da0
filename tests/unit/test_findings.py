"""Findings: severity order, exit status and the `--json` document shared by audit and probe."""

from __future__ import annotations

from sendgate.findings import Finding, Severity, as_document, exit_status, sorted_by_severity

INFO = Finding("probe.tls", Severity.INFO, "TLS works")
WARN = Finding("probe.suite_cbc", Severity.WARNING, "CBC", "seen", "fix it")
CRIT = Finding("probe.suite_null", Severity.CRITICAL, "NULL")


def test_exit_status_is_1_from_a_warning_up() -> None:
    assert exit_status([]) == 0
    assert exit_status([INFO, INFO]) == 0
    assert exit_status([INFO, WARN]) == 1
    assert exit_status([CRIT]) == 1


def test_worst_first_and_stable() -> None:
    other = Finding("probe.greeting", Severity.INFO, "hello")
    assert sorted_by_severity([INFO, WARN, other, CRIT]) == [CRIT, WARN, INFO, other]


def test_the_json_document() -> None:
    assert as_document([WARN]) == {
        "findings": [
            {
                "code": "probe.suite_cbc",
                "severity": "warning",
                "message": "CBC",
                "evidence": "seen",
                "fix": "fix it",
            }
        ]
    }

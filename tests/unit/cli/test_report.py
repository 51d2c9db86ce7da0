"""How findings are printed: worst first, a summary, server text escaped for the terminal."""

from __future__ import annotations

import pytest

from sendgate.cli.report import report
from sendgate.findings import Finding, Severity


def test_text_from_a_server_cannot_drive_the_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    findings = [
        Finding("probe.greeting", Severity.INFO, "an SMTP server answers", "220 \x1b[2Jhi"),
        Finding("probe.suite_cbc", Severity.WARNING, "CBC", fix="offer AEAD"),
    ]
    assert report("probe of x:587", findings, as_json=False) == 1
    assert capsys.readouterr().out.splitlines() == [
        "probe of x:587: 0 critical, 1 warning, 1 info",
        "WARNING  probe.suite_cbc: CBC",
        "         fix:  offer AEAD",
        "INFO     probe.greeting: an SMTP server answers",
        "         seen: 220 \\x1b[2Jhi",
    ]

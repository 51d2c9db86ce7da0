"""docs/SECURITY.md names, for each attack, the tests that prove the defence: they must exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# `unit/x.py`, `e2e/x.py::test_name`, `dialogs/transcripts/smuggling_*.txt`, `fuzz/` ...
_REFERENCE = re.compile(
    r"`((?:unit|e2e|integration|dialogs|configs|property|fuzz)/[^`:]*)(?:::(\w+))?`"
)


def test_every_test_the_threat_model_cites_exists() -> None:
    text = (ROOT / "docs" / "SECURITY.md").read_text()
    cited = _REFERENCE.findall(text)
    assert len(cited) > 30
    missing = []
    for path, name in cited:
        found = sorted((ROOT / "tests").glob(path.rstrip("/") or "."))
        if not found or (name and not any(f"def {name}(" in f.read_text() for f in found)):
            missing.append(f"{path}::{name}" if name else path)
    assert missing == []

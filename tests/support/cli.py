"""Running `sendgate --config FILE ...` in process for CLI tests: exit status, stdout, stderr."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sendgate.cli import main


class Cli:
    """Runs `sendgate --config CONFIG ...` and returns (exit status, stdout, stderr)."""

    def __init__(self, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.config = config
        self._capsys = capsys

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        code = main(["--config", str(self.config), *argv])
        out, err = self._capsys.readouterr()
        return code, out, err

    def json(self, *argv: str) -> Any:
        """Run with --json; assert success and nothing on stderr; return the parsed document."""
        code, out, err = self(*argv, "--json")
        assert (code, err) == (0, "")
        return json.loads(out)


def one_line_error(result: tuple[int, str, str], message: str) -> None:
    """Assert that `result` is exit 1 with `message` as the one line on stderr."""
    assert result == (1, "", f"sendgate: {message}\n")

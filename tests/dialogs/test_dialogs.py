"""Every transcript in transcripts/ replayed against the in-memory Session and a live TLS server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

TRANSCRIPTS = sorted((Path(__file__).parent / "transcripts").glob("*.txt"))


def test_transcripts_exist() -> None:
    names = {path.stem for path in TRANSCRIPTS}
    required = {
        "smuggling_lf_dot_lf",
        "smuggling_lf_dot_crlf",
        "smuggling_crlf_dot_lf",
        "smuggling_cr_dot_crlf",
        "starttls_pipelined_same_chunk",
        "auth_before_tls",
        "sender_mismatch_envelope",
        "sender_mismatch_header",
        "line_too_long",
        "message_too_big_then_dot",
    }
    assert required <= names
    assert any(name.startswith("bdat_") for name in names)


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=lambda p: p.stem)
def test_in_memory(path: Path, players: Any) -> None:
    players.memory(path)


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=lambda p: p.stem)
def test_live_tls(path: Path, players: Any) -> None:
    players.live(path)


def test_live_log_names_each_refusal_and_never_the_password(players: Any) -> None:
    log = players.live(Path(__file__).parent / "transcripts" / "mail_before_auth.txt")
    # The Session's own refusal and the policy's, each with its code; the wrong password is
    # never written, nor the right one.
    assert "event=rejected" in log
    assert 'reason=protocol code="530 5.7.0"' in log
    assert "event=auth_fail" in log
    assert "event=auth_ok" in log
    assert "not-the-password-at-all" not in log
    assert "alice-dialog-password" not in log

"""Tests for the queue listings printed by `sendgate queue list|show`."""

import dataclasses
import json
import os
import re
import stat
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

import sendgate
from sendgate.cli import explain, format_queue_line, format_queue_show
from sendgate.store.delivery_state import FAILED, DeliveryState, RecipientState
from sendgate.store.envelope import Envelope
from sendgate.store.local.spool import Spool

MESSAGE = (
    b"From: Alice <alice@example.com>\r\n"
    b"Subject: caf\xc3\xa9\r\n"
    b"\r\n"
    b"8-bit body \xff\xfe\x00 bytes\r\n"
    b"..leading dot kept as stored\r\n"
    b"bare \n and \r inside stay as they are\r\n"
)
ID_PATTERN = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{17}")
DELETE = object()  # marks a field to drop in the malformed-envelope cases

# Runs one put that cannot fit (RLIMIT_FSIZE or a tiny file system), then one small put.
_CONSTRAINED_PUT = textwrap.dedent(
    """
    import json, resource, signal, sys
    from pathlib import Path
    from sendgate.errors import SpoolError
    from sendgate.store.envelope import Envelope
    from sendgate.store.local.spool import Spool

    root, size, fsize_limit = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    spool = Spool(root)
    if fsize_limit:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, resource.RLIM_INFINITY))

    def put(size):
        env = Envelope(spool.new_id(), "a@example.com", ("b@example.com",), "alice", 0.0, size)
        try:
            spool.put(env, b"x" * size)
        except SpoolError as exc:
            return [type(exc).__name__, str(exc)]
        return None

    failed = put(size)
    leftovers = sorted(p.name for d in ("tmp", "queue") for p in (root / d).iterdir())
    retried = put(1000)
    print(json.dumps({"failed": failed, "leftovers": leftovers, "retried": retried}))
    """
)


def make_envelope(queue_id: str, message: bytes = MESSAGE, **changes: Any) -> Envelope:
    envelope = Envelope(
        queue_id=queue_id,
        sender="alice@example.com",
        recipients=("bob@example.org", "carol@example.net"),
        user="alice",
        received_at=1_714_564_800.25,
        size=len(message),
    )
    return dataclasses.replace(envelope, **changes)


def file_mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def names(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def run_constrained_put(argv: list[str]) -> dict[str, Any]:
    src = str(Path(sendgate.__file__).parents[1])
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": src},
    )
    report: dict[str, Any] = json.loads(result.stdout)
    return report


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool")


def test_format_queue_line() -> None:
    envelope = make_envelope("01HX0000000000ABCD", received_at=86_399.9, size=1234)
    assert format_queue_line(envelope) == (
        "01HX0000000000ABCD 1970-01-01T23:59:59Z 1234 alice@example.com"
        " -> bob@example.org,carol@example.net"
    )


def test_format_queue_line_shows_the_null_sender_as_angle_brackets() -> None:
    envelope = make_envelope("01HX0000000000ABCD", sender="", recipients=("x@y.example",))
    assert format_queue_line(envelope) == (
        f"01HX0000000000ABCD 2024-05-01T12:00:00Z {len(MESSAGE)} <> -> x@y.example"
    )


def test_format_queue_line_escapes_what_a_terminal_would_act_on() -> None:
    envelope = make_envelope(
        "01HX0000000000ABCD",
        sender="evil\u202egro.elpmaxe@a",
        recipients=("用户@例子.广告", "b\u2028c@example.org"),
    )
    line = format_queue_line(envelope)
    assert line.endswith(" evil\\u202egro.elpmaxe@a -> 用户@例子.广告,b\\u2028c@example.org")
    assert line.isprintable()


def test_format_queue_show_prints_envelope_and_headers_only() -> None:
    message = (
        b"Subject: hello \x1b[31mred\r\n"
        b"X-Folded: one\r\n\ttwo\r\n"
        b"X-Bad-Utf8: \xff\r\n"
        b"X-Bidi: \xe2\x80\xae\r\n"
        b"\r\n"
        b"SECRET BODY\r\n"
    )
    envelope = make_envelope(
        "01HX0000000000ABCD",
        message,
        sender="",
        received_at=0.0,
        smtputf8=True,
        body="8BITMIME",
    )
    assert format_queue_show(envelope, message) == "\n".join(
        [
            "queue-id: 01HX0000000000ABCD",
            "received: 1970-01-01T00:00:00Z",
            f"size: {len(message)}",
            "user: alice",
            "sender: <>",
            "recipient: bob@example.org",
            "recipient: carol@example.net",
            "smtputf8: yes",
            "body: 8BITMIME",
            "",
            "Subject: hello \\x1b[31mred",
            "X-Folded: one",
            "\ttwo",
            "X-Bad-Utf8: \\xff",
            "X-Bidi: \\u202e",
        ]
    )


def test_format_queue_show_of_a_message_with_only_headers() -> None:
    message = b"Subject: only headers\r\n"
    text = format_queue_show(make_envelope("01HX0000000000ABCD", message), message)
    assert text.endswith("smtputf8: no\nbody: 7BIT\n\nSubject: only headers")


def test_format_queue_show_of_a_message_without_headers() -> None:
    message = b"\r\nSECRET BODY\r\n"
    text = format_queue_show(make_envelope("01HX0000000000ABCD", message), message)
    assert text.endswith(
        "sender: alice@example.com\nrecipient: bob@example.org\n"
        "recipient: carol@example.net\nsmtputf8: no\nbody: 7BIT\n"
    )
    assert "SECRET" not in text


BOB = "bob@example.org"
CAROL = "carol@example.org"
T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def _state() -> DeliveryState:
    return DeliveryState(
        (
            RecipientState(BOB, "delivered", 1, T0, "mx1.example.org", "250 2.0.0 OK", "2.0.0"),
            RecipientState(CAROL, "pending", 1, T0, "mx1.example.org", "451 4.3.0 later", "4.3.0"),
        ),
        next_attempt=T0 + 300,
        attempts=1,
    )


# --- explain ------------------------------------------------------------------------------------


def test_explain_before_any_attempt() -> None:
    text = explain("0123456789ABCDEFGH", "alice@sender.test", T0, None)
    assert text.splitlines() == [
        "queue-id: 0123456789ABCDEFGH",
        "sender: alice@sender.test",
        "received: 2027-01-15T08:00:00Z",
        "attempts: 0 (not tried yet; due now)",
    ]


def test_explain_after_attempts_lists_each_recipient_and_the_next_attempt() -> None:
    state = _state()
    text = explain("0123456789ABCDEFGH", "", T0 - 60, state)
    assert text.splitlines() == [
        "queue-id: 0123456789ABCDEFGH",
        "sender: <>",
        "received: 2027-01-15T07:59:00Z",
        "attempts: 1",
        f"recipient: {BOB}",
        "  status: delivered",
        "  attempts: 1",
        "  last-attempt: 2027-01-15T08:00:00Z",
        "  host: mx1.example.org",
        "  reply: 250 2.0.0 OK",
        f"recipient: {CAROL}",
        "  status: pending",
        "  attempts: 1",
        "  last-attempt: 2027-01-15T08:00:00Z",
        "  host: mx1.example.org",
        "  reply: 451 4.3.0 later",
        "next-attempt: 2027-01-15T08:05:00Z",
    ]


def test_explain_leaves_out_unknown_fields_and_the_next_attempt_when_finished() -> None:
    state = DeliveryState(
        (RecipientState(BOB, FAILED, attempts=2, reply="domain does not exist"),),
        next_attempt=T0,
        attempts=2,
    )
    lines = explain("0123456789ABCDEFGH", "alice@sender.test", T0, state).splitlines()
    assert lines[-4:] == [
        f"recipient: {BOB}",
        "  status: failed",
        "  attempts: 2",
        "  reply: domain does not exist",
    ]
    assert not any(line.startswith(("next-attempt", "  host", "  last-attempt")) for line in lines)


def test_explain_escapes_what_a_terminal_would_act_on() -> None:
    state = DeliveryState(
        (RecipientState("bob\x1b[2J@example.org", reply="451 \u202eevil", host="mx\x07"),),
    )
    text = explain("0123456789ABCDEFGH", "al\nice@sender.test", T0, state)
    assert "sender: al\\nice@sender.test" in text
    assert "recipient: bob\\x1b[2J@example.org" in text
    assert "  reply: 451 \\u202eevil" in text
    assert "  host: mx\\x07" in text
    assert all(line.isprintable() for line in text.splitlines())

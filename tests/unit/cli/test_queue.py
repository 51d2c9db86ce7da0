"""Tests for sendgate.cli.queue's texts: `queue list` lines, `queue show` and `queue explain`."""

from __future__ import annotations

from tests.support.mail import make_envelope

from sendgate.cli.queue import format_queue_explain, format_queue_line, format_queue_show
from sendgate.store.delivery_state import DELIVERED, FAILED, PENDING, DeliveryState, RecipientState

MESSAGE = b"From: Alice <alice@example.com>\r\nSubject: caf\xc3\xa9\r\n\r\nbody\r\n"
BOB = "bob@example.org"
CAROL = "carol@example.org"
T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


# --- queue list and queue show ----------------------------------------------------------------


def test_format_queue_line() -> None:
    envelope = make_envelope("01HX0000000000ABCD", received_at=86_399.9, size=1234)
    assert format_queue_line(envelope) == (
        "01HX0000000000ABCD 1970-01-01T23:59:59Z 1234 alice@example.com"
        " -> bob@example.org,carol@example.net"
    )


def test_format_queue_line_shows_the_null_sender_as_angle_brackets() -> None:
    envelope = make_envelope("01HX0000000000ABCD", MESSAGE, sender="", recipients=("x@y.example",))
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


# --- queue explain ----------------------------------------------------------------------------


def test_explain_before_any_attempt() -> None:
    text = format_queue_explain("0123456789ABCDEFGH", "alice@sender.test", T0, None)
    assert text.splitlines() == [
        "queue-id: 0123456789ABCDEFGH",
        "sender: alice@sender.test",
        "received: 2027-01-15T08:00:00Z",
        "attempts: 0 (not tried yet; due now)",
    ]


def test_explain_after_attempts_lists_each_recipient_and_the_next_attempt() -> None:
    state = DeliveryState(
        (
            RecipientState(BOB, DELIVERED, 1, T0, "mx1.example.org", "250 2.0.0 OK", "2.0.0"),
            RecipientState(CAROL, PENDING, 1, T0, "mx1.example.org", "451 4.3.0 later", "4.3.0"),
        ),
        next_attempt=T0 + 300,
        attempts=1,
    )
    text = format_queue_explain("0123456789ABCDEFGH", "", T0 - 60, state)
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
    lines = format_queue_explain("0123456789ABCDEFGH", "alice@sender.test", T0, state).splitlines()
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
    text = format_queue_explain("0123456789ABCDEFGH", "al\nice@sender.test", T0, state)
    assert "sender: al\\nice@sender.test" in text
    assert "recipient: bob\\x1b[2J@example.org" in text
    assert "  reply: 451 \\u202eevil" in text
    assert "  host: mx\\x07" in text
    assert all(line.isprintable() for line in text.splitlines())

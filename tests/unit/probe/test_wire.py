"""The probe's SMTP client: replies parsed strictly, however the server's bytes arrive."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sendgate.probe.wire import MAX_LINE, MAX_LINES, Reply, Wire, WireError, shown_bytes


@pytest.fixture
def pair() -> Iterator[tuple[Wire, socket.socket]]:
    ours, theirs = socket.socketpair()
    wire = Wire(ours, timeout=5)
    yield wire, theirs
    wire.close()
    theirs.close()


def replies_from(data: bytes, cuts: list[int]) -> list[Reply]:
    """Feed `data` in pieces cut at `cuts`, then close; every reply the wire reads."""
    ours, theirs = socket.socketpair()
    wire = Wire(ours, timeout=5)
    at = 0
    for cut in sorted(set(cuts)):
        theirs.sendall(data[at:cut])
        at = cut
    theirs.sendall(data[at:])
    theirs.close()
    got = []
    ended = ""
    try:
        while True:
            got.append(wire.reply())
    except WireError as exc:
        ended = str(exc)
    finally:
        wire.close()
    assert ended == "the server closed the connection"
    return got


EHLO = b"250-mx.example.test\r\n250-PIPELINING\r\n250-AUTH PLAIN LOGIN\r\n250 STARTTLS\r\n"


def test_a_multiline_reply_and_its_keywords() -> None:
    (reply,) = replies_from(EHLO, [])
    assert reply == Reply(250, ("mx.example.test", "PIPELINING", "AUTH PLAIN LOGIN", "STARTTLS"))
    assert reply.keywords == {"PIPELINING": "", "AUTH": "PLAIN LOGIN", "STARTTLS": ""}
    assert reply.shown() == (
        "250-mx.example.test | 250-PIPELINING | 250-AUTH PLAIN LOGIN | ... (1 more lines)"
    )
    assert Reply(354, ("go",)).shown() == "354 go"


@given(st.lists(st.integers(min_value=0, max_value=len(EHLO) + 20), max_size=8))
def test_any_split_reads_the_same(cuts: list[int]) -> None:
    data = EHLO + b"220 2.0.0 ready\r\n" + b"500 bare LF ends a line too\n"
    assert replies_from(data, cuts) == [
        Reply(250, ("mx.example.test", "PIPELINING", "AUTH PLAIN LOGIN", "STARTTLS")),
        Reply(220, ("2.0.0 ready",)),
        Reply(500, ("bare LF ends a line too",)),
    ]


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"hello\r\n", "not an SMTP reply: hello"),
        (b"25\r\n", "not an SMTP reply: 25"),
        (b"250x\r\n", "not an SMTP reply: 250x"),
        (b"250-a\r\n251 b\r\n", "reply lines with different codes: 250 then 251"),
        (b"\x16\x03\x01\x00\x05\r\n", "not an SMTP reply: \\x16\\x03\\x01\\x00\\x05"),
        (b"2" * (MAX_LINE + 10), f"reply line over {MAX_LINE} octets"),
        (b"250-x\r\n" * (MAX_LINES + 1), f"reply of more than {MAX_LINES} lines"),
    ],
)
def test_what_is_not_a_reply_is_refused(
    pair: tuple[Wire, socket.socket], data: bytes, error: str
) -> None:
    wire, theirs = pair
    theirs.sendall(data)
    with pytest.raises(WireError) as caught:
        wire.reply()
    assert str(caught.value) == error


def test_a_silent_server_times_out(pair: tuple[Wire, socket.socket]) -> None:
    wire, _ = pair
    wire.sock.settimeout(0.01)
    wire.timeout = 0.01
    with pytest.raises(WireError, match=r"^no answer within 0.01 s$"):
        wire.reply()
    assert not wire.closed_by_peer()


def test_pending_holds_what_came_past_the_reply(pair: tuple[Wire, socket.socket]) -> None:
    wire, theirs = pair
    theirs.sendall(b"220 go ahead\r\n500 early\r\n")
    assert wire.reply() == Reply(220, ("go ahead",))
    assert wire.pending() == b"500 early\r\n"
    theirs.close()
    assert wire.closed_by_peer()


def test_a_command_is_a_line_and_its_reply(pair: tuple[Wire, socket.socket]) -> None:
    wire, theirs = pair
    theirs.sendall(b"250 ok\r\n")
    assert wire.command("NOOP") == Reply(250, ("ok",))
    assert theirs.recv(100) == b"NOOP\r\n"
    theirs.close()

    def flood() -> None:
        for _ in range(100):  # the first writes may still fit in the socket's buffer
            wire.send(b"x" * 65536)

    with pytest.raises(WireError, match=r"^send failed: "):
        flood()


def test_shown_bytes_names_line_ends() -> None:
    assert shown_bytes(b"a\r\n.\n\x00") == "a<CR><LF>.<LF>\\x00"

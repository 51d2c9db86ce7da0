"""Tests for the reply catalogue: wire encoding, reply classes and the codes RFCs prescribe."""

import dataclasses
import re

import pytest

from sendgate.smtp import replies
from sendgate.smtp.replies import Reply, ehlo_reply


def catalogue() -> dict[str, Reply]:
    return {name: value for name, value in vars(replies).items() if isinstance(value, Reply)}


def test_catalogue_is_not_empty() -> None:
    assert len(catalogue()) > 50


@pytest.mark.parametrize(("name", "reply"), sorted(catalogue().items()))
def test_enhanced_code_matches_the_reply_class(name: str, reply: Reply) -> None:
    assert 200 <= reply.code <= 599
    if reply.code // 100 == 3:
        # RFC 2034: intermediate replies carry no enhanced status code.
        assert reply.enhanced == ""
    else:
        assert re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", reply.enhanced)
        assert int(reply.enhanced[0]) == reply.code // 100


@pytest.mark.parametrize(("name", "reply"), sorted(catalogue().items()))
def test_texts_are_one_printable_ascii_line(name: str, reply: Reply) -> None:
    assert re.fullmatch(r"[\x20-\x7e]*", reply.text)
    assert reply.encode().count(b"\r\n") == 1
    assert (reply.text != "") or reply is replies.AUTH_CHALLENGE


@pytest.mark.parametrize(
    ("reply", "code", "enhanced"),
    [
        (replies.CLOSING, 221, "2.0.0"),
        (replies.READY_TLS, 220, "2.0.0"),
        (replies.AUTH_OK, 235, "2.7.0"),
        (replies.CANNOT_VRFY, 252, "2.0.0"),
        (replies.SENDER_OK, 250, "2.1.0"),
        (replies.RECIPIENT_OK, 250, "2.1.5"),
        (replies.START_DATA, 354, ""),
        (replies.TOO_MANY_ERRORS, 421, "4.7.0"),
        (replies.TOO_MANY_RECIPIENTS, 452, "4.5.3"),
        (replies.TLS_NOT_AVAILABLE, 454, "4.7.0"),
        (replies.LINE_TOO_LONG, 500, "5.5.2"),
        (replies.AUTH_LINE_TOO_LONG, 500, "5.5.6"),
        (replies.BARE_NEWLINE, 500, "5.5.2"),
        (replies.BAD_BASE64, 501, "5.5.2"),
        (replies.AUTH_CANCELLED, 501, "5.7.0"),
        (replies.NOT_IMPLEMENTED, 502, "5.5.1"),
        (replies.BAD_SEQUENCE, 503, "5.5.1"),
        (replies.ALREADY_TLS, 503, "5.5.1"),
        (replies.UNKNOWN_MECHANISM, 504, "5.5.4"),
        (replies.MUST_STARTTLS, 530, "5.7.0"),
        (replies.AUTH_REQUIRED, 530, "5.7.0"),
        (replies.AUTH_FAILED, 535, "5.7.8"),
        (replies.BARE_NEWLINE_IN_DATA, 550, "5.6.0"),
        (replies.TEXT_LINE_TOO_LONG, 550, "5.6.0"),
        (replies.MESSAGE_TOO_BIG, 552, "5.3.4"),
        (replies.NON_ASCII_ADDRESS, 553, "5.6.7"),
        (replies.PARAMETER_NOT_SUPPORTED, 555, "5.5.4"),
    ],
)
def test_codes_prescribed_by_the_rfcs(reply: Reply, code: int, enhanced: str) -> None:
    assert (reply.code, reply.enhanced) == (code, enhanced)


@pytest.mark.parametrize(
    ("code", "positive"),
    [(220, True), (250, True), (354, True), (399, True), (400, False), (452, False), (554, False)],
)
def test_is_positive(code: int, positive: bool) -> None:
    assert Reply(code, "", "x").is_positive is positive


def test_only_221_and_421_close() -> None:
    closing = {name for name, reply in catalogue().items() if reply.closes}
    assert closing == {
        "CLOSING",
        "SHUTTING_DOWN",
        "SERVICE_UNAVAILABLE",
        "TOO_MANY_CONNECTIONS",
        "MAKING_ROOM",
        "TOO_MANY_ERRORS",
        "BANNED",
        "IDLE_TIMEOUT",
        "SESSION_TOO_LONG",
    }
    assert not Reply(554, "5.0.0", "x").closes


def test_encode_single_line() -> None:
    assert replies.OK.encode() == b"250 2.0.0 OK\r\n"
    assert replies.START_DATA.encode() == b"354 End data with <CR><LF>.<CR><LF>\r\n"


def test_encode_without_text_keeps_the_space() -> None:
    # "334 " with an empty challenge is what RFC 4954 clients expect for PLAIN.
    assert replies.AUTH_CHALLENGE.encode() == b"334 \r\n"


def test_encode_multi_line_with_enhanced_code() -> None:
    reply = Reply(550, "5.7.1", "one\ntwo\nthree")
    assert reply.encode() == b"550-5.7.1 one\r\n550-5.7.1 two\r\n550 5.7.1 three\r\n"


def test_encode_multi_line_without_enhanced_code() -> None:
    assert Reply(334, "", "a\nb").encode() == b"334-a\r\n334 b\r\n"


def test_encode_is_utf8() -> None:
    assert (
        Reply(250, "2.0.0", "queued as \u00e9").encode()
        == "250 2.0.0 queued as \u00e9\r\n".encode()
    )


def test_with_text_keeps_codes_and_original() -> None:
    queued = replies.QUEUED.with_text("queued as 4XyZ")
    assert queued == Reply(250, "2.0.0", "queued as 4XyZ")
    assert replies.QUEUED.text == "Queued"


def test_replies_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        replies.OK.code = 200  # type: ignore[misc]


def test_ehlo_reply_single_line() -> None:
    assert ehlo_reply(["mx.example.test"]) == b"250 mx.example.test\r\n"


def test_ehlo_reply_continuation_lines() -> None:
    assert ehlo_reply(["mx.example.test", "PIPELINING", "SIZE 10"]) == (
        b"250-mx.example.test\r\n250-PIPELINING\r\n250 SIZE 10\r\n"
    )

"""Tests for the command-line grammar: verbs, arguments, MAIL parameters, BDAT, line limits."""

import pytest

from sendgate.smtp import replies
from sendgate.smtp.commands import (
    AUTH_LINE_MAX,
    COMMAND_LINE_MAX,
    LINE_BUFFER_MAX,
    MAIL_LINE_MAX,
    Command,
    MailParameters,
    line_limit,
    parse_bdat,
    parse_line,
    parse_mail_parameters,
    parse_rcpt_parameters,
)
from sendgate.smtp.dsn import RcptParameters
from sendgate.smtp.replies import Reply

MAX = 10_000


def test_limits_follow_rfc_5321_and_its_extensions() -> None:
    assert COMMAND_LINE_MAX == 512
    # RFC 1870 SIZE +26, RFC 6152 BODY +14, RFC 6531 SMTPUTF8 +10, RFC 4954 AUTH= +500,
    # RFC 3461 RET and ENVID and RFC 8689 REQUIRETLS +130.
    assert MAIL_LINE_MAX == 1192
    assert AUTH_LINE_MAX == 12288
    assert max(MAIL_LINE_MAX, AUTH_LINE_MAX) <= LINE_BUFFER_MAX


@pytest.mark.parametrize(
    ("verb", "limit"),
    [("MAIL", 1192), ("RCPT", 1192), ("AUTH", 12288), ("EHLO", 512), ("NOOP", 512), ("X", 512)],
)
def test_line_limit(verb: str, limit: int) -> None:
    assert line_limit(verb) == limit


@pytest.mark.parametrize(
    ("line", "command"),
    [
        (b"NOOP", Command("NOOP", "")),
        (b"NOOP ", Command("NOOP", "")),
        (b"quit", Command("QUIT", "")),
        (b"mail FROM:<a@example.org>", Command("MAIL", "FROM:<a@example.org>")),
        (b"VRFY   bob  ", Command("VRFY", "bob")),
        (b"EHLO [192.0.2.1]", Command("EHLO", "[192.0.2.1]")),
        (b"ABCDEFGHIJKLMNOP x", Command("ABCDEFGHIJKLMNOP", "x")),
        (
            "MAIL FROM:<j\u00f6rg@example.org>".encode(),
            Command("MAIL", "FROM:<j\u00f6rg@example.org>"),
        ),
    ],
)
def test_parse_line_accepts(line: bytes, command: Command) -> None:
    assert parse_line(line) == command


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b" NOOP",
        b"NO0P",
        b"X-Y",
        b"ABCDEFGHIJKLMNOPQ",  # 17 letters
        b"NOOP\tx",
        b"N\x00OP",
        "N\u00d6OP".encode(),
    ],
)
def test_parse_line_refuses_bad_verbs(line: bytes) -> None:
    assert parse_line(line) is replies.UNRECOGNIZED


@pytest.mark.parametrize(
    "line",
    [b"VRFY \xff\xfe", b"VRFY a\x00b", b"VRFY a\tb", b"VRFY a\x1bb", b"VRFY a\x7fb", b"NOOP \xc3"],
)
def test_parse_line_refuses_bad_arguments(line: bytes) -> None:
    assert parse_line(line) is replies.NON_ASCII_COMMAND


@pytest.mark.parametrize(
    ("text", "params"),
    [
        ("", MailParameters()),
        ("SIZE=100", MailParameters(size=100)),
        ("size=0", MailParameters(size=0)),
        (f"SIZE={MAX}", MailParameters(size=MAX)),
        ("BODY=8bitmime", MailParameters(body="8BITMIME")),
        ("BODY=7BIT", MailParameters(body="7BIT")),
        ("SMTPUTF8", MailParameters(smtputf8=True)),
        ("AUTH=<>", MailParameters()),
        ("AUTH=alice+40example.org", MailParameters()),
        (
            "SIZE=5  BODY=8BITMIME smtputf8 AUTH=<>",
            MailParameters(size=5, body="8BITMIME", smtputf8=True),
        ),
    ],
)
def test_mail_parameters_accepted(text: str, params: MailParameters) -> None:
    assert parse_mail_parameters(text, MAX) == params


@pytest.mark.parametrize(
    ("text", "reply"),
    [
        (f"SIZE={MAX + 1}", replies.MESSAGE_TOO_BIG),
        ("SIZE=99999999999999999999", replies.MESSAGE_TOO_BIG),
        ("SIZE=999999999999999999999", replies.SYNTAX_ERROR),
        ("SIZE=abc", replies.SYNTAX_ERROR),
        ("SIZE=-1", replies.SYNTAX_ERROR),
        ("SIZE=", replies.SYNTAX_ERROR),
        ("SIZE", replies.SYNTAX_ERROR),
        ("SIZE=1 SIZE=1", replies.SYNTAX_ERROR),
        ("size=1 SIZE=2", replies.SYNTAX_ERROR),
        ("SMTPUTF8 SMTPUTF8", replies.SYNTAX_ERROR),
        ("SMTPUTF8=yes", replies.SYNTAX_ERROR),
        ("-X=1", replies.SYNTAX_ERROR),
        ("X_Y=1", replies.SYNTAX_ERROR),
        ("X=a=b", replies.SYNTAX_ERROR),
        ("X=\u00e9", replies.SYNTAX_ERROR),
        ("AUTH=alice+zz", replies.SYNTAX_ERROR),
        ("AUTH=a+", replies.SYNTAX_ERROR),
        ("BODY=BINARYMIME", replies.PARAMETER_NOT_SUPPORTED),
        ("BODY", replies.PARAMETER_NOT_SUPPORTED),
        ("XFORWARD", replies.PARAMETER_NOT_SUPPORTED),
    ],
)
def test_mail_parameters_refused(text: str, reply: Reply) -> None:
    assert parse_mail_parameters(text, MAX) is reply


def test_later_bad_parameter_refuses_the_whole_command() -> None:
    assert parse_mail_parameters("SIZE=1 BODY=8BITMIME FOO", MAX) is replies.PARAMETER_NOT_SUPPORTED


@pytest.mark.parametrize(
    ("argument", "parsed"),
    [
        ("0", (0, False)),
        ("10", (10, False)),
        ("10 LAST", (10, True)),
        ("10 last", (10, True)),
        ("10   LAST  ", (10, True)),
        ("0 LAST", (0, True)),
        ("9" * 20, (int("9" * 20), False)),
    ],
)
def test_parse_bdat(argument: str, parsed: tuple[int, bool]) -> None:
    assert parse_bdat(argument) == parsed


@pytest.mark.parametrize(
    "argument", ["", "x", "-1", "+1", "1.5", "10LAST", "10 LAST x", "10 FIRST", "LAST", "9" * 21]
)
def test_parse_bdat_refuses(argument: str) -> None:
    assert parse_bdat(argument) is None


# Found by fuzzing (tests/fuzz, target "commands"): str.split() also split on Unicode spaces, so
# a MAIL FROM with U+00A0 or U+3000 between or after its parameters was accepted.
@pytest.mark.parametrize(
    "text", ["\xa0", "SIZE=1\u3000BODY=8BITMIME", "SIZE=1\u2003", "\xa0SMTPUTF8"]
)
def test_mail_parameters_are_separated_by_spaces_only(text: str) -> None:
    assert parse_mail_parameters(text, MAX) is replies.SYNTAX_ERROR


def test_mail_parameters_may_be_separated_by_several_spaces() -> None:
    assert parse_mail_parameters("SIZE=1  BODY=8BITMIME ", MAX) == MailParameters(1, "8BITMIME")


# Found by fuzzing (tests/fuzz, target "commands", with its dictionary): keywords were upper-cased
# before their check, and "\u017f" (LATIN SMALL LETTER LONG S) upper-cases to an ASCII "S".
@pytest.mark.parametrize("text", ["\u017fIZE=1", "\u017fMTPUTF8", "BODY=7BIT \u017fIZE=1"])
def test_mail_parameter_keywords_are_ascii(text: str) -> None:
    assert parse_mail_parameters(text, MAX) is replies.SYNTAX_ERROR


# Found by reading, after fuzzing: case-insensitive matching without re.ASCII took U+017F
# (long s) for "s", so "BDAT 5 LA" + U+017F + "T" ended a message.
@pytest.mark.parametrize("argument", ["5 LA\u017fT", "5 la\u017ft"])
def test_bdat_last_is_ascii_only(argument: str) -> None:
    assert parse_bdat(argument) is None


# --- RFC 3461 (DSN) and RFC 8689 (REQUIRETLS) parameters ---


@pytest.mark.parametrize(
    ("text", "params"),
    [
        ("RET=FULL", MailParameters(ret="FULL")),
        ("ret=hdrs", MailParameters(ret="HDRS")),
        ("ENVID=QQ314159", MailParameters(envid="QQ314159")),
        ("ENVID=a+2Bb+20c", MailParameters(envid="a+b c")),
        ("ENVID=" + "x" * 100, MailParameters(envid="x" * 100)),
        (
            "RET=HDRS ENVID=id1 BODY=8BITMIME",
            MailParameters(body="8BITMIME", ret="HDRS", envid="id1"),
        ),
        ("REQUIRETLS", MailParameters(requiretls=True)),
        ("requiretls SMTPUTF8", MailParameters(smtputf8=True, requiretls=True)),
    ],
)
def test_dsn_and_requiretls_mail_parameters(text: str, params: MailParameters) -> None:
    assert parse_mail_parameters(text, MAX, tls=True) == params


@pytest.mark.parametrize(
    ("text", "reply"),
    [
        ("RET=NONE", replies.SYNTAX_ERROR),
        ("RET", replies.SYNTAX_ERROR),
        ("RET=FULL RET=FULL", replies.SYNTAX_ERROR),
        ("ENVID=" + "x" * 101, replies.SYNTAX_ERROR),
        ("ENVID=a+2", replies.SYNTAX_ERROR),
        ("ENVID=a+0A", replies.SYNTAX_ERROR),  # decodes to a line feed
        ("ENVID=+C3+A9", replies.SYNTAX_ERROR),  # decodes to non-ASCII octets
        ("ENVID", replies.SYNTAX_ERROR),
        ("REQUIRETLS=YES", replies.SYNTAX_ERROR),
        ("REQUIRETLS REQUIRETLS", replies.SYNTAX_ERROR),
    ],
)
def test_dsn_and_requiretls_mail_parameters_refused(text: str, reply: Reply) -> None:
    assert parse_mail_parameters(text, MAX, tls=True) is reply


def test_requiretls_is_refused_without_tls() -> None:
    assert parse_mail_parameters("REQUIRETLS", MAX) is replies.REQUIRETLS_NEEDS_TLS
    expected = b"530 5.7.10 REQUIRETLS is offered only over TLS\r\n"
    assert replies.REQUIRETLS_NEEDS_TLS.encode() == expected


@pytest.mark.parametrize(
    ("text", "params"),
    [
        ("", RcptParameters()),
        ("NOTIFY=NEVER", RcptParameters(notify=("NEVER",))),
        ("notify=never", RcptParameters(notify=("NEVER",))),
        ("NOTIFY=DELAY,SUCCESS", RcptParameters(notify=("SUCCESS", "DELAY"))),
        ("NOTIFY=failure,delay,success", RcptParameters(notify=("SUCCESS", "FAILURE", "DELAY"))),
        ("ORCPT=rfc822;bob@example.net", RcptParameters(orcpt="rfc822;bob@example.net")),
        ("ORCPT=rfc822;b+2Bc@example.net", RcptParameters(orcpt="rfc822;b+2Bc@example.net")),
        (
            "ORCPT=utf-8;j\\x{00F6}rg@example.net NOTIFY=SUCCESS",
            RcptParameters(("SUCCESS",), "utf-8;j\\x{00F6}rg@example.net"),
        ),
        ("ORCPT=rfc822;" + "x" * 493, RcptParameters(orcpt="rfc822;" + "x" * 493)),
    ],
)
def test_rcpt_parameters_accepted(text: str, params: RcptParameters) -> None:
    assert parse_rcpt_parameters(text) == params


@pytest.mark.parametrize(
    ("text", "reply"),
    [
        ("NOTIFY=NEVER,FAILURE", replies.SYNTAX_ERROR),
        ("NOTIFY=SUCCESS,SUCCESS", replies.SYNTAX_ERROR),
        ("NOTIFY=SOMETIMES", replies.SYNTAX_ERROR),
        ("NOTIFY=SUCCESS,", replies.SYNTAX_ERROR),
        ("NOTIFY", replies.SYNTAX_ERROR),
        ("NOTIFY=DELAY NOTIFY=DELAY", replies.SYNTAX_ERROR),
        ("ORCPT=bob@example.net", replies.SYNTAX_ERROR),
        ("ORCPT=;bob@example.net", replies.SYNTAX_ERROR),
        ("ORCPT=rfc822;", replies.SYNTAX_ERROR),
        ("ORCPT=rf(c;bob@example.net", replies.SYNTAX_ERROR),
        ("ORCPT=rfc822;bob+", replies.SYNTAX_ERROR),
        ("ORCPT=rfc822;" + "x" * 494, replies.SYNTAX_ERROR),
        ("ORCPT=rfc822;a+0Db", replies.SYNTAX_ERROR),
        ("SIZE=1", replies.PARAMETER_NOT_SUPPORTED),
        ("X=\u00e9", replies.SYNTAX_ERROR),
    ],
)
def test_rcpt_parameters_refused(text: str, reply: Reply) -> None:
    assert parse_rcpt_parameters(text) is reply

"""Tests for sendgate.text: each escaping rule for its destination, and the time formats."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sendgate.text import (
    dsn_address,
    dsn_ascii,
    dsn_lines,
    header_host,
    iso_utc,
    log_timestamp,
    log_value,
    mail_date,
    one_line,
    printable,
    reply_text,
)

# Controls, line and paragraph separators, bidi overrides and isolates: never in a DSN.
_DSN_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")

# --- printable (terminals) -------------------------------------------------------------------


def test_printable_escapes_what_a_terminal_would_act_on() -> None:
    assert printable("red \x1b[31m\r\n\u202eevil\u2028") == "red \\x1b[31m\\r\\n\\u202eevil\\u2028"


def test_printable_keeps_readable_text_and_tabs_unless_told() -> None:
    assert printable("用户@例子.广告") == "用户@例子.广告"
    assert printable("\tfolded") == "\tfolded"
    assert printable("\tfolded", keep_tabs=False) == "\\tfolded"


@given(st.text())
def test_printable_output_is_printable_and_printable_input_unchanged(text: str) -> None:
    shown = printable(text, keep_tabs=False)
    assert shown.isprintable()
    assert printable(text).replace("\t", "").isprintable()
    if text.isprintable():
        assert shown == text


# --- times -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unix", "shown"),
    [(0.0, "1970-01-01T00:00:00Z"), (86_399.9, "1970-01-01T23:59:59Z")],
)
def test_iso_utc_is_to_the_second(unix: float, shown: str) -> None:
    assert iso_utc(unix) == shown


def test_log_timestamp_is_to_the_millisecond() -> None:
    assert log_timestamp(1_714_564_800.25) == "2024-05-01T12:00:00.250Z"
    assert log_timestamp(0.0) == "1970-01-01T00:00:00.000Z"


def test_mail_date_is_rfc_5322_in_utc() -> None:
    assert mail_date(1_714_564_800.0) == "Wed, 01 May 2024 12:00:00 +0000"


# --- log values ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("<a@b>,[::1]:25/x+y-z", "<a@b>,[::1]:25/x+y-z"),
        ("", '""'),
        ("two words", '"two words"'),
        ("a=b", '"a=b"'),
        ("del\x7fnel\x85ls\u2028", '"del\\u007fnel\\u0085ls\\u2028"'),
    ],
)
def test_log_value_is_bare_or_quoted(text: str, shown: str) -> None:
    assert log_value(text) == shown


@given(st.text())
def test_log_value_is_one_token_that_reads_back(text: str) -> None:
    shown = log_value(text)
    assert len(shown.splitlines()) == 1
    assert " " not in shown or shown.startswith('"')
    assert (json.loads(shown) if shown.startswith('"') else shown) == text


# --- remote replies --------------------------------------------------------------------------


def test_one_line_joins_lines_and_replaces_controls() -> None:
    assert (
        one_line("550-5.1.1 no such user\n550 5.1.1 bye")
        == "550-5.1.1 no such user / 550 5.1.1 bye"
    )
    assert one_line("a\rb\tc\x00d\x7fe\u2028f\u202eg") == "a b c d e f g"


def test_one_line_bounds_the_length() -> None:
    assert len(one_line("x" * 5000)) == 1000
    assert one_line("short") == "short"


@given(st.text())
def test_one_line_output_is_printable_bounded_and_stable(text: str) -> None:
    line = one_line(text)
    assert line.isprintable()
    assert len(line) <= 1000
    assert one_line(line) == line


@given(st.text())
def test_one_line_is_the_text_with_each_unprintable_character_replaced(text: str) -> None:
    # The definition, character by character (one_line skips it for printable text).
    expected = "".join(c if c.isprintable() else " " for c in text.replace("\n", " / "))
    assert one_line(text) == expected[:1000]


@given(st.text(), st.integers(0, 50))
def test_reply_text_is_the_text_with_each_unprintable_character_replaced(
    text: str, limit: int
) -> None:
    kept = "".join(c if c == "\n" or c.isprintable() else "?" for c in text[:limit])
    assert reply_text(text, limit) == kept + ("..." if len(text) > limit else "")


def test_reply_text_keeps_lines_and_marks_the_cut() -> None:
    assert reply_text("250-first\n250 se\x1bcond\u202e", 100) == "250-first\n250 se?cond?"
    assert reply_text("x" * 11, 10) == "x" * 10 + "..."
    assert reply_text("x" * 10, 10) == "x" * 10


@given(st.text(), st.integers(0, 50))
def test_reply_text_lines_are_printable_and_bounded(text: str, limit: int) -> None:
    shown = reply_text(text, limit)
    assert len(shown) <= limit + 3
    assert all(line.isprintable() for line in shown.split("\n"))


# --- header fields and DSNs ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "replacement", "shown"),
    [
        ("x;\r\nBcc: y", "_", "x___Bcc:_y"),
        ("[IPv6:2001:db8::1]", "_", "[IPv6:2001:db8::1]"),
        ("mx\r\nX:(y", "?", "mx??X:?y"),
        ("caf\u00e9.example", "?", "caf?.example"),
    ],
)
def test_header_host_keeps_only_name_characters(name: str, replacement: str, shown: str) -> None:
    assert header_host(name, replacement) == shown


@given(st.text())
def test_header_host_is_safe_and_bounded(name: str) -> None:
    assert re.fullmatch(r"[A-Za-z0-9.\-:\[\]_]{0,255}", header_host(name, "_"))


def test_dsn_address_marks_unsafe_characters_and_cuts_at_a_character() -> None:
    assert dsn_address("bob@x\r\nBcc: eve@y", 512) == "bob@x??Bcc: eve@y"
    assert dsn_address("a\u202eb\ud800", 512) == "a?b?"
    assert dsn_address("ab\u00e9", 3) == "ab"  # the é would need two more octets


@given(st.text(), st.integers(0, 40))
def test_dsn_address_fits_its_octets_and_encodes(address: str, octets: int) -> None:
    shown = dsn_address(address, octets)
    assert len(shown.encode("utf-8")) <= octets
    assert _DSN_UNSAFE.search(shown) is None


def test_dsn_lines_are_clean_and_never_empty() -> None:
    text = "550-5.1.1 no\tsuch  user\r\n\r\n550 \x1b[2Jbye\u202e\ud800"
    assert dsn_lines(text) == ["550-5.1.1 no such user", "550 [2Jbye\ufffd"]


@given(st.text())
def test_dsn_lines_hold_no_unsafe_character(text: str) -> None:
    for line in dsn_lines(text):
        assert line
        assert line == line.strip()
        line.encode("utf-8")  # no lone surrogate left
        assert _DSN_UNSAFE.search(line) is None


def test_dsn_ascii_escapes_non_ascii_as_rfc_6533() -> None:
    assert dsn_ascii("j\u00f6rg \U0001f600") == "j\\x{F6}rg \\x{1F600}"
    assert dsn_ascii("plain") == "plain"

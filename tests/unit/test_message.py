"""Tests for sendgate.message: header summary, the Received trace field and the RFC 6409 fix-ups."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sendgate.message import (
    HeaderError,
    HeaderSummary,
    date_text,
    fix_up,
    new_message_id,
    now_utc,
    received_header,
    summarize,
)
from sendgate.smtp.address import Address
from sendgate.smtp.events import TlsInfo

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
NOW_TEXT = "Wed, 01 May 2024 12:00:00 +0000"
HOSTNAME = "mx.example.test"
QUEUE_ID = "01HX0000000000ABCD"
TLS = TlsInfo("TLSv1.3", "TLS_AES_128_GCM_SHA256", 128)
ALICE = Address("alice", "example.org")
MESSAGE_ID = re.compile(rb"Message-ID: <01HX0000000000ABCD\.[0-9a-f]{12}@mx\.example\.test>\r\n")


def received(
    helo: str | None = "client.example",
    *,
    client_ip: str | None = None,
    tls: TlsInfo | None = None,
    authenticated: bool = True,
    smtputf8: bool = False,
) -> bytes:
    return received_header(
        helo=helo,
        client_ip=client_ip,
        hostname=HOSTNAME,
        queue_id=QUEUE_ID,
        tls=tls,
        authenticated=authenticated,
        smtputf8=smtputf8,
        now=NOW,
    )


def fixed(content: bytes, *, smtputf8: bool = False) -> bytes:
    summary = summarize(content, smtputf8=smtputf8)
    return fix_up(
        content, summary, b"Received: x\r\n", hostname=HOSTNAME, queue_id=QUEUE_ID, now=NOW
    )


def assert_one_received_field(header: bytes) -> None:
    """The bytes are one header field: one first line, then only tab-led continuation lines."""
    assert header.startswith(b"Received: ")
    assert header.endswith(b"\r\n")
    lines = header[:-2].split(b"\r\n")
    for line in lines:
        assert b"\r" not in line
        assert b"\n" not in line
    assert all(line.startswith(b"\t") for line in lines[1:])


# --- summarize: From and Sender ----------------------------------------------------------------


def test_summary_extracts_from_and_sender() -> None:
    content = (
        b"Subject: hi\r\n"
        b"From: Alice <alice@example.org>, bob@EXAMPLE.net\r\n"
        b"Sender: alice@example.org\r\n"
        b"\r\n"
        b"From: not-a-header@example.com\r\n"
    )
    summary = summarize(content, smtputf8=False)
    assert summary.from_ == (ALICE, Address("bob", "example.net"))
    assert summary.sender == (ALICE,)
    assert summary.header_end == content.index(b"\r\n\r\n") + 2
    assert not summary.has_message_id
    assert not summary.has_date


def test_field_names_are_case_insensitive() -> None:
    content = b"FROM: alice@example.org\r\nmessage-id: <a@b>\r\nDATE: today\r\n\r\n"
    summary = summarize(content, smtputf8=False)
    assert summary.from_ == (ALICE,)
    assert summary.has_message_id
    assert summary.has_date


def test_folded_from_is_unfolded() -> None:
    content = b"From: Alice\r\n <alice@example.org>,\r\n\tbob@example.net\r\nSubject: x\r\n\r\n"
    summary = summarize(content, smtputf8=False)
    assert summary.from_ == (ALICE, Address("bob", "example.net"))


def test_folded_other_field_does_not_leak_into_from() -> None:
    content = b"From: alice@example.org\r\nSubject: x\r\n mallory@evil.example\r\n\r\n"
    assert summarize(content, smtputf8=False).from_ == (ALICE,)


@pytest.mark.parametrize("name", [b"From", b"Sender"])
def test_two_fields_of_a_kind_are_refused(name: bytes) -> None:
    content = name + b": alice@example.org\r\n" + name.lower() + b": ceo@example.com\r\n\r\n"
    with pytest.raises(HeaderError, match=f"more than one {name.decode()} field"):
        summarize(content, smtputf8=False)


def test_continuation_before_first_field_is_refused() -> None:
    with pytest.raises(HeaderError, match="continuation line before any header field"):
        summarize(b" From: alice@example.org\r\n\r\n", smtputf8=False)


@pytest.mark.parametrize(
    "line",
    [
        b"From alice@example.org",
        b": no name",
        b"From : alice@example.org",
        b"Bad\x00Name: x",
        b"Caf\xc3\xa9: x",
    ],
)
def test_malformed_header_line_is_refused(line: bytes) -> None:
    with pytest.raises(HeaderError, match="malformed header line"):
        summarize(b"Subject: x\r\n" + line + b"\r\n\r\nbody\r\n", smtputf8=False)


def test_header_only_message_is_summarised() -> None:
    content = b"From: alice@example.org\r\nSubject: no body\r\n"
    summary = summarize(content, smtputf8=False)
    assert summary.from_ == (ALICE,)
    assert summary.header_end == len(content)


def test_last_header_line_without_crlf_is_seen() -> None:
    with pytest.raises(HeaderError, match="more than one From field"):
        summarize(b"From: alice@example.org\r\nFrom: ceo@victim.example", smtputf8=False)


@pytest.mark.parametrize("content", [b"", b"\r\n", b"\r\nFrom: alice@example.org\r\n"])
def test_message_without_header_has_no_from(content: bytes) -> None:
    summary = summarize(content, smtputf8=False)
    assert summary.from_ == ()
    assert summary.sender == ()
    assert summary.header_end == 0


def test_non_utf8_from_is_refused() -> None:
    with pytest.raises(HeaderError, match="unusable From field"):
        summarize(b"From: Al\xff <alice@example.org>\r\n\r\n", smtputf8=True)


def test_utf8_from_needs_smtputf8() -> None:
    content = "From: josé@exämple.de\r\n\r\n".encode()
    with pytest.raises(HeaderError, match="unusable From field"):
        summarize(content, smtputf8=False)
    assert summarize(content, smtputf8=True).from_ == (Address("josé", "exämple.de"),)


@pytest.mark.parametrize(
    "value",
    [
        b"undisclosed: alice@example.org;",
        b"friends: ;",
        b"<>",
        b"",
        b"alice",
        b"alice@",
        b"alice@exa mple.org",
    ],
)
def test_unusable_from_values_are_refused(value: bytes) -> None:
    with pytest.raises(HeaderError, match="unusable From field"):
        summarize(b"From: " + value + b"\r\n\r\n", smtputf8=False)


def test_unusable_sender_is_refused() -> None:
    content = b"From: alice@example.org\r\nSender: group: a@example.org;\r\n\r\n"
    with pytest.raises(HeaderError, match="unusable Sender field"):
        summarize(content, smtputf8=False)


@pytest.mark.parametrize(
    "value",
    [
        b"Alice Example <alice@example.org>",
        b'"Example, Alice (work)" <alice@example.org>',
        b"alice@example.org (Alice at work)",
        b"(comment) Alice <alice@example.org> (another)",
        b"=?utf-8?q?Al=C3=AFce?= <alice@example.org>",
        b"=?iso-8859-1?b?QWxp6GNl?= <alice@EXAMPLE.ORG>",
    ],
)
def test_display_names_comments_and_encoded_words_are_accepted(value: bytes) -> None:
    summary = summarize(b"From: " + value + b"\r\n\r\n", smtputf8=False)
    assert summary.from_ == (ALICE,)


# --- received_header -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tls", "authenticated", "smtputf8", "protocol"),
    [
        (TLS, True, False, "ESMTPSA"),
        (None, True, False, "ESMTPA"),
        (TLS, False, False, "ESMTPS"),
        (None, False, False, "ESMTP"),
        (TLS, True, True, "UTF8SMTPSA"),
        (None, False, True, "UTF8SMTP"),
    ],
)
def test_received_names_the_protocol(
    tls: TlsInfo | None, authenticated: bool, smtputf8: bool, protocol: str
) -> None:
    header = received(tls=tls, authenticated=authenticated, smtputf8=smtputf8)
    assert f" with {protocol} id {QUEUE_ID}".encode() in header
    assert_one_received_field(header)


def test_received_exact_form_with_tls() -> None:
    assert received(tls=TLS) == (
        b"Received: from client.example\r\n"
        b"\tby mx.example.test (sendgate) with ESMTPSA id 01HX0000000000ABCD\r\n"
        b"\t(using TLSv1.3 with cipher TLS_AES_128_GCM_SHA256 (128 bits));\r\n"
        b"\tWed, 01 May 2024 12:00:00 +0000\r\n"
    )


def test_received_exact_form_without_tls() -> None:
    assert received() == (
        b"Received: from client.example\r\n"
        b"\tby mx.example.test (sendgate) with ESMTPA id 01HX0000000000ABCD;\r\n"
        b"\tWed, 01 May 2024 12:00:00 +0000\r\n"
    )


def test_received_shows_client_ip_only_when_given() -> None:
    assert b"([192.0.2.7])" in received(client_ip="192.0.2.7")
    assert b"([2001:db8::7])" in received(client_ip="2001:db8::7")
    without = received(client_ip=None)
    assert b"[" not in without
    assert b"192.0.2.7" not in without


def test_received_without_helo_says_unknown() -> None:
    assert received(None).startswith(b"Received: from unknown\r\n")


@pytest.mark.parametrize(
    ("helo", "shown"),
    [
        ("x;\r\nBcc: y", b"x___Bcc:_y"),
        ("(a)", b"_a_"),
        ("a) (by evil.example", b"a___by_evil.example"),
        ("[192.0.2.1]", b"[192.0.2.1]"),
        ("[IPv6:2001:db8::1]", b"[IPv6:2001:db8::1]"),
        ("caf\u00e9.example", b"caf_.example"),
        ("tab\there", b"tab_here"),
    ],
)
def test_hostile_helo_is_reduced_to_safe_characters(helo: str, shown: bytes) -> None:
    header = received(helo)
    assert header.startswith(b"Received: from " + shown + b"\r\n")
    assert_one_received_field(header)


def test_long_helo_is_cut() -> None:
    header = received("a" * 1000)
    assert header.startswith(b"Received: from " + b"a" * 255 + b"\r\n")


@given(
    helo=st.one_of(st.none(), st.text()),
    tls=st.one_of(st.none(), st.just(TLS)),
    authenticated=st.booleans(),
    smtputf8=st.booleans(),
)
def test_received_is_always_one_safe_field(
    helo: str | None, tls: TlsInfo | None, authenticated: bool, smtputf8: bool
) -> None:
    header = received(helo, tls=tls, authenticated=authenticated, smtputf8=smtputf8)
    assert_one_received_field(header)
    assert header.isascii()
    shown = header.split(b"\r\n", 1)[0].removeprefix(b"Received: from ")
    assert re.fullmatch(rb"[A-Za-z0-9.\-:\[\]_]{1,255}", shown)


# --- fix_up ----------------------------------------------------------------------------------


def test_fix_up_adds_nothing_when_present() -> None:
    content = b"From: alice@example.org\r\nMessage-ID: <a@b>\r\nDate: x\r\n\r\nbody\r\n"
    assert fixed(content) == b"Received: x\r\n" + content


def test_fix_up_adds_message_id_and_date_at_end_of_header() -> None:
    content = b"From: alice@example.org\r\nSubject: hi\r\n\r\nbody\r\n.\r\n"
    out = fixed(content)
    head, body = out.split(b"\r\n\r\n", 1)
    assert body == b"body\r\n.\r\n"
    lines = (head + b"\r\n").splitlines(keepends=True)
    assert lines[:3] == [b"Received: x\r\n", b"From: alice@example.org\r\n", b"Subject: hi\r\n"]
    assert MESSAGE_ID.fullmatch(lines[3])
    assert lines[4:] == [f"Date: {NOW_TEXT}\r\n".encode()]


def test_fix_up_adds_only_what_is_missing() -> None:
    with_id = b"Message-ID: <a@b>\r\nFrom: alice@example.org\r\n\r\nbody\r\n"
    assert fixed(with_id) == (
        b"Received: x\r\n"
        b"Message-ID: <a@b>\r\nFrom: alice@example.org\r\n"
        + f"Date: {NOW_TEXT}\r\n".encode()
        + b"\r\nbody\r\n"
    )
    with_date = b"Date: yesterday\r\nFrom: alice@example.org\r\n\r\nbody\r\n"
    out = fixed(with_date)
    assert out.count(b"Date:") == 1
    prefix = b"Received: x\r\nDate: yesterday\r\nFrom: alice@example.org\r\n"
    assert out.startswith(prefix)
    assert MESSAGE_ID.fullmatch(out[len(prefix) : -len(b"\r\nbody\r\n")])
    assert out.endswith(b"\r\n\r\nbody\r\n")


def test_fix_up_of_header_only_message_appends_fields() -> None:
    content = b"From: alice@example.org\r\n"
    out = fixed(content)
    assert out.startswith(b"Received: x\r\nFrom: alice@example.org\r\nMessage-ID: <")
    assert out.endswith(f"Date: {NOW_TEXT}\r\n".encode())


def test_fix_up_keeps_an_unterminated_last_line_whole() -> None:
    out = fixed(b"From: alice@example.org\r\nSubject: no CRLF")
    assert b"Subject: no CRLF\r\nMessage-ID: <" in out


@pytest.mark.parametrize("content", [b"", b"\r\nbody only\r\n"])
def test_fix_up_without_header_puts_fields_first(content: bytes) -> None:
    out = fixed(content)
    assert out.startswith(b"Received: x\r\nMessage-ID: <")
    assert out.endswith(f"Date: {NOW_TEXT}\r\n".encode() + content)


def test_message_ids_are_unique_and_name_queue_and_host() -> None:
    ids = {new_message_id(HOSTNAME, QUEUE_ID) for _ in range(100)}
    assert len(ids) == 100
    assert all(MESSAGE_ID.fullmatch(f"Message-ID: {mid}\r\n".encode()) for mid in ids)


def test_now_utc_is_aware_utc() -> None:
    assert now_utc(1_714_564_800.0) == NOW
    assert now_utc(0.0).tzinfo is UTC


@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))
def test_date_text_is_format_datetimes_text(unix: float) -> None:
    now = now_utc(unix)
    assert date_text(now) == format_datetime(now)


def test_date_text_of_one_second_is_made_once() -> None:
    # Remembered per second: a later instant of the same second gets the same text, the next
    # second its own.
    first = date_text(NOW.replace(microsecond=1))
    assert date_text(NOW.replace(microsecond=999_999)) is first
    assert first == NOW_TEXT
    assert date_text(NOW.replace(second=1)) == "Wed, 01 May 2024 12:00:01 +0000"


_FIELD_NAMES = st.sampled_from([b"Subject", b"To", b"X-Tag", b"Message-ID", b"Date", b"Cc"])
_FIELD_VALUES = st.binary().map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


@st.composite
def header_lines(draw: st.DrawFn) -> bytes:
    name = draw(_FIELD_NAMES)
    line = name + b": " + draw(_FIELD_VALUES) + b"\r\n"
    for fold in draw(st.lists(_FIELD_VALUES, max_size=2)):
        line += b"\t" + fold + b"\r\n"
    return line


@given(
    header=st.lists(header_lines(), max_size=6).map(b"".join),
    has_from=st.booleans(),
    body=st.binary(),
)
def test_fix_up_never_changes_the_bytes_after_the_header(
    header: bytes, has_from: bool, body: bytes
) -> None:
    if has_from:
        header = b"From: alice@example.org\r\n" + header
    content = header + b"\r\n" + body
    summary = summarize(content, smtputf8=False)
    out = fix_up(content, summary, b"Received: x\r\n", hostname=HOSTNAME, queue_id="Q", now=NOW)
    assert out.startswith(b"Received: x\r\n" + header)
    assert out.endswith(b"\r\n" + body)
    middle = out[len(b"Received: x\r\n" + header) : len(out) - len(b"\r\n" + body)]
    expected = (b"" if summary.has_message_id else b"Message-ID") + (
        b"" if summary.has_date else b"Date"
    )
    assert b"".join(re.findall(rb"^([A-Za-z-]+): ", middle, re.MULTILINE)) == expected
    # Running the fix-ups again finds nothing missing.
    again = summarize(out, smtputf8=False)
    assert again.has_message_id
    assert again.has_date
    assert again.from_ == summary.from_


def test_summary_is_a_plain_value() -> None:
    summary = summarize(b"From: alice@example.org\r\n\r\n", smtputf8=False)
    assert summary == HeaderSummary((ALICE,), (), False, False, len(b"From: alice@example.org\r\n"))

"""Tests for sendgate.delivery.bounce: DSN structure, fields, original part, hostile replies."""

from __future__ import annotations

import dataclasses
import re
from email import policy
from email.message import EmailMessage
from email.parser import BytesHeaderParser, BytesParser, Parser
from email.utils import parsedate_to_datetime
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sendgate.delivery.bounce import MAX_DIAGNOSTIC, Dsn, RecipientNotice, build_dsn

HOST = "mail.example.org"
QUEUE_ID = "0ABCDEFGHJKMNPQRST"
SENDER = "alice@example.org"
RECEIVED = 1_700_000_000.0
NOW = 1_700_086_400.0
RETRY_UNTIL = 1_700_432_000.0
ORIGINAL = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.net\r\n"
    b"Subject: lunch\r\n"
    b"Message-ID: <m1@example.org>\r\n"
    b"\r\n"
    b"See you at noon.\r\n"
)
REPLY = "550-5.1.1 <bob@example.net>: no such user\n550 5.1.1 try again never"
BARE_NEWLINE = re.compile(rb"\r(?!\n)|(?<!\r)\n")

FAILED = RecipientNotice(
    recipient="bob@example.net",
    action="failed",
    status="5.1.1",
    remote_mta="mx1.example.net",
    diagnostic=REPLY,
    last_attempt=NOW - 60,
)
DELAYED = RecipientNotice(
    recipient="carol@example.com",
    action="delayed",
    status="4.4.1",
    remote_mta=None,
    diagnostic=None,
    last_attempt=NOW - 120,
)


def build(**overrides: Any) -> Dsn:
    args: dict[str, Any] = {
        "reporting_host": HOST,
        "queue_id": QUEUE_ID,
        "original_sender": SENDER,
        "received_at": RECEIVED,
        "notices": [FAILED],
        "original": ORIGINAL,
        "now": NOW,
        "message_id": "dsn.1@mail.example.org",
    }
    args.update(overrides)
    return build_dsn(**args)


def parse(dsn: Dsn) -> EmailMessage:
    return BytesParser(policy=policy.default).parsebytes(dsn.message)


def parts(message: EmailMessage) -> list[EmailMessage]:
    payload = message.get_payload()
    assert isinstance(payload, list)
    return [cast(EmailMessage, part) for part in payload]


def text_of(part: EmailMessage) -> str:
    """A text part's content with its CRLF line ends read as newlines."""
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


def raw_bodies(dsn: Dsn) -> list[bytes]:
    """Each body part's content exactly as it stands between its header and the delimiter."""
    boundary = parse(dsn).get_boundary()
    assert boundary is not None
    chunks = dsn.message.split(b"\r\n--" + boundary.encode())
    assert chunks[-1] == b"--\r\n"
    bodies = []
    for chunk in chunks[1:-1]:
        assert chunk.startswith(b"\r\n")
        bodies.append(chunk[chunk.index(b"\r\n\r\n", 2) + 4 :])
    return bodies


def status_blocks(dsn: Dsn) -> list[dict[str, str]]:
    """The delivery-status part's field blocks, unfolded (works for the global type too)."""
    text = raw_bodies(dsn)[1]
    parser = BytesHeaderParser(policy=policy.default)
    blocks = []
    for block in text.split(b"\r\n\r\n"):
        if block.strip():
            fields = parser.parsebytes(block + b"\r\n\r\n")
            assert not fields.defects
            blocks.append({name: str(value) for name, value in fields.items()})
    return blocks


def assert_wire_safe(dsn: Dsn) -> None:
    assert BARE_NEWLINE.search(dsn.message) is None
    assert dsn.message.endswith(b"\r\n")
    assert max(map(len, dsn.message.split(b"\r\n"))) <= 998
    dsn.message.decode("utf-8")  # strict: raises on anything that is not UTF-8
    assert dsn.eight_bit == (not dsn.message.isascii())


def test_failed_dsn_outer_headers() -> None:
    dsn = build()
    message = parse(dsn)
    assert not message.defects
    sender = message["From"].addresses[0]
    assert (sender.display_name, sender.addr_spec) == (
        "Mail Delivery System",
        "MAILER-DAEMON@mail.example.org",
    )
    assert message["To"].addresses[0].addr_spec == SENDER
    assert message["Subject"] == "Undelivered Mail Returned to Sender"
    assert parsedate_to_datetime(message["Date"]).timestamp() == NOW
    assert message["Message-ID"] == "<dsn.1@mail.example.org>"
    assert message["MIME-Version"] == "1.0"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert [part.get_content_type() for part in parts(message)] == [
        "text/plain",
        "message/delivery-status",
        "message/rfc822",
    ]
    assert (dsn.eight_bit, dsn.smtputf8) == (False, False)
    assert_wire_safe(dsn)


def test_message_id_brackets_are_optional() -> None:
    assert build(message_id="<dsn.1@mail.example.org>").message == build().message


def test_delivery_status_fields() -> None:
    dsn = build(notices=[FAILED])
    per_message, per_recipient = status_blocks(dsn)
    assert per_message == {
        "Reporting-MTA": "dns; mail.example.org",
        "X-Sendgate-Queue-ID": QUEUE_ID,
        "Arrival-Date": "Tue, 14 Nov 2023 22:13:20 +0000",
    }
    assert per_recipient == {
        "Final-Recipient": "rfc822; bob@example.net",
        "Action": "failed",
        "Status": "5.1.1",
        "Remote-MTA": "dns; mx1.example.net",
        "Diagnostic-Code": "smtp; 550-5.1.1 <bob@example.net>: no such user "
        "550 5.1.1 try again never",
        "Last-Attempt-Date": "Wed, 15 Nov 2023 22:12:20 +0000",
    }


def test_stdlib_reads_the_same_delivery_status_blocks() -> None:
    dsn = build(notices=[FAILED, DELAYED], will_retry_until=RETRY_UNTIL)
    blocks = cast(list[EmailMessage], parts(parse(dsn))[1].get_payload())
    assert [dict(block.items()) for block in blocks] == status_blocks(dsn)
    assert len(blocks) == 3


def test_human_text_names_each_recipient_with_the_indented_reply() -> None:
    text = parts(parse(build(notices=[FAILED, DELAYED])))[0]
    assert text.get_content_charset() == "utf-8"
    body = text_of(text)
    assert "<bob@example.net>: could not be delivered (status 5.1.1)." in body
    assert "    mx1.example.net replied:\n" in body
    assert "        550-5.1.1 <bob@example.net>: no such user\n" in body
    assert "        550 5.1.1 try again never\n" in body
    assert "<carol@example.com>: is delayed (status 4.4.1)." in body
    assert "No reply from a remote server was received." in body
    assert "your message is attached" in body


def test_original_part_is_byte_identical() -> None:
    dsn = build()
    assert raw_bodies(dsn)[2] == ORIGINAL
    inner = cast(list[EmailMessage], parts(parse(dsn))[2].get_payload())[0]
    assert inner["Subject"] == "lunch"


def test_eight_bit_original_sets_eight_bit_and_stays_identical() -> None:
    original = ORIGINAL + "Grüße, café\r\n".encode()
    dsn = build(original=original)
    assert raw_bodies(dsn)[2] == original
    attached = parts(parse(dsn))[2]
    assert attached.get_content_type() == "message/rfc822"
    assert attached["Content-Transfer-Encoding"] == "8bit"
    assert parse(dsn)["Content-Transfer-Encoding"] == "8bit"
    assert (dsn.eight_bit, dsn.smtputf8) == (True, False)
    assert_wire_safe(dsn)


def test_original_without_final_crlf_is_kept_as_is() -> None:
    original = ORIGINAL + b"no newline at the end"
    dsn = build(original=original)
    assert raw_bodies(dsn)[2] == original
    assert_wire_safe(dsn)


def test_utf8_header_original_is_message_global() -> None:
    original = "Subject: Grüße\r\n\r\nbody\r\n".encode()
    dsn = build(original=original)
    assert parts(parse(dsn))[2].get_content_type() == "message/global"
    assert raw_bodies(dsn)[2] == original


def test_size_bound_switches_to_the_header_section() -> None:
    original = ORIGINAL + b"x" * 900 + b"\r\n"
    dsn = build(original=original, max_original_size=len(original) - 1)
    attached = parts(parse(dsn))[2]
    assert attached.get_content_type() == "text/rfc822-headers"
    header_section = ORIGINAL[: ORIGINAL.index(b"\r\n\r\n") + 2]
    assert raw_bodies(dsn)[2] == header_section
    assert "header is attached" in text_of(parts(parse(dsn))[0])
    assert build(original=original, max_original_size=len(original)).message.count(b"x" * 900)


def test_header_section_over_the_bound_is_cut_at_a_line_end() -> None:
    dsn = build(max_original_size=40)
    assert raw_bodies(dsn)[2] == b"From: Alice <alice@example.org>\r\n"
    no_room = build(max_original_size=10)
    assert len(parts(parse(no_room))) == 2


def test_utf8_header_section_is_message_global_headers() -> None:
    original = "Subject: Grüße\r\n\r\n".encode() + b"y" * 100 + b"\r\n"
    dsn = build(original=original, max_original_size=50)
    assert parts(parse(dsn))[2].get_content_type() == "message/global-headers"
    assert raw_bodies(dsn)[2] == "Subject: Grüße\r\n".encode()


@pytest.mark.parametrize(
    "original",
    [
        ORIGINAL + b"bare\nline feed\r\n",
        ORIGINAL + b"bare\rcarriage return\r\n",
        ORIGINAL + b"nul \x00 byte\r\n",
        ORIGINAL + b"z" * 999 + b"\r\n",
    ],
)
def test_unclean_body_sends_only_the_header_section(original: bytes) -> None:
    dsn = build(original=original)
    assert parts(parse(dsn))[2].get_content_type() == "text/rfc822-headers"
    assert_wire_safe(dsn)


def test_unclean_header_section_is_left_out() -> None:
    dsn = build(original=b"Subject: bare\nLF\r\n\r\nbody\r\n")
    assert [p.get_content_type() for p in parts(parse(dsn))] == [
        "text/plain",
        "message/delivery-status",
    ]
    assert "your message" not in text_of(parts(parse(dsn))[0])
    assert_wire_safe(dsn)


def test_delayed_notice() -> None:
    dsn = build(notices=[DELAYED], will_retry_until=RETRY_UNTIL)
    message = parse(dsn)
    assert message["Subject"] == "Delayed Mail (still being retried)"
    block = status_blocks(dsn)[1]
    assert block["Action"] == "delayed"
    assert block["Will-Retry-Until"] == "Sun, 19 Nov 2023 22:13:20 +0000"
    assert "Diagnostic-Code" not in block
    assert "Remote-MTA" not in block
    text = text_of(parts(message)[0])
    assert "keep trying until Sun, 19 Nov 2023 22:13:20 +0000" in text
    # A delay report returns the header section only: the message is still on its way.
    assert parts(message)[2]["Content-Description"] == "Delayed message"
    assert parts(message)[2].get_content_type() == "text/rfc822-headers"
    assert raw_bodies(dsn)[2] == ORIGINAL[: ORIGINAL.index(b"\r\n\r\n") + 2]


def test_delayed_notice_without_retry_limit_has_no_will_retry_until() -> None:
    assert "Will-Retry-Until" not in status_blocks(build(notices=[DELAYED]))[1]


def test_mixed_notices_report_failure_and_retry_only_on_delayed() -> None:
    dsn = build(notices=[FAILED, DELAYED], will_retry_until=RETRY_UNTIL)
    assert parse(dsn)["Subject"] == "Undelivered Mail Returned to Sender"
    _, failed, delayed = status_blocks(dsn)
    assert "Will-Retry-Until" not in failed
    assert "Will-Retry-Until" in delayed
    assert "still being tried until" in text_of(parts(parse(dsn))[0])


def test_smtputf8_recipient_uses_the_utf8_address_type() -> None:
    notice = RecipientNotice("пользователь@пример.рф", "failed", "5.1.1", None, None, None)
    dsn = build(notices=[notice, FAILED])
    assert (dsn.smtputf8, dsn.eight_bit) == (True, True)
    message = parse(dsn)
    assert message.get_param("report-type") == "global-delivery-status"
    assert parts(message)[1].get_content_type() == "message/global-delivery-status"
    blocks = status_blocks(dsn)
    assert blocks[1]["Final-Recipient"] == "utf-8; пользователь@пример.рф"
    assert blocks[2]["Final-Recipient"] == "rfc822; bob@example.net"
    assert_wire_safe(dsn)


def test_smtputf8_sender_is_written_raw() -> None:
    dsn = build(original_sender="ünïcode@example.org")
    assert dsn.smtputf8
    message = Parser(policy=policy.default).parsestr(dsn.message.decode("utf-8"))
    assert message["To"].addresses[0].addr_spec == "ünïcode@example.org"
    assert b"\r\nTo: <\xc3\xbcn\xc3\xafcode@example.org>\r\n" in dsn.message


def test_non_ascii_reply_is_escaped_in_an_ascii_report() -> None:
    notice = RecipientNotice("bob@example.net", "failed", "5.7.1", "mx", "550 refusé", None)
    dsn = build(notices=[notice])
    assert not dsn.smtputf8
    assert status_blocks(dsn)[1]["Diagnostic-Code"] == "smtp; 550 refus\\x{E9}"
    assert raw_bodies(dsn)[1].isascii()
    assert "        550 refusé\n" in text_of(parts(parse(dsn))[0])


@pytest.mark.parametrize(
    "diagnostic",
    [
        "550 no\r\nContent-Type: text/html\r\n\r\n<script>",
        "550 no\r\n--{boundary}\r\nContent-Type: text/html\r\n\r\nevil\r\n--{boundary}--",
        "550 " + "A" * 5000,
        "550 " + "word " * 2000,
        "550 \x00\x07\x1b[31mred\x7f\x85\u2028\u202eevil\x0c\x0b done",
        b"550 \xff\xfe caf\xe9 \xc3".decode("utf-8", "surrogateescape"),
        b"550 caf\xe9 latin-1".decode("latin-1"),
        "\r\n\r\n\r\n",
        "550 a\rFinal-Recipient: rfc822; mallory@example.com",
    ],
)
def test_hostile_diagnostic_cannot_break_structure(diagnostic: str) -> None:
    boundary = parse(build()).get_boundary()
    hostile = diagnostic.replace("{boundary}", str(boundary))
    notice = RecipientNotice("bob@example.net", "failed", "5.1.1", "mx\r\nX: y", hostile, NOW)
    dsn = build(notices=[notice])
    assert_wire_safe(dsn)
    message = parse(dsn)
    assert not message.defects
    assert [p.get_content_type() for p in parts(message)] == [
        "text/plain",
        "message/delivery-status",
        "message/rfc822",
    ]
    assert raw_bodies(dsn)[2] == ORIGINAL
    _, block = status_blocks(dsn)
    assert set(block) <= {
        "Final-Recipient",
        "Action",
        "Status",
        "Remote-MTA",
        "Diagnostic-Code",
        "Last-Attempt-Date",
    }
    assert block["Final-Recipient"] == "rfc822; bob@example.net"
    assert block["Remote-MTA"] == "dns; mx??X:?y"
    reply = block.get("Diagnostic-Code", "smtp; ").removeprefix("smtp; ")
    assert len(reply) <= MAX_DIAGNOSTIC * 10  # escaped form; the cap is on characters
    assert re.search(r"[\x00-\x1f\x7f]", reply) is None
    text = text_of(parts(message)[0])
    assert re.search(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u202e\ud800-\udfff]", text) is None
    # The boundary never appears inside the content, and every reply line is indented.
    used = message.get_boundary()
    assert used is not None
    assert used not in text
    for line in text.splitlines():
        assert not line.startswith(("--", "Content-Type", "Final-Recipient"))


def test_reply_is_capped_at_max_diagnostic_characters() -> None:
    notice = RecipientNotice("bob@example.net", "failed", "5.1.1", None, "5" * 5000, None)
    block = status_blocks(build(notices=[notice]))[1]
    reply = block["Diagnostic-Code"].removeprefix("smtp; ").replace(" ", "")
    assert len(reply) == MAX_DIAGNOSTIC
    assert reply.endswith("...")


def test_boundary_avoids_text_that_occurs_in_the_original() -> None:
    first = parse(build()).get_boundary()
    assert first is not None
    original = ORIGINAL + f"--{first}\r\n--{first}--\r\n".encode()
    dsn = build(original=original)
    assert parse(dsn).get_boundary() != first
    assert raw_bodies(dsn)[2] == original
    assert len(parts(parse(dsn))) == 3


def test_addresses_with_control_characters_are_neutralised() -> None:
    notice = RecipientNotice("bob@x\r\nBcc: eve@y", "failed", "5.1.1", None, None, None)
    dsn = build(notices=[notice], original_sender="alice@x\r\nBcc: eve@y")
    message = parse(dsn)
    assert "Bcc" not in message
    assert status_blocks(dsn)[1]["Final-Recipient"] == "rfc822; bob@x??Bcc: eve@y"
    assert_wire_safe(dsn)


@pytest.mark.parametrize("sender", ["", "<>"])
def test_no_bounce_for_a_bounce(sender: str) -> None:
    with pytest.raises(ValueError, match="null sender"):
        build(original_sender=sender)


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"notices": []}, "at least one"),
        ({"notices": [RecipientNotice("x@y", "expanded", "2.0.0", None, None, None)]}, "action"),
        ({"notices": [dataclasses.replace(FAILED, original_recipient="rfc822")]}, "ORCPT"),
        ({"notices": [dataclasses.replace(FAILED, original_recipient="a b;x")]}, "ORCPT"),
        ({"notices": [dataclasses.replace(FAILED, original_recipient="rfc822;a+")]}, "ORCPT"),
        ({"envelope_id": "a\r\nb"}, "envelope id"),
        ({"notices": [RecipientNotice("x@y", "failed", "5.1", None, None, None)]}, "status"),
        ({"notices": [RecipientNotice("", "failed", "5.1.1", None, None, None)]}, "recipient"),
        ({"reporting_host": "mail example"}, "reporting host"),
        ({"queue_id": "a\r\nb"}, "queue id"),
        ({"message_id": "<a b>"}, "message id"),
    ],
)
def test_caller_errors_are_refused(overrides: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        build(**overrides)


_ANY_TEXT = st.text(st.one_of(st.characters(), st.characters(categories=["Cs"])), max_size=1500)
_HOSTILE = st.sampled_from(["\r\n", "\r", "\n", "--", "Content-Type: x\r\n", "\x00", "\u2028"])
_DIAGNOSTIC = st.lists(st.one_of(_ANY_TEXT, _HOSTILE), max_size=6).map("".join)
_RECIPIENT = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=300)


@settings(deadline=None, max_examples=150)
@given(
    diagnostics=st.lists(st.one_of(st.none(), _DIAGNOSTIC), min_size=1, max_size=3),
    recipients=st.lists(_RECIPIENT, min_size=3, max_size=3),
    remote=st.one_of(st.none(), st.text(max_size=300)),
    delayed=st.booleans(),
)
def test_any_reply_or_recipient_keeps_the_message_well_formed(
    diagnostics: list[str | None], recipients: list[str], remote: str | None, delayed: bool
) -> None:
    notices = [
        RecipientNotice(rcpt, "delayed" if delayed else "failed", "4.4.1", remote, diag, NOW)
        for rcpt, diag in zip(recipients, diagnostics, strict=False)
    ]
    dsn = build(notices=notices, will_retry_until=RETRY_UNTIL)
    assert_wire_safe(dsn)
    message = parse(dsn)
    assert not message.defects
    assert len(parts(message)) == 3
    returned = ORIGINAL[: ORIGINAL.index(b"\r\n\r\n") + 2] if delayed else ORIGINAL
    assert raw_bodies(dsn)[2] == returned
    blocks = status_blocks(dsn)
    assert len(blocks) == 1 + len(notices)
    written = [block["Final-Recipient"].partition("; ") for block in blocks[1:]]
    assert dsn.smtputf8 == (not all(address.isascii() for _, _, address in written))
    for kind, _, address in written:
        assert kind == ("rfc822" if address.isascii() else "utf-8")
    for block in blocks[1:]:
        assert block["Action"] == ("delayed" if delayed else "failed")
        assert ("Will-Retry-Until" in block) == delayed
        reply = block.get("Diagnostic-Code", "smtp; ").removeprefix("smtp; ")
        assert re.search(r"[\x00-\x1f\x7f-\x9f]", reply) is None


def test_overlong_address_is_cut_on_a_character_boundary() -> None:
    recipient = "é" * 300 + "@example.net"  # 612 octets
    notice = RecipientNotice(recipient, "failed", "5.1.1", None, None, None)
    dsn = build(notices=[notice])
    written = status_blocks(dsn)[1]["Final-Recipient"].removeprefix("utf-8; ")
    assert written == "é" * 256
    assert_wire_safe(dsn)


def test_original_without_header_section_over_the_bound_is_left_out() -> None:
    original = b"\r\n" + b"body only\r\n" * 20
    dsn = build(original=original, max_original_size=100)
    assert len(parts(parse(dsn))) == 2
    small = build(original=original)
    assert raw_bodies(small)[2] == original


# --- the sender's requests: RFC 3461 (RET, ENVID, NOTIFY=SUCCESS, ORCPT), RFC 8689 ---

RELAYED = RecipientNotice(
    recipient="dave@example.net",
    action="relayed",
    status="2.0.0",
    remote_mta="mx1.example.net",
    diagnostic="250 2.0.0 Ok: queued as 42",
    last_attempt=NOW - 30,
    original_recipient="rfc822;Dave+2BLists@example.net",
)


def test_relay_report_for_notify_success() -> None:
    dsn = build(notices=[RELAYED], envelope_id="QQ314159")
    message = parse(dsn)
    assert message["Subject"] == "Successful Mail Delivery Report"
    head, block = status_blocks(dsn)
    assert head["Original-Envelope-Id"] == "QQ314159"
    assert next(iter(head)) == "Original-Envelope-Id"  # RFC 3464 2.2: before Reporting-MTA
    assert block["Original-Recipient"] == "rfc822; Dave+Lists@example.net"
    assert list(block)[:2] == ["Original-Recipient", "Final-Recipient"]
    assert block["Action"] == "relayed"
    assert block["Status"] == "2.0.0"
    text = text_of(parts(message)[0])
    assert "<dave@example.net>: relayed (status 2.0.0)." in text
    assert "sends no delivery reports" in text
    assert "could not be delivered" not in text
    assert parts(message)[2]["Content-Description"] == "Relayed message"
    assert parts(message)[2].get_content_type() == "text/rfc822-headers"
    assert_wire_safe(dsn)


def test_ret_hdrs_returns_only_the_header_section_of_a_failure() -> None:
    full = build(return_content="FULL")
    assert parts(parse(full))[2].get_content_type() == "message/rfc822"
    headers = build(return_content="HDRS")
    assert parts(parse(headers))[2].get_content_type() == "text/rfc822-headers"
    assert b"See you at noon." not in headers.message


def test_a_requiretls_message_is_reported_redacted() -> None:
    original = ORIGINAL.replace(b"Subject: lunch\r\n", b"Subject: the merger,\r\n\tsecret\r\n")
    dsn = build(original=original, redact=True, return_content="FULL")
    attached = raw_bodies(dsn)[2]
    assert parts(parse(dsn))[2].get_content_type() == "text/rfc822-headers"
    assert b"merger" not in dsn.message
    assert b"secret" not in dsn.message
    assert b"See you at noon." not in dsn.message
    assert attached == (
        b"From: Alice <alice@example.org>\r\n"
        b"To: bob@example.net\r\n"
        b"Message-ID: <m1@example.org>\r\n"
    )
    assert_wire_safe(dsn)

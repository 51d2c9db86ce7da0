"""Delivery status notifications (RFC 3464 bounces, delay warnings, relay reports) as bytes.

The report is a multipart/report (RFC 6522): a human explanation, the machine-readable
delivery status, and the original message (or its header section) copied byte for byte. When
an envelope address is non-ASCII the report uses RFC 6533: message/global-delivery-status with
"utf-8" address types, and the DSN must be sent with SMTPUTF8. An original whose header
section is non-ASCII travels as message/global (or message/global-headers). `build_dsn` is
pure (no I/O, no clock: the times are passed in) and refuses a DSN to the null sender (a bounce
is never bounced); `DsnWriter` signs a built DSN and queues it like any other message. The
sender's RFC 3461 requests shape it: ENVID and each ORCPT are echoed, RET=HDRS returns only the
header section (delay and relay reports always do). A message sent with REQUIRETLS (RFC 8689)
may not travel back over a path without TLS: its report is redacted (header section only, no
Subject) and so goes like any other report.

Security: the remote reply (`RecipientNotice.diagnostic`) and the remote MTA's name come from
the network, and the original message from the client. Reply text loses control characters
(line breaks end a line, lone surrogates become U+FFFD), is capped at 1000 characters, folded
into short lines and always written indented, so it can neither start a header field nor a
MIME boundary line; the boundary is chosen so that it occurs in no part. Addresses and host
names show control characters as "?" and are capped (these rules live in sendgate.text). The
original is copied only when it is clean 8BITMIME text (CRLF lines of at most 998 octets, no
NUL) and within `max_original_size`; otherwise only its header section (truncated to that size
at a line end), or nothing.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from sendgate.dkim.signer import DkimError, DkimSigner
from sendgate.headers import header_section
from sendgate.smtp.address import is_host_name
from sendgate.smtp.dsn import is_envelope_id, original_recipient
from sendgate.store.envelope import Envelope
from sendgate.store.queue import QueueStore
from sendgate.text import dsn_address, dsn_ascii, dsn_lines, header_host, mail_date

BOUNCE_USER = "MAILER-DAEMON"  # the envelope's `user` for messages sendgate itself sends
MAX_DIAGNOSTIC = 1000  # characters of one remote reply kept in the report
_MAX_ADDRESS = 512  # octets; RFC 5321 paths are at most 256, so this only cuts junk
_MAX_HOST = 255
_MAX_LINE = 998  # RFC 5322 section 2.1.1
_WRAP = 72  # octets of reply text per output line
_ACTIONS = frozenset({"failed", "delayed", "relayed"})
_STATUS = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}")
_VERBS = {"failed": "could not be delivered", "delayed": "is delayed", "relayed": "relayed"}
_TOKEN = re.compile(r"[\x21-\x3b\x3d\x3f-\x7e]+")  # printable ASCII except "<" and ">"


@dataclass(frozen=True, slots=True)
class RecipientNotice:
    """What happened to one recipient: the DSN's per-recipient block."""

    recipient: str  # envelope recipient (may be an SMTPUTF8 address)
    action: str  # "failed" | "delayed" | "relayed"
    status: str  # enhanced status code, e.g. "5.1.1", "4.4.1", "4.4.7" (expired), "2.0.0"
    remote_mta: str | None  # host name that gave the reply, if any
    diagnostic: str | None  # the remote reply as received, lines joined with "\n"
    last_attempt: float | None  # unix time
    original_recipient: str | None = None  # the sender's ORCPT, "addr-type;xtext"


@dataclass(frozen=True, slots=True)
class Dsn:
    """A complete notification message and the SMTP extensions its transfer needs."""

    message: bytes  # complete CRLF message, ready for the spool
    eight_bit: bool  # needs BODY=8BITMIME
    smtputf8: bool  # needs SMTPUTF8 (non-ASCII recipient or sender address)


def build_dsn(
    *,
    reporting_host: str,
    queue_id: str,
    original_sender: str,
    received_at: float,
    notices: Sequence[RecipientNotice],
    original: bytes,
    now: float,
    message_id: str,
    will_retry_until: float | None = None,
    max_original_size: int = 256 * 1024,
    envelope_id: str | None = None,
    return_content: str | None = None,
    redact: bool = False,
) -> Dsn:
    """Build the DSN for `notices` about message `queue_id`, addressed to `original_sender`.

    `message_id` may be given with or without its angle brackets. `envelope_id` and
    `return_content` are the sender's ENVID (decoded) and RET; `redact` returns the header
    section without its Subject and nothing of the body. ValueError for the null sender, no
    notices, an unknown action or a malformed status, host, id or ORCPT (caller bugs).
    """
    if original_sender in ("", "<>"):
        raise ValueError("no DSN for the null sender: a bounce is never bounced")
    if not notices:
        raise ValueError("a DSN needs at least one recipient notice")
    host = reporting_host
    if not is_host_name(host):
        raise ValueError(f"malformed reporting host {host!r}")
    _checked(queue_id, _TOKEN, "queue id")
    msg_id = _checked(message_id.removeprefix("<").removesuffix(">"), _TOKEN, "message id")
    for notice in notices:
        if notice.action not in _ACTIONS:
            raise ValueError(f"unknown DSN action {notice.action!r}")
        _checked(notice.status, _STATUS, "status")
        if not notice.recipient:
            raise ValueError("empty recipient in a DSN notice")
        if notice.original_recipient is not None:
            _original_recipient(notice.original_recipient)
    if envelope_id is not None and not is_envelope_id(envelope_id):
        raise ValueError(f"malformed envelope id {envelope_id!r}")

    sender = dsn_address(original_sender, _MAX_ADDRESS)
    recipients = [dsn_address(notice.recipient, _MAX_ADDRESS) for notice in notices]
    smtputf8 = not sender.isascii() or not all(r.isascii() for r in recipients)
    failed = any(notice.action == "failed" for notice in notices)
    delayed = any(notice.action == "delayed" for notice in notices)
    retry_until = will_retry_until if delayed else None

    whole = failed and return_content != "HDRS" and not redact
    attached = _attachment(original, max_original_size, whole=whole, redact=redact)
    if attached is None:
        note = "The details for each recipient follow."
    elif attached[0] in ("message/rfc822", "message/global"):
        note = "The details for each recipient follow; your message is attached."
    else:
        note = "The details for each recipient follow; your message's header is attached."
    text = _human_text(host, notices, recipients, retry_until, note)
    status = _status_fields(
        host, queue_id, envelope_id, received_at, notices, recipients, retry_until, utf8=smtputf8
    )
    bodies = [text, status] + ([attached[1]] if attached else [])
    boundary = _boundary(bodies, f"{queue_id} {msg_id}".encode())
    status_type = "global-delivery-status" if smtputf8 else "delivery-status"
    if failed:
        subject, noun = "Undelivered Mail Returned to Sender", "Undelivered"
    elif delayed:
        subject, noun = "Delayed Mail (still being retried)", "Delayed"
    else:
        subject, noun = "Successful Mail Delivery Report", "Relayed"

    header = [
        f"From: Mail Delivery System <MAILER-DAEMON@{host}>",
        f"To: <{sender}>",
        f"Subject: {subject}",
        f"Date: {mail_date(now)}",
        f"Message-ID: <{msg_id}>",
        "MIME-Version: 1.0",
        "Auto-Submitted: auto-replied",
        f"Content-Type: multipart/report; report-type={status_type};",
        f' boundary="{boundary}"',
    ]
    parts = [
        _part("text/plain; charset=utf-8", "Notification", text),
        _part(f"message/{status_type}", "Delivery report", status),
    ]
    if attached:
        parts.append(_part(attached[0], f"{noun} message", attached[1]))
    if not all(body.isascii() for body in bodies):
        header.append("Content-Transfer-Encoding: 8bit")

    delimiter = b"\r\n--" + boundary.encode("ascii")
    out = [crlf_lines(header), b"\r\nThis is a MIME-formatted delivery status notification.\r\n"]
    for part in parts:
        out += [delimiter, b"\r\n", part]
    out += [delimiter, b"--\r\n"]
    message = b"".join(out)
    return Dsn(message=message, eight_bit=not message.isascii(), smtputf8=smtputf8)


@dataclass(frozen=True, slots=True)
class QueuedDsn:
    """A DSN that is now queued, and why it went out unsigned if it did."""

    envelope: Envelope
    signing_problem: str | None


class DsnWriter:
    """Builds, signs and queues DSNs for this host (blocking: run it in the I/O pool)."""

    def __init__(self, queue: QueueStore, hostname: str, signer: DkimSigner | None) -> None:
        self._queue = queue
        self._hostname = hostname
        self._signer = signer

    def write(
        self,
        original: Envelope,
        notices: Sequence[RecipientNotice],
        message: bytes,
        now: float,
        retry_until: float | None,
    ) -> QueuedDsn:
        """Queue the DSN about `original` (whose bytes are `message`) to its sender.

        Raises SpoolError when it cannot be queued; the caller keeps those recipients owed.
        """
        queue_id = self._queue.new_id()
        dsn = build_dsn(
            reporting_host=self._hostname,
            queue_id=original.queue_id,
            original_sender=original.sender,
            received_at=original.received_at,
            notices=notices,
            original=message,
            now=now,
            message_id=f"{queue_id}@{self._hostname}",
            will_retry_until=retry_until,
            envelope_id=original.envid,
            return_content=original.ret,
            redact=original.requiretls,
        )
        return self.queue_message(queue_id, original.sender, dsn.message, now, dsn.smtputf8)

    def queue_message(
        self, queue_id: str, recipient: str, message: bytes, now: float, smtputf8: bool
    ) -> QueuedDsn:
        """Sign `message` for the host name (when it has a key) and queue it to `recipient`.

        The way sendgate sends its own messages (DSNs, sign-in notices): from the null sender,
        as BOUNCE_USER, so that nothing answers them. `queue_id` comes from the queue's
        `new_id`. Raises SpoolError when it cannot be queued.
        """
        data, problem = message, None
        if self._signer is not None:
            try:
                data = self._signer.sign(data, self._hostname) + data
            except DkimError as exc:
                problem = str(exc)
        envelope = Envelope(
            queue_id=queue_id,
            sender="",
            recipients=(recipient,),
            user=BOUNCE_USER,
            received_at=now,
            size=len(data),
            smtputf8=smtputf8,
            body="7BIT" if data.isascii() else "8BITMIME",
        )
        self._queue.put(envelope, data)
        return QueuedDsn(envelope, problem)


def _checked(value: str, pattern: re.Pattern[str], what: str) -> str:
    if not pattern.fullmatch(value) or len(value) > _MAX_HOST:
        raise ValueError(f"malformed {what} {value!r}")
    return value


def _clean_host(name: str | None) -> str | None:
    return None if name is None else header_host(name, "?") or None


def _reply_lines(diagnostic: str | None) -> list[str]:
    """The remote reply as clean, non-empty lines with single spaces, capped in total length."""
    if diagnostic is None:
        return []
    joined = "\n".join(dsn_lines(diagnostic))
    if len(joined) > MAX_DIAGNOSTIC:
        joined = joined[: MAX_DIAGNOSTIC - 3].rstrip() + "..."
    return [line for line in joined.split("\n") if line]


def wrap(line: str, width: int) -> list[str]:
    """Split a clean line at spaces into pieces of at most `width` octets; long words are cut."""
    chunks: list[str] = []
    for word in line.split(" "):
        current, size = "", 0
        for char in word:
            octets = len(char.encode("utf-8"))
            if size + octets > width:
                chunks.append(current)
                current, size = "", 0
            current += char
            size += octets
        chunks.append(current)
    pieces: list[str] = []
    current = ""
    for chunk in chunks:
        candidate = f"{current} {chunk}" if current else chunk
        if len(candidate.encode("utf-8")) <= width:
            current = candidate
        else:
            pieces.append(current)
            current = chunk
    if current:
        pieces.append(current)
    return pieces


def _human_text(
    host: str,
    notices: Sequence[RecipientNotice],
    recipients: Sequence[str],
    retry_until: float | None,
    note: str,
) -> bytes:
    until = f" until {mail_date(retry_until)}" if retry_until is not None else ""
    lines = [f"This is the mail system at {host}.", ""]
    actions = {notice.action for notice in notices}
    if "failed" in actions:
        lines.append("Your message could not be delivered to one or more recipients.")
        if "delayed" in actions:
            lines.append(f"Delivery to the others is still being tried{until}.")
    elif "delayed" in actions:
        lines.append("Your message has not been delivered yet to one or more recipients.")
        lines.append(f"The mail system will keep trying{until}; you need not send it again.")
    if "relayed" in actions:
        lines.append(
            "Your message was passed on to the server of the recipients marked relayed below; "
            "that server sends no delivery reports, so this is the last report about them."
        )
    lines += [note, ""]
    for notice, recipient in zip(notices, recipients, strict=True):
        verb = _VERBS[notice.action]
        lines.append(f"<{recipient}>: {verb} (status {notice.status}).")
        reply = _reply_lines(notice.diagnostic)
        if reply:
            remote = _clean_host(notice.remote_mta)
            lines.append(f"    {remote or 'The remote server'} replied:")
            lines += ["        " + piece for line in reply for piece in wrap(line, _WRAP)]
        else:
            lines.append("    No reply from a remote server was received.")
        lines.append("")
    return crlf_lines(lines)


def _status_fields(
    host: str,
    queue_id: str,
    envelope_id: str | None,
    received_at: float,
    notices: Sequence[RecipientNotice],
    recipients: Sequence[str],
    retry_until: float | None,
    *,
    utf8: bool,
) -> bytes:
    head = [] if envelope_id is None else [f"Original-Envelope-Id: {envelope_id}"]
    blocks = [
        [
            *head,
            f"Reporting-MTA: dns; {host}",
            f"X-Sendgate-Queue-ID: {queue_id}",
            f"Arrival-Date: {mail_date(received_at)}",
        ]
    ]
    for notice, recipient in zip(notices, recipients, strict=True):
        kind = "rfc822" if recipient.isascii() else "utf-8"
        block = []
        if notice.original_recipient is not None:
            block.append("Original-Recipient: " + _original_recipient(notice.original_recipient))
        block += [
            f"Final-Recipient: {kind}; {recipient}",
            f"Action: {notice.action}",
            f"Status: {notice.status}",
        ]
        remote = _clean_host(notice.remote_mta)
        if remote:
            block.append(f"Remote-MTA: dns; {remote}")
        reply = _reply_lines(notice.diagnostic)
        if not utf8:
            reply = [dsn_ascii(line) for line in reply]
        # Each reply line and each wrapped piece becomes a folded continuation line.
        pieces = [piece for line in reply for piece in wrap(line, _WRAP)]
        if pieces:
            block.append("Diagnostic-Code: smtp; " + "\r\n ".join(pieces))
        if notice.last_attempt is not None:
            block.append(f"Last-Attempt-Date: {mail_date(notice.last_attempt)}")
        if notice.action == "delayed" and retry_until is not None:
            block.append(f"Will-Retry-Until: {mail_date(retry_until)}")
        blocks.append(block)
    return b"\r\n".join(crlf_lines(block) for block in blocks)


def _attachment(
    original: bytes, max_size: int, *, whole: bool, redact: bool
) -> tuple[str, bytes] | None:
    """Content type and body for the original: whole (if `whole` and it fits), header section
    only (without Subject when `redact`), or nothing."""
    headers = header_section(original)
    if whole and len(original) <= max_size and _is_clean(original):
        return ("message/rfc822" if headers.isascii() else "message/global"), original
    if redact:
        headers = _without_subject(headers)
    if len(headers) > max_size:
        cut = headers.rfind(b"\r\n", 0, max_size - 1)
        headers = headers[: cut + 2] if cut >= 0 else b""
    if not headers or not _is_clean(headers):
        return None
    return ("text/rfc822-headers" if headers.isascii() else "message/global-headers"), headers


def _without_subject(headers: bytes) -> bytes:
    """The header section without its Subject field(s), folded lines included."""
    kept: list[bytes] = []
    dropping = False
    for line in headers.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        dropping = line.lower().startswith(b"subject:")
        if not dropping:
            kept.append(line)
    return b"\r\n".join(kept)


def _original_recipient(orcpt: str) -> str:
    """The Original-Recipient field's value for an ORCPT "addr-type;xtext": the address
    decoded (RFC 3461 6.3); ValueError when malformed."""
    parsed = original_recipient(orcpt)
    if parsed is None:
        raise ValueError(f"malformed ORCPT {orcpt!r}")
    kind, address = parsed
    return f"{kind}; {dsn_address(address, _MAX_ADDRESS)}"


def _is_clean(data: bytes) -> bool:
    """Whether `data` may travel as 8BITMIME text unchanged: CRLF lines <= 998 octets, no NUL."""
    crlf = data.count(b"\r\n")
    if b"\0" in data or data.count(b"\r") != crlf or data.count(b"\n") != crlf:
        return False
    return len(data) <= _MAX_LINE or max(map(len, data.split(b"\r\n"))) <= _MAX_LINE


def _boundary(bodies: Sequence[bytes], seed: bytes) -> str:
    """A boundary that occurs in no body (deterministic, so the output is reproducible)."""
    counter = 0
    while True:
        digest = hashlib.sha256(seed + counter.to_bytes(8, "big")).hexdigest()[:32]
        boundary = f"sendgate-dsn-{digest}"
        if not any(boundary.encode("ascii") in body for body in bodies):
            return boundary
        counter += 1


def _part(content_type: str, description: str, body: bytes) -> bytes:
    headers = [
        f"Content-Type: {content_type}",
        f"Content-Description: {description}",
        "Content-Transfer-Encoding: " + ("7bit" if body.isascii() else "8bit"),
    ]
    return crlf_lines(headers) + b"\r\n" + body


def crlf_lines(lines: Sequence[str]) -> bytes:
    """Lines joined and terminated with CRLF; only deliberate folds ("\r\n ") are inside."""
    return "".join(line + "\r\n" for line in lines).encode("utf-8")

"""Message header checks and RFC 6409 section 8 fix-ups: Received, Message-ID and Date.

Security: the content is the client's message. Only the header block is parsed (the body is
never scanned again here); header field lines must be `name: value` or folded continuations,
and From:/Sender: go through the one strict address parser in `smtp.address`. What is added is
built from trusted values only; the client's EHLO name is reduced to a safe character set first.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

from sendgate.headers import header_end
from sendgate.smtp.address import Address, AddressError, parse_header_mailboxes
from sendgate.smtp.events import TlsInfo
from sendgate.store.envelope import UNIQUE
from sendgate.text import header_host

_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+")
_WANTED = (b"from", b"sender", b"message-id", b"date")


class HeaderError(ValueError):
    """The header block is malformed or a From:/Sender: field is unusable."""


@dataclass(frozen=True, slots=True)
class HeaderSummary:
    """What the MSA rules need from the header: From/Sender mailboxes and what is missing."""

    from_: tuple[Address, ...]
    sender: tuple[Address, ...]
    has_message_id: bool
    has_date: bool
    header_end: int  # offset of the empty line ending the header (or len(content))


def summarize(content: bytes, *, smtputf8: bool) -> HeaderSummary:
    """Parse the header block once; HeaderError on malformed lines or unusable From/Sender."""
    end = header_end(content)
    found: dict[bytes, list[bytes]] = {name: [] for name in _WANTED}
    current: bytes | None = None  # the wanted field whose folded lines are being collected
    started = False
    lines = content[:end].split(b"\r\n")
    if not lines[-1]:
        lines.pop()  # the block normally ends with CRLF; a BDAT message may not, so keep it then
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if not started:
                raise HeaderError("continuation line before any header field")
            if current is not None:
                found[current][-1] += line  # unfolding keeps the leading white space
            continue
        name, colon, value = line.partition(b":")
        if not colon or not _FIELD_NAME.fullmatch(name):
            raise HeaderError("malformed header line")
        started = True
        key = name.lower()
        current = key if key in found else None
        if current is not None:
            found[key].append(value)
    return HeaderSummary(
        from_=_mailboxes("From", found[b"from"], smtputf8),
        sender=_mailboxes("Sender", found[b"sender"], smtputf8),
        has_message_id=bool(found[b"message-id"]),
        has_date=bool(found[b"date"]),
        header_end=end,
    )


def _mailboxes(name: str, values: list[bytes], smtputf8: bool) -> tuple[Address, ...]:
    if not values:
        return ()
    if len(values) > 1:
        raise HeaderError(f"more than one {name} field")
    try:
        text = values[0].decode("utf-8")
        return tuple(parse_header_mailboxes(name, text.strip(), smtputf8=smtputf8))
    except (UnicodeDecodeError, AddressError) as exc:
        raise HeaderError(f"unusable {name} field") from exc


def received_header(
    *,
    helo: str | None,
    client_ip: str | None,
    hostname: str,
    queue_id: str,
    tls: TlsInfo | None,
    authenticated: bool,
    smtputf8: bool,
    now: datetime,
) -> bytes:
    """The trace field RFC 5321 4.4 and RFC 6409 8 ask for, with the protocol per RFC 3848."""
    protocol = (
        ("UTF8SMTP" if smtputf8 else "ESMTP")
        + ("S" if tls else "")
        + ("A" if authenticated else "")
    )
    name = header_host(helo or "unknown", "_")
    source = f"from {name}" + (f" ([{client_ip}])" if client_ip else "")
    lines = [f"Received: {source}", f"\tby {hostname} (sendgate) with {protocol} id {queue_id}"]
    if tls is not None:
        lines.append(f"\t(using {tls.version} with cipher {tls.cipher} ({tls.bits} bits))")
    lines[-1] += ";"
    lines.append(f"\t{date_text(now)}")
    return ("\r\n".join(lines) + "\r\n").encode()


def new_message_id(hostname: str, queue_id: str) -> str:
    # Unique, not secret (the queue id is in it already): bits from the process's generator,
    # as the queue id's. A getrandom call on the event loop gives the GIL away to the spool's
    # thread and waits to get it back.
    return f"<{queue_id}.{UNIQUE.getrandbits(48):012x}@{hostname}>"


def fix_up(
    content: bytes,
    summary: HeaderSummary,
    received: bytes,
    *,
    hostname: str,
    queue_id: str,
    now: datetime,
) -> bytes:
    """Prepend Received; add Message-ID and Date at the end of the header when missing."""
    added = b""
    if not summary.has_message_id:
        added += f"Message-ID: {new_message_id(hostname, queue_id)}\r\n".encode()
    if not summary.has_date:
        added += f"Date: {date_text(now)}\r\n".encode()
    if not added:
        return received + content
    end = summary.header_end
    header = content[:end]
    if header and not header.endswith(b"\r\n"):
        header += b"\r\n"  # the added fields must not be glued onto an unterminated last line
    return b"".join((received, header, added, content[end:]))


def now_utc(unix: float) -> datetime:
    return datetime.fromtimestamp(unix, UTC)


def date_text(now: datetime) -> str:
    """`now` as an RFC 5322 date-time (`email.utils.format_datetime`'s text, to the second)."""
    return _date_of_second(now.replace(microsecond=0))


@functools.lru_cache(maxsize=4)
def _date_of_second(second: datetime) -> str:
    # Every message needs the text twice (Received, Date) and format_datetime takes about 4
    # us a call (timeit): it is made once per second.
    return format_datetime(second)

"""What one transaction sends: the checked envelope, the DATA payload, and the SIZE it declares.

`Job` is everything a transaction needs besides the route; `deliver` builds it once and every
attempt sends it unchanged. The helpers here decide the exact bytes on the wire.

Security: the message is sent exactly as stored, dot-stuffed only; a bare CR or LF refuses it
before any connection (`has_bare_line_ending`), so no byte we send can end the DATA section
early at a lenient peer (SMTP smuggling). Addresses go onto command lines only after the strict
parser accepted them. The peer's SIZE keyword is untrusted and parsed strictly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sendgate.smtp import xtext
from sendgate.smtp.address import AddressError, parse_path
from sendgate.smtp.dsn import RcptParameters

_NONE = RcptParameters()


@dataclass(frozen=True, slots=True)
class DsnRequest:
    """What the sender asked of delivery reports (RFC 3461), passed on to a next hop that
    offers DSN: RET and ENVID (decoded) of the message, NOTIFY and ORCPT by recipient."""

    ret: str | None = None
    envid: str | None = None
    recipients: Mapping[str, RcptParameters] = field(default_factory=dict)

    def mail_options(self) -> list[bytes]:
        options = []
        if self.ret is not None:
            options.append(b"RET=" + self.ret.encode("ascii"))
        if self.envid is not None:
            options.append(b"ENVID=" + xtext.encode(self.envid).encode("ascii"))
        return options

    def rcpt_options(self, recipient: str) -> list[bytes]:
        params = self.recipients.get(recipient, _NONE)
        options = []
        if params.notify is not None:
            options.append(b"NOTIFY=" + ",".join(params.notify).encode("ascii"))
        if params.orcpt is not None:
            options.append(b"ORCPT=" + params.orcpt.encode("ascii"))
        elif recipient.isascii():
            # RFC 3461 4.2: a first hop may add the recipient as given, as Postfix does; the
            # next hop's reports then name the address the sender used.
            options.append(b"ORCPT=rfc822;" + xtext.encode(recipient).encode("ascii"))
        return options


NO_DSN_REQUEST = DsnRequest()


@dataclass(frozen=True, slots=True)
class Job:
    """One mail transaction's content, ready for the wire."""

    helo: str
    sender: str
    recipients: tuple[str, ...]
    payload: bytes  # exactly the bytes after DATA's 354
    size: int  # the message size for SIZE (RFC 1870): before dot-stuffing
    smtputf8: bool
    eight_bit: bool
    requiretls: bool = False  # RFC 8689: verified TLS and REQUIRETLS at the next hop, or refuse
    dsn: DsnRequest = NO_DSN_REQUEST


def check_envelope(helo: str, sender: str, recipients: Sequence[str], *, smtputf8: bool) -> None:
    """Refuse arguments no caller should pass (the spool holds only parsed addresses)."""
    if not helo or not helo.isascii() or not helo.isprintable() or " " in helo:
        raise ValueError(f"HELO name {helo!r} is not a host name or address literal")
    if not recipients:
        raise ValueError("no recipients")
    if len(set(recipients)) != len(recipients):
        raise ValueError("duplicate recipients")
    # The addresses go onto command lines: only what the strict parser accepts may.
    for address, null_ok in ((sender, True), *((r, False) for r in recipients)):
        try:
            parse_path(f"<{address}>", smtputf8=smtputf8, allow_null=null_ok)
        except AddressError as exc:
            raise ValueError(f"address {address!r} is not valid: {exc}") from None


def smtp_path(prefix: bytes, address: str, encoding: str) -> bytes:
    """The argument of MAIL or RCPT, e.g. b"FROM:<a@b>" (the address was checked before)."""
    return prefix + b"<" + address.encode(encoding) + b">"


def has_bare_line_ending(message: bytes) -> bool:
    """True if `message` holds a CR not followed by LF, or an LF not preceded by CR."""
    pairs = message.count(b"\r\n")
    return message.count(b"\r") != pairs or message.count(b"\n") != pairs


def data_payload(message: bytes) -> bytes:
    """What follows DATA's 354: the message dot-stuffed, ending in CRLF, then ".\\r\\n"."""
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    stuffed = message.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return stuffed + b".\r\n"


def size_limit(parameter: str) -> int | None:
    """The limit a server's SIZE keyword announces (RFC 1870); None for none, 0 or unreadable."""
    text = parameter.strip()
    if not text or len(text) > 20 or not text.isascii() or not text.isdigit():
        return None
    return int(text) or None

"""The decisions a Session hands to the application: small frozen request nouns.

Each event waits for exactly one `Session.answer(reply)`; a positive reply (2xx/3xx) means
"accepted". Secrets are excluded from repr and message bytes are shown only by their length.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from sendgate.smtp.address import Address
from sendgate.smtp.dsn import RcptParameters
from sendgate.smtp.spill import BodySink


class NeedData(Enum):
    """The Session has nothing to decide until more bytes arrive."""

    NEED_DATA = "need_data"


NEED_DATA = NeedData.NEED_DATA


@dataclass(frozen=True, slots=True)
class TlsInfo:
    """What the I/O shell learned from a finished TLS handshake."""

    version: str
    cipher: str
    bits: int


@dataclass(frozen=True, slots=True)
class StartTls:
    """The client asked for STARTTLS; answer READY_TLS, then upgrade the transport."""


@dataclass(frozen=True, slots=True)
class AuthAttempt:
    """A finished SASL exchange; answer AUTH_OK or AUTH_FAILED (or a temporary failure)."""

    mechanism: str
    authzid: str
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class MailFrom:
    """MAIL FROM with its parameters; `sender` is None for the null reverse-path."""

    sender: Address | None
    size: int | None
    body: str
    smtputf8: bool
    ret: str | None = None  # RFC 3461 RET
    envid: str | None = None  # RFC 3461 ENVID, decoded
    requiretls: bool = False  # RFC 8689


@dataclass(frozen=True, slots=True)
class RcptTo:
    """One RCPT TO; the Session has already applied the recipient-count limit."""

    recipient: Address
    params: RcptParameters = field(default_factory=RcptParameters)


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """A complete, valid message (dot-unstuffed, CRLF) with the transaction's envelope.

    A large message arrives spilled (`sendgate.smtp.spill`): `content` is then its header
    section, with the empty line that ends it, and `spilled` holds the body, which the handler
    now owns (it commits or discards it). `rcpt_params` is empty when no recipient had RCPT
    parameters, else one entry per recipient.
    """

    sender: Address | None
    recipients: tuple[Address, ...]
    body: str
    smtputf8: bool
    content: bytes = field(repr=False)
    spilled: BodySink | None = field(default=None, repr=False, compare=False)
    spilled_size: int = 0
    ret: str | None = None
    envid: str | None = None
    requiretls: bool = False
    rcpt_params: tuple[RcptParameters, ...] = ()

    @property
    def size(self) -> int:
        return len(self.content) + self.spilled_size


Event = StartTls | AuthAttempt | MailFrom | RcptTo | MessageReceived

"""The in-memory SMTP preamble: make a Session, feed it bytes, answer its events, read replies.

Tests of the protocol core answer events with a plain function (`accept`, `answer_with`);
tests of the submission rules answer them as the I/O shell does (`shell`: STARTTLS by the shell,
everything else by a connection handler, awaited when it returns an awaitable). `feed` and
`talk` return an `Exchange`: the bytes the Session wants to send and the events it raised.
"""

from __future__ import annotations

import base64
import inspect
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sendgate.smtp import replies
from sendgate.smtp.events import AuthAttempt, Event, MailFrom, NeedData, RcptTo, StartTls, TlsInfo
from sendgate.smtp.replies import Reply
from sendgate.smtp.session import Session, SessionSettings

if TYPE_CHECKING:  # the protocol tests need nothing of the I/O shell at run time
    from sendgate.server.admission import ConnectionHandler

HOST = "mx.example.test"
TLS = TlsInfo("TLSv1.3", "TLS_AES_128_GCM_SHA256", 128)
PASSWORD = "hunter2 correct horse"  # what `plain()` sends by default; `accept` takes any
QUEUED = replies.QUEUED.with_text("queued as Q1")
_STATUS = re.compile(r"(\d{3}) (\d\.\d{1,3}\.\d{1,3})(?: |$)")

Answerer = Callable[[Event], Reply]
AsyncAnswerer = Callable[[Event], Reply | Awaitable[Reply]]


def b64(data: str | bytes) -> str:
    """Base64 of `data` (UTF-8 for text), as SASL exchanges carry it."""
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode()


def plain(username: str = "alice", password: str = PASSWORD, authzid: str = "") -> str:
    """An AUTH PLAIN response (RFC 4616): authzid NUL username NUL password, in base64."""
    return b64(f"{authzid}\0{username}\0{password}")


def accept(event: Event) -> Reply:
    """What a permissive application answers to each decision."""
    if isinstance(event, StartTls):
        return replies.READY_TLS
    if isinstance(event, AuthAttempt):
        return replies.AUTH_OK
    if isinstance(event, MailFrom):
        return replies.SENDER_OK
    if isinstance(event, RcptTo):
        return replies.RECIPIENT_OK
    return QUEUED


def answer_with(reply: Reply) -> Answerer:
    """An application that answers every decision with `reply`."""

    def answer(event: Event) -> Reply:
        return reply

    return answer


def shell(handler: ConnectionHandler, session: Session) -> AsyncAnswerer:
    """Answer as the I/O shell does: STARTTLS itself, every other decision by `handler`."""

    def answer(event: Event) -> Reply | Awaitable[Reply]:
        if isinstance(event, StartTls):
            return replies.READY_TLS
        return handler.handle(event, session)

    return answer


@dataclass(frozen=True)
class Exchange:
    """What feeding some bytes produced: the bytes to send and the events, in order."""

    output: bytes
    events: list[Event]

    @property
    def lines(self) -> list[str]:
        text = self.output.decode()
        assert text == "" or text.endswith("\r\n")
        return text.split("\r\n")[:-1]

    @property
    def finals(self) -> list[str]:
        """The last line of each reply."""
        return [line for line in self.lines if line[3:4] != "-"]

    @property
    def codes(self) -> list[str]:
        """The last line of each reply as "code" or "code enhanced-code"."""
        result = []
        for line in self.finals:
            match = _STATUS.match(line)
            result.append(f"{match[1]} {match[2]}" if match else line[:3])
        return result

    @property
    def event_names(self) -> list[str]:
        return [type(event).__name__ for event in self.events]


def respond(session: Session, answer: Answerer = accept) -> list[Event]:
    """Answer every event the Session raises from what it holds; return those events."""
    events: list[Event] = []
    while not isinstance(event := session.next_event(), NeedData):
        events.append(event)
        session.answer(answer(event))
    return events


async def respond_async(session: Session, answer: AsyncAnswerer) -> list[Event]:
    """`respond` for answers that may be awaitable (a connection handler's)."""
    events: list[Event] = []
    while not isinstance(event := session.next_event(), NeedData):
        events.append(event)
        reply = answer(event)
        if inspect.isawaitable(reply):
            reply = await reply
        session.answer(reply)
    return events


def drain(session: Session, answer: Answerer = accept) -> Exchange:
    """Answer every event the Session produces from what it already holds (no new bytes)."""
    events = respond(session, answer)
    return Exchange(session.data_to_send(), events)


def feed(session: Session, *chunks: bytes, answer: Answerer = accept) -> Exchange:
    """Give each chunk to the Session as one read, answering every event as it comes."""
    events: list[Event] = []
    output = b""
    for chunk in chunks:
        assert chunk, "an empty read means EOF"
        session.receive_data(chunk)
        events += respond(session, answer)
        output += session.data_to_send()
    return Exchange(output, events)


async def feed_async(session: Session, *chunks: bytes, answer: AsyncAnswerer) -> Exchange:
    """`feed` for answers that may be awaitable."""
    events: list[Event] = []
    output = b""
    for chunk in chunks:
        assert chunk, "an empty read means EOF"
        session.receive_data(chunk)
        events += await respond_async(session, answer)
        output += session.data_to_send()
    return Exchange(output, events)


def talk(session: Session, *lines: str, answer: Answerer = accept) -> Exchange:
    """Send command lines (CRLF added) in one read."""
    return feed(session, "".join(f"{line}\r\n" for line in lines).encode(), answer=answer)


def eof(session: Session, answer: Answerer = accept) -> Exchange:
    """The client closed: EOF, then answer what the Session still holds."""
    session.receive_data(b"")
    return drain(session, answer)


def greeting(hostname: str = HOST) -> bytes:
    """The Session's 220 banner for `hostname`."""
    return f"220 {hostname} ESMTP ready\r\n".encode()


def start(settings: SessionSettings | None = None, *, tls: bool = False) -> Session:
    """A new Session (over TLS already if `tls`, as on port 465), its greeting read and checked."""
    settings = settings or SessionSettings(HOST)
    session = Session(settings, TLS if tls else None)
    assert session.data_to_send() == greeting(settings.hostname)
    return session


def starttls(session: Session, tls: TlsInfo = TLS) -> None:
    """STARTTLS accepted (by `accept`), then the handshake done: the Session is back at INIT."""
    assert talk(session, "STARTTLS").codes == ["220 2.0.0"]
    session.tls_established(tls)


def ready(
    settings: SessionSettings | None = None, *, tls: bool = True, login: bool = True
) -> Session:
    """A Session after EHLO and, if `login`, a successful AUTH PLAIN (answered by `accept`)."""
    session = start(settings, tls=tls)
    assert talk(session, "EHLO client.example").codes == ["250"]
    if login:
        assert talk(session, f"AUTH PLAIN {plain()}").codes == ["235 2.7.0"]
    return session

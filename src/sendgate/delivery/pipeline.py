"""Pipelined commands (RFC 2920) on an outbound session that aiosmtplib set up; its socket.

aiosmtplib reads exactly one reply per command it wrote and drops whatever arrives beyond it,
so it cannot pipeline. Without pipelining a transaction costs a round trip for MAIL FROM, one
per RCPT TO and one for DATA: a write, a wake-up and a read each, on both ends. `exchange`
takes the transport over for the commands (asyncio's public `set_protocol`), writes them all at
once, reads their replies in order, and hands the transport back before the message data, so
aiosmtplib's protocol (and its flow control) carries the payload and the rest of the session.

Security: replies come from the network. A line longer than `MAX_LINE`, a reply of more than
`MAX_LINES` lines, a line that does not start with three digits and a separator, or a reply
whose lines disagree on the code raises `SMTPResponseException` with code -1, which the caller
reports as a malformed reply; nothing beyond the expected replies is kept.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections import deque
from typing import cast

from aiosmtplib import SMTPResponseException, SMTPServerDisconnected

MAX_LINE = 2048  # RFC 5321 allows 512 octets per reply line; leave room for chatty servers
MAX_LINES = 100
_LINE = re.compile(rb"([2-5][0-9][0-9])(?:([ -])(.*))?", re.DOTALL)


class _Replies(asyncio.Protocol):
    """Collects whole replies from the bytes the transport delivers."""

    def __init__(self, owner: asyncio.BaseProtocol) -> None:
        self.owner = owner
        self.replies: deque[tuple[int, str]] = deque()
        self.error: Exception | None = None
        self.waiter: asyncio.Future[None] | None = None
        self._buffer = bytearray()
        self._code = 0
        self._lines: list[str] = []

    def data_received(self, data: bytes) -> None:
        if self.error is not None:
            return
        self._buffer += data
        try:
            self._parse()
        except SMTPResponseException as exc:
            self._fail(exc)
        self._wake()

    def _parse(self) -> None:
        while (end := self._buffer.find(b"\n")) >= 0:
            # One CR before the LF, whole or not: then a line's length is judged the same
            # however the peer's bytes were cut (the check on the unended rest below allows
            # the CR too).
            cut = end - 1 if end and self._buffer[end - 1] == 0x0D else end
            line = bytes(self._buffer[:cut])
            del self._buffer[: end + 1]
            match = _LINE.fullmatch(line)
            if match is None or len(line) > MAX_LINE:
                raise SMTPResponseException(-1, "malformed reply line")
            code = int(match[1])
            if self._lines and code != self._code:
                raise SMTPResponseException(-1, "reply lines with different codes")
            self._code = code
            self._lines.append((match[3] or b"").decode("utf-8", "replace"))
            if match[2] == b"-":
                if len(self._lines) >= MAX_LINES:
                    raise SMTPResponseException(-1, "reply too long")
                continue
            self.replies.append((code, "\n".join(self._lines)))
            self._lines = []
        if len(self._buffer) > MAX_LINE + 1:  # a whole line's octets and its CR
            raise SMTPResponseException(-1, "malformed reply line")

    def eof_received(self) -> bool | None:
        self._fail(SMTPServerDisconnected("connection closed by the server"))
        self._wake()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(SMTPServerDisconnected("connection lost"))
        self._wake()
        self.owner.connection_lost(exc)  # aiosmtplib must know too: the session is gone

    def _fail(self, exc: Exception) -> None:
        if self.error is None:
            self.error = exc

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class Exchange:
    """Pipelined commands on `transport` (aiosmtplib's until now): written at once on creation."""

    def __init__(self, transport: asyncio.BaseTransport | None, commands: list[bytes]) -> None:
        if transport is None:
            raise SMTPServerDisconnected("connection lost")
        self._transport = cast(asyncio.Transport, transport)
        self._owner = transport.get_protocol()
        self._replies = _Replies(self._owner)
        transport.set_protocol(self._replies)
        self._transport.write(b"".join(command + b"\r\n" for command in commands))

    async def reply(self, timeout: float) -> tuple[int, str]:
        """The next reply: (code, text with lines joined by LF); raises as aiosmtplib would."""
        replies = self._replies
        while not replies.replies:
            if replies.error is not None:
                raise replies.error
            replies.waiter = asyncio.get_running_loop().create_future()
            async with asyncio.timeout(timeout):  # no wrapper future, unlike wait_for
                await replies.waiter
        return replies.replies.popleft()

    async def end_empty_data(self, timeout: float) -> None:
        """A DATA accepted with no recipient to send to: end it with a lone dot."""
        self._transport.write(b".\r\n")
        await self.reply(timeout)

    def finish(self) -> None:
        """Give the transport back to aiosmtplib (after the last reply that was expected)."""
        if self._transport.get_protocol() is self._replies:
            self._transport.set_protocol(self._owner)


async def open_socket(address: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection to `address`:`port` (an IP literal) within `timeout` seconds.

    Raises TimeoutError or OSError; the socket is closed on any failure.
    """
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await asyncio.wait_for(
            asyncio.get_running_loop().sock_connect(sock, (address, port)), timeout
        )
    except BaseException:
        sock.close()
        raise
    return sock

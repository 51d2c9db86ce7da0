"""A receiving SMTP server for delivery tests: aiosmtpd on a loopback address, recording messages.

Each `Receiver` listens on (address, port) with optional STARTTLS (a trustme certificate),
records every message it accepts (envelope and exact bytes), and answers according to a script:
`data_replies` is consumed one reply per DATA (then "250 OK" for ever), `reject_rcpt` maps
addresses to an error reply. With `dsn` / `requiretls` it offers those extensions
(tests.peers.smtp_extensions) and records the parameters each message came with. `received`
is a thread-safe list; `wait_for(n)` blocks on a condition, never on a sleep. Stopping it ends
the connections still open (a sender may keep idle ones cached).

Security: test code only; listens on loopback only.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiosmtpd.smtp import SMTP, Envelope, Session
from tests.peers.smtp_extensions import ExtendedSMTP
from tests.support.loopback import AsyncioServer

WAIT = 30.0


@dataclass(frozen=True, slots=True)
class Delivered:
    sender: str
    recipients: tuple[str, ...]
    content: bytes
    tls: bool
    mail_params: tuple[str, ...] = ()  # DSN / REQUIRETLS parameters of MAIL FROM, as sent
    rcpt_params: dict[str, tuple[str, ...]] = field(default_factory=dict)  # by recipient


@dataclass
class _Script:
    data_replies: list[str] = field(default_factory=list)
    reject_rcpt: dict[str, str] = field(default_factory=dict)
    hold: threading.Event | None = None  # DATA waits for this event before answering


class _Handler:
    def __init__(self, receiver: Receiver) -> None:
        self._receiver = receiver

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = self._receiver.script.reject_rcpt.get(address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        receiver = self._receiver
        receiver.data_started.set()
        hold = receiver.script.hold
        if hold is not None:
            await asyncio.get_running_loop().run_in_executor(None, hold.wait)
        with receiver.lock:
            if receiver.script.data_replies:
                reply = receiver.script.data_replies.pop(0)
            else:
                reply = "250 OK"
            if reply.startswith("250"):
                extended = server if isinstance(server, ExtendedSMTP) else None
                receiver.received.append(
                    Delivered(
                        sender=str(envelope.mail_from),
                        recipients=tuple(envelope.rcpt_tos),
                        content=bytes(envelope.original_content or b""),
                        tls=session.ssl is not None,
                        mail_params=extended.mail_params if extended else (),
                        rcpt_params=dict(extended.rcpt_params) if extended else {},
                    )
                )
            receiver.lock.notify_all()
        return reply


class Receiver(AsyncioServer):
    """aiosmtpd on `address:port`, in its own event loop on a thread; use as a context manager."""

    def __init__(
        self,
        address: str,
        port: int = 25,
        *,
        tls: ssl.SSLContext | None = None,
        data_replies: Sequence[str] = (),
        reject_rcpt: dict[str, str] | None = None,
        hold: threading.Event | None = None,
        smtputf8: bool = True,
        dsn: bool = False,
        requiretls: bool = False,
    ) -> None:
        super().__init__(f"mx-{address}")
        self.address = address
        self.port = port
        self.script = _Script(list(data_replies), dict(reject_rcpt or {}), hold)
        self.received: list[Delivered] = []
        self.lock = threading.Condition()
        self.data_started = threading.Event()
        self._tls = tls
        self._smtputf8 = smtputf8
        self._dsn = dsn
        self._requiretls = requiretls
        self._handler = _Handler(self)
        self._sock: socket.socket | None = None
        self._sessions: list[SMTP] = []  # stopping ends them: a sender may keep idle ones

    def stop(self) -> None:
        if self.script.hold is not None:
            self.script.hold.set()
        super().stop()

    def wait_for(self, count: int, timeout: float = WAIT) -> list[Delivered]:
        """Block until `count` messages were received; AssertionError on timeout."""
        with self.lock:
            if not self.lock.wait_for(lambda: len(self.received) >= count, timeout):
                raise AssertionError(f"{self.address}: {len(self.received)} of {count} messages")
            return list(self.received)

    def _bind(self) -> None:
        self._sock = socket.create_server((self.address, self.port))
        self.port = self._sock.getsockname()[1]

    def _release(self) -> None:
        if self._sock is not None:
            self._sock.close()

    async def _run_async(self) -> None:
        assert self._sock is not None
        loop = asyncio.get_running_loop()

        def session() -> SMTP:
            made = ExtendedSMTP(
                self._handler,
                dsn=self._dsn,
                requiretls=self._requiretls,
                hostname="mx.receiver.test",
                tls_context=self._tls,
                require_starttls=False,
                enable_SMTPUTF8=self._smtputf8,
                loop=loop,
            )
            self._sessions.append(made)
            return made

        server = await loop.create_server(session, sock=self._sock)
        self._serving()
        await self._stopped()
        server.close()  # accept nothing more, then end what is open
        for made in self._sessions:
            transport = made.transport
            if isinstance(transport, asyncio.Transport):
                transport.abort()
        await asyncio.sleep(0)  # abort() closes the socket in a callback it scheduled now
        await server.wait_closed()

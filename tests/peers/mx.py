"""A receiving SMTP server for delivery tests: aiosmtpd on a loopback address, recording messages.

Each `Receiver` listens on (address, port) with optional STARTTLS (a trustme certificate),
records every message it accepts (envelope and exact bytes), and answers according to a script:
`data_replies` is consumed one reply per DATA (then "250 OK" for ever), `reject_rcpt` maps
addresses to an error reply. `received` is a thread-safe list; `wait_for(n)` blocks on a
condition, never on a sleep.

Security: test code only; listens on loopback only.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

WAIT = 30.0


@dataclass(frozen=True, slots=True)
class Delivered:
    sender: str
    recipients: tuple[str, ...]
    content: bytes
    tls: bool


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
                receiver.received.append(
                    Delivered(
                        sender=str(envelope.mail_from),
                        recipients=tuple(envelope.rcpt_tos),
                        content=bytes(envelope.original_content or b""),
                        tls=session.ssl is not None,
                    )
                )
            receiver.lock.notify_all()
        return reply


class _Controller(Controller):
    """aiosmtpd's threaded controller, remembering each session so that stopping ends them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sessions: list[SMTP] = []

    def factory(self) -> SMTP:
        session: SMTP = super().factory()  # type: ignore[no-untyped-call]
        self.sessions.append(session)
        return session

    def close_sessions(self) -> None:
        """Close every client connection still open (a sender may keep idle ones cached)."""
        done = threading.Event()

        def close_all() -> None:
            if self.server is not None:
                self.server.close()  # accept nothing more, then end what is open
            for session in self.sessions:
                transport = session.transport
                if isinstance(transport, asyncio.Transport):
                    transport.abort()
            # abort() finishes in a callback it schedules now: signal after those have run.
            self.loop.call_soon(done.set)

        self.loop.call_soon_threadsafe(close_all)
        done.wait(WAIT)


class Receiver:
    """aiosmtpd on `address:port`; use as a context manager."""

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
    ) -> None:
        self.address = address
        self.port = port
        self.script = _Script(list(data_replies), dict(reject_rcpt or {}), hold)
        self.received: list[Delivered] = []
        self.lock = threading.Condition()
        self.data_started = threading.Event()
        kwargs: dict[str, Any] = {"enable_SMTPUTF8": smtputf8}
        if tls is not None:
            kwargs.update(tls_context=tls, require_starttls=False)
        self._controller = _Controller(
            _Handler(self),
            hostname=address,
            port=port,
            ready_timeout=WAIT,
            server_hostname="mx.receiver.test",
            **kwargs,
        )

    def __enter__(self) -> Receiver:
        self._controller.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.script.hold is not None:
            self.script.hold.set()
        self._controller.close_sessions()
        self._controller.stop()

    def wait_for(self, count: int, timeout: float = WAIT) -> list[Delivered]:
        """Block until `count` messages were received; AssertionError on timeout."""
        with self.lock:
            if not self.lock.wait_for(lambda: len(self.received) >= count, timeout):
                raise AssertionError(f"{self.address}: {len(self.received)} of {count} messages")
            return list(self.received)

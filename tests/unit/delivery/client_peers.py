"""Peers and helpers for the outbound client tests (test_client*, test_connections, ...).

Well-behaved peers are aiosmtpd (STARTTLS and implicit TLS with trustme certificates, AUTH,
hooks that reject recipients or answer DATA with errors); peers that must misbehave are small
hand-written asyncio servers that also record every byte they read. Each test module picks
its own loopback addresses (noted in its docstring) so that modules never collide.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import trustme
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
from tests.peers.smtp_extensions import ExtendedSMTP
from tests.support.tls import client_context, server_context

from sendgate.delivery.client import deliver
from sendgate.delivery.connections import ConnectionCache
from sendgate.delivery.payload import NO_DSN_REQUEST, DsnRequest
from sendgate.delivery.target import Outcome, Target, Timeouts, TlsRequirement

MESSAGE = b"From: sender@client.test\r\nTo: rcpt@mx.test\r\nSubject: hi\r\n\r\nHello.\r\n"
FAST = Timeouts(connect=5.0, command=5.0, data=5.0)  # bounds a failing test, never reached
OPPORTUNISTIC = TlsRequirement("opportunistic", "none")
PLAINTEXT = TlsRequirement("none", "none", reason="smarthost")
RCPTS = ("ok1@mx.test", "gone@mx.test", "later@mx.test", "ok2@mx.test")


# --- certificates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Any
    mx: Any  # trustme.LeafCert for mx.test and relay.test
    other: Any  # trustme.LeafCert for other.test only

    def server(self, leaf: Any) -> ssl.SSLContext:
        return server_context(leaf)

    def client(self) -> ssl.SSLContext:
        return client_context(self.ca)

    @staticmethod
    def der(leaf: Any) -> bytes:
        return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())

    @classmethod
    def make(cls) -> Pki:
        ca = trustme.CA()
        return cls(ca, ca.issue_cert("mx.test", "relay.test"), ca.issue_cert("other.test"))


# --- peers --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivered:
    sender: str
    recipients: tuple[str, ...]
    content: bytes
    tls: bool
    authenticated: bool
    mail_params: tuple[str, ...] = ()  # DSN / REQUIRETLS parameters (an ExtendedSMTP peer)
    rcpt_params: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass
class Handler:
    """aiosmtpd hooks that record what arrives and answer as configured."""

    rcpt: Mapping[str, str] = field(default_factory=dict)
    data_reply: str = "250 2.0.0 queued"
    mails: list[tuple[str, list[str]]] = field(default_factory=list)
    messages: list[Delivered] = field(default_factory=list)
    quits: int = 0

    async def handle_MAIL(  # noqa: N802 (aiosmtpd's hook name)
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        self.mails.append((address, list(options)))
        envelope.mail_from = address
        return "250 2.1.0 OK"

    async def handle_RCPT(  # noqa: N802
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address in self.rcpt:
            return self.rcpt[address]
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        extended = server if isinstance(server, ExtendedSMTP) else None
        self.messages.append(
            Delivered(
                envelope.mail_from,
                tuple(envelope.rcpt_tos),
                envelope.original_content,
                session.ssl is not None,
                bool(session.authenticated),
                extended.mail_params if extended else (),
                dict(extended.rcpt_params) if extended else {},
            )
        )
        return self.data_reply

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.quits += 1
        return "221 2.0.0 Bye"


def alice_only(
    server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and auth_data == (b"alice", b"s3cret")
    return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd sends the 535


@contextlib.asynccontextmanager
async def smtpd(
    handler: Handler,
    address: str,
    *,
    starttls: ssl.SSLContext | None = None,
    implicit: ssl.SSLContext | None = None,
    connections: list[SMTP] | None = None,
    dsn: bool = False,
    requiretls: bool = False,
    **options: Any,
) -> AsyncIterator[int]:
    """aiosmtpd on `address` (a free port, yielded), in the test's own event loop.

    Each connection's protocol object is appended to `connections` when given. `dsn` and
    `requiretls` offer those extensions (tests.peers.smtp_extensions).
    """
    loop = asyncio.get_running_loop()

    def protocol() -> SMTP:
        made = ExtendedSMTP(
            handler,
            dsn=dsn,
            requiretls=requiretls,
            hostname="mx.test",
            tls_context=starttls,
            loop=loop,
            **options,
        )
        if connections is not None:
            connections.append(made)
        return made

    server = await loop.create_server(
        protocol,
        address,
        0,
        ssl=implicit,
    )
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


class RawConnection:
    """One connection to a RawPeer: line and DATA reading that records everything."""

    def __init__(
        self, peer: RawPeer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.peer = peer
        self.reader = reader
        self.writer = writer

    async def send(self, *lines: str | bytes) -> None:
        for line in lines:
            self.writer.write(line if isinstance(line, bytes) else line.encode() + b"\r\n")
        await self.writer.drain()

    async def line(self) -> str | None:
        raw = await self.reader.readline()
        if not raw:
            return None
        text = raw.decode("utf-8", "replace").rstrip("\r\n")
        self.peer.lines.append(text)
        return text

    async def data(self) -> bytes:
        raw = await self.reader.readuntil(b"\r\n.\r\n")
        self.peer.data.append(raw)
        return raw


Script = Callable[[RawConnection], Awaitable[None]]


class RawPeer:
    """A hand-written SMTP server on loopback that follows `script` on every connection."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.lines: list[str] = []
        self.data: list[bytes] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.script(RawConnection(self, reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    @contextlib.asynccontextmanager
    async def serving(self, address: str) -> AsyncIterator[int]:
        server = await asyncio.start_server(self._handle, address, 0)
        try:
            yield server.sockets[0].getsockname()[1]
        finally:
            server.close()
            await server.wait_closed()
            # Each handler ends when the client has gone; wait for them, bounded.
            await asyncio.wait_for(asyncio.gather(*self._tasks), 10)

    def commands(self) -> list[str]:
        return [line.split(" ", 1)[0].split(":", 1)[0].upper() for line in self.lines]


async def answer(
    conn: RawConnection,
    line: str,
    *,
    extensions: Sequence[str] = ("8BITMIME",),
    replies: Mapping[str, str] | None = None,
) -> bool:
    """Answer one command as an obliging server would; False once the client has quit."""
    verb = line.split(" ", 1)[0].upper()
    if replies and verb in replies:
        await conn.send(replies[verb])
    elif verb == "EHLO":
        lines = ["raw.test", *extensions]
        await conn.send(*[f"250-{x}" for x in lines[:-1]], f"250 {lines[-1]}")
    elif verb == "DATA":
        await conn.send("354 go ahead")
        await conn.data()
        await conn.send("250 2.0.0 queued")
    elif verb == "QUIT":
        await conn.send("221 2.0.0 bye")
        return False
    else:
        await conn.send("250 2.0.0 ok")
    return True


async def serve(
    conn: RawConnection,
    *,
    greeting: str = "220 raw.test ESMTP",
    extensions: Sequence[str] = ("8BITMIME",),
    replies: Mapping[str, str] | None = None,
) -> None:
    """A plain SMTP dialogue; `replies` overrides the answer to a verb."""
    await conn.send(greeting)
    while (line := await conn.line()) is not None:
        if not await answer(conn, line, extensions=extensions, replies=replies):
            return


def target(port: int, address: str, tls: TlsRequirement = OPPORTUNISTIC, **kw: Any) -> Target:
    return Target("mx.test", address, port, tls, **kw)


async def send(
    to: Target,
    ssl_context: ssl.SSLContext,
    *,
    recipients: Sequence[str] = ("rcpt@mx.test",),
    message: bytes = MESSAGE,
    sender: str = "sender@client.test",
    smtputf8: bool = False,
    eight_bit: bool = False,
    timeouts: Timeouts = FAST,
    helo: str = "client.test",
    cache: ConnectionCache | None = None,
    requiretls: bool = False,
    dsn: DsnRequest = NO_DSN_REQUEST,
) -> Outcome:
    return await deliver(
        to,
        helo=helo,
        sender=sender,
        recipients=recipients,
        message=message,
        smtputf8=smtputf8,
        eight_bit=eight_bit,
        ssl_context=ssl_context,
        timeouts=timeouts,
        cache=cache,
        requiretls=requiretls,
        dsn=dsn,
    )


def delivered(outcome: Outcome, recipients: Sequence[str] = ("rcpt@mx.test",)) -> bool:
    return (
        outcome.failure is None
        and outcome.failure_reply is None
        and {r: reply.code for r, reply in outcome.recipients.items()}
        == dict.fromkeys(recipients, 250)
    )


def message(number: int) -> bytes:
    return MESSAGE.replace(b"Hello.", b"Hello, number %d." % number)

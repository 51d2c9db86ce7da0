"""Tests for the outbound SMTP client against real peers on loopback 127.0.55.1-127.0.55.90.

Well-behaved peers are aiosmtpd (STARTTLS and implicit TLS with trustme certificates, AUTH,
hooks that reject recipients or answer DATA with errors); peers that must misbehave are small
hand-written asyncio servers that also record every byte they read.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import trustme
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
from hypothesis import given
from hypothesis import strategies as st
from tests.support.clock import FakeClock
from tests.support.tls import client_context, server_context

from sendgate.delivery.client import (
    MAX_REPLY_TEXT,
    ConnectionCache,
    Outcome,
    RemoteReply,
    Target,
    Timeouts,
    TlsRequirement,
    certificate_matches,
    data_payload,
    deliver,
    dns_name_matches,
    has_bare_line_ending,
    size_limit,
)

MESSAGE = b"From: sender@client.test\r\nTo: rcpt@mx.test\r\nSubject: hi\r\n\r\nHello.\r\n"
FAST = Timeouts(connect=5.0, command=5.0, data=5.0)  # bounds a failing test, never reached
OPPORTUNISTIC = TlsRequirement("opportunistic", "none")
PLAINTEXT = TlsRequirement("none", "none", reason="smarthost")


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


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca = trustme.CA()
    return Pki(ca, ca.issue_cert("mx.test", "relay.test"), ca.issue_cert("other.test"))


# --- peers --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivered:
    sender: str
    recipients: tuple[str, ...]
    content: bytes
    tls: bool
    authenticated: bool


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
        self.messages.append(
            Delivered(
                envelope.mail_from,
                tuple(envelope.rcpt_tos),
                envelope.original_content,
                session.ssl is not None,
                bool(session.authenticated),
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
    **options: Any,
) -> AsyncIterator[int]:
    """aiosmtpd on `address` (a free port, yielded), in the test's own event loop.

    Each connection's protocol object is appended to `connections` when given.
    """
    loop = asyncio.get_running_loop()

    def protocol() -> SMTP:
        made = SMTP(handler, hostname="mx.test", tls_context=starttls, loop=loop, **options)
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
    )


def delivered(outcome: Outcome, recipients: Sequence[str] = ("rcpt@mx.test",)) -> bool:
    return (
        outcome.failure is None
        and outcome.failure_reply is None
        and {r: reply.code for r, reply in outcome.recipients.items()}
        == dict.fromkeys(recipients, 250)
    )


# --- TLS ----------------------------------------------------------------------------------------


def test_opportunistic_uses_starttls_when_offered(pki: Pki) -> None:
    async def run() -> None:
        handler = Handler()
        async with smtpd(handler, "127.0.55.1", starttls=pki.server(pki.mx)) as port:
            outcome = await send(target(port, "127.0.55.1"), pki.client())
        assert delivered(outcome)
        assert outcome.tls_version in ("TLSv1.2", "TLSv1.3")
        assert outcome.tls_cipher
        assert [m.tls for m in handler.messages] == [True]
        assert handler.messages[0].content == MESSAGE
        assert handler.quits == 1

    asyncio.run(run())


def test_opportunistic_without_starttls_sends_in_plaintext(pki: Pki) -> None:
    async def run() -> None:
        handler = Handler()
        async with smtpd(handler, "127.0.55.2") as port:
            outcome = await send(target(port, "127.0.55.2"), pki.client())
        assert delivered(outcome)
        assert (outcome.tls_version, outcome.tls_cipher) == (None, None)
        assert [m.tls for m in handler.messages] == [False]

    asyncio.run(run())


def test_opportunistic_retries_in_plaintext_after_a_failed_handshake(pki: Pki) -> None:
    async def broken_tls(conn: RawConnection) -> None:
        await conn.send("220 raw.test ESMTP")
        while (line := await conn.line()) is not None:
            if line == "STARTTLS":
                await conn.send("220 2.0.0 go")
                await conn.reader.read(1)  # the ClientHello has begun: answer with no TLS at all
                await conn.send(b"HTTP/1.0 400 nonsense\r\n")
                return
            if not await answer(conn, line, extensions=("STARTTLS",)):
                return

    async def run() -> None:
        peer = RawPeer(broken_tls)
        async with peer.serving("127.0.55.3") as port:
            outcome = await send(target(port, "127.0.55.3"), pki.client())
        assert delivered(outcome)
        assert outcome.tls_version is None
        assert peer.connections == 2
        assert peer.commands().count("STARTTLS") == 1
        assert len(peer.data) == 1

    asyncio.run(run())


def test_opportunistic_continues_in_plaintext_when_starttls_is_refused(pki: Pki) -> None:
    async def run() -> None:
        peer = RawPeer(
            lambda c: serve(c, extensions=("STARTTLS",), replies={"STARTTLS": "454 4.7.0 no"})
        )
        async with peer.serving("127.0.55.3") as port:
            outcome = await send(target(port, "127.0.55.3"), pki.client())
        assert delivered(outcome)
        assert peer.connections == 1
        assert peer.commands() == ["EHLO", "STARTTLS", "MAIL", "RCPT", "DATA", "QUIT"]

    asyncio.run(run())


def test_required_without_starttls_fails_before_mail(pki: Pki) -> None:
    async def run() -> None:
        peer = RawPeer(serve)
        tls = TlsRequirement("required", "pkix", names=("mx.test",), reason="mta-sts")
        async with peer.serving("127.0.55.4") as port:
            outcome = await send(target(port, "127.0.55.4", tls), pki.client())
        assert outcome.failure == "TLS required by mta-sts but STARTTLS not offered"
        assert outcome.failure_reply is None
        assert outcome.recipients == {}
        assert peer.commands() == ["EHLO", "QUIT"]
        assert peer.connections == 1

    asyncio.run(run())


def test_required_when_starttls_is_refused_fails(pki: Pki) -> None:
    async def run() -> None:
        peer = RawPeer(
            lambda c: serve(c, extensions=("STARTTLS",), replies={"STARTTLS": "454 4.7.0 no"})
        )
        tls = TlsRequirement("required", "none", reason="smarthost")
        async with peer.serving("127.0.55.4") as port:
            outcome = await send(target(port, "127.0.55.4", tls), pki.client())
        assert outcome.failure == "TLS required by smarthost but STARTTLS refused: 454 4.7.0 no"
        assert "MAIL" not in peer.commands()

    asyncio.run(run())


def test_pkix_certificate_for_another_name_fails(pki: Pki) -> None:
    async def run() -> None:
        handler = Handler()
        tls = TlsRequirement("required", "pkix", names=("mx.test",), reason="mta-sts")
        async with smtpd(handler, "127.0.55.5", starttls=pki.server(pki.other)) as port:
            outcome = await send(target(port, "127.0.55.5", tls), pki.client())
        assert outcome.failure is not None
        assert outcome.failure.startswith("TLS policy (mta-sts): certificate not accepted: ")
        assert "mx.test" in outcome.failure
        assert outcome.recipients == {}
        assert handler.mails == []

    asyncio.run(run())


def test_pkix_certificate_from_an_unknown_ca_fails(pki: Pki) -> None:
    async def run() -> None:
        stranger = trustme.CA().issue_cert("mx.test")
        tls = TlsRequirement("required", "pkix", names=("mx.test",), reason="mta-sts")
        handler = Handler()
        async with smtpd(handler, "127.0.55.5", starttls=pki.server(stranger)) as port:
            outcome = await send(target(port, "127.0.55.5", tls), pki.client())
        assert outcome.failure is not None
        assert "certificate not accepted" in outcome.failure
        assert handler.mails == []

    asyncio.run(run())


@pytest.mark.parametrize(
    ("names", "failure"),
    [
        (("mx.test",), None),
        (("MX.test.",), None),
        (("relay.test",), None),  # host not among names: the certificate must cover one
        (("elsewhere.test",), "TLS policy (mta-sts): certificate is not valid for elsewhere.test"),
    ],
)
def test_pkix_accepts_only_listed_names(
    pki: Pki, names: tuple[str, ...], failure: str | None
) -> None:
    async def run() -> None:
        handler = Handler()
        tls = TlsRequirement("required", "pkix", names=names, reason="mta-sts")
        async with smtpd(handler, "127.0.55.6", starttls=pki.server(pki.mx)) as port:
            outcome = await send(target(port, "127.0.55.6", tls), pki.client())
        assert outcome.failure == failure
        assert outcome.tls_version is not None
        assert len(handler.messages) == (1 if failure is None else 0)
        assert handler.quits == 1

    asyncio.run(run())


def test_pkix_needs_a_verifying_context(pki: Pki) -> None:
    loose = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    loose.check_hostname = False
    loose.verify_mode = ssl.CERT_NONE
    tls = TlsRequirement("required", "pkix", names=("mx.test",))
    with pytest.raises(ValueError, match="ssl_context must verify"):
        asyncio.run(send(target(25, "127.0.55.6", tls), loose))


@pytest.mark.parametrize("matches", [True, False])
def test_dane_leaf_check_decides(pki: Pki, matches: bool) -> None:
    seen: list[bytes] = []

    def leaf_check(der: bytes) -> bool:
        seen.append(der)
        return matches

    async def run() -> None:
        handler = Handler()
        tls = TlsRequirement("required", "dane", leaf_check=leaf_check, reason="dane")
        # Signed by an unknown CA: DANE does not care, only the leaf matters.
        stranger = trustme.CA().issue_cert("somewhere.else")
        async with smtpd(handler, "127.0.55.7", starttls=pki.server(stranger)) as port:
            outcome = await send(target(port, "127.0.55.7", tls), pki.client())
        assert seen == [Pki.der(stranger)]
        assert outcome.tls_version is not None
        assert handler.quits == 1
        if matches:
            assert delivered(outcome)
        else:
            assert outcome.failure == "TLS policy (dane): certificate does not match TLSA"
            assert outcome.recipients == {}
            assert handler.mails == []

    asyncio.run(run())


@pytest.mark.parametrize(("leaf", "ok"), [("mx", True), ("other", False)])
def test_implicit_tls(pki: Pki, leaf: str, ok: bool) -> None:
    async def run() -> None:
        handler = Handler()
        tls = TlsRequirement(
            "required", "pkix", names=("mx.test",), implicit=True, reason="smarthost"
        )
        server = pki.server(pki.mx if leaf == "mx" else pki.other)
        async with smtpd(handler, "127.0.55.8", implicit=server) as port:
            outcome = await send(target(port, "127.0.55.8", tls), pki.client())
        if ok:
            assert delivered(outcome)
            assert outcome.tls_version in ("TLSv1.2", "TLSv1.3")
        else:
            assert outcome.failure is not None
            assert outcome.failure.startswith("TLS policy (smarthost): certificate not accepted")
            assert handler.mails == []

    asyncio.run(run())


# --- AUTH ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("password", ["s3cret", "wrong"])
def test_auth_over_starttls(pki: Pki, password: str) -> None:
    async def run() -> None:
        handler = Handler()
        tls = TlsRequirement("required", "pkix", names=("mx.test",), reason="smarthost")
        async with smtpd(
            handler, "127.0.55.9", starttls=pki.server(pki.mx), authenticator=alice_only
        ) as port:
            to = target(port, "127.0.55.9", tls, auth=("alice", password))
            outcome = await send(to, pki.client())
        if password == "s3cret":
            assert delivered(outcome)
            assert [m.authenticated for m in handler.messages] == [True]
        else:
            # A refused login defers (the route's fault): a reason, not a permanent reply.
            assert outcome.failure_reply is None
            assert outcome.failure is not None
            assert "refused AUTH: 535 " in outcome.failure
            assert outcome.recipients == {}
            assert handler.mails == []

    asyncio.run(run())


def test_auth_login_when_plain_is_not_offered(pki: Pki) -> None:
    async def run() -> None:
        handler = Handler()
        async with smtpd(
            handler,
            "127.0.55.9",
            starttls=pki.server(pki.mx),
            authenticator=alice_only,
            auth_exclude_mechanism=["PLAIN"],
        ) as port:
            to = target(port, "127.0.55.9", auth=("alice", "s3cret"))
            outcome = await send(to, pki.client())
        assert delivered(outcome)
        assert [m.authenticated for m in handler.messages] == [True]

    asyncio.run(run())


def test_auth_is_never_sent_in_plaintext_with_opportunistic_tls(pki: Pki) -> None:
    async def run() -> None:
        peer = RawPeer(lambda c: serve(c, extensions=("AUTH PLAIN LOGIN",)))
        async with peer.serving("127.0.55.10") as port:
            to = target(port, "127.0.55.10", auth=("alice", "s3cret"))
            outcome = await send(to, pki.client())
        assert outcome.failure is not None
        assert outcome.failure.startswith("AUTH needs TLS")
        assert peer.commands() == ["EHLO", "QUIT"]
        assert not any("alice" in line or "czNjcmV0" in line for line in peer.lines)

    asyncio.run(run())


def test_auth_in_plaintext_to_a_loopback_smarthost_with_mode_none(pki: Pki) -> None:
    async def run() -> None:
        handler = Handler()
        async with smtpd(
            handler, "127.0.55.10", authenticator=alice_only, auth_require_tls=False
        ) as port:
            to = target(port, "127.0.55.10", PLAINTEXT, auth=("alice", "s3cret"))
            outcome = await send(to, pki.client())
        assert delivered(outcome)
        assert outcome.tls_version is None
        assert [m.authenticated for m in handler.messages] == [True]

    asyncio.run(run())


def test_auth_not_offered_fails(pki: Pki) -> None:
    async def run() -> None:
        peer = RawPeer(lambda c: serve(c, extensions=("AUTH CRAM-MD5", "8BITMIME")))
        async with peer.serving("127.0.55.10") as port:
            to = target(port, "127.0.55.10", PLAINTEXT, auth=("alice", "x"))
            outcome = await send(to, pki.client())
        assert outcome.failure == (
            f"mx.test[127.0.55.10]:{port} offers neither AUTH PLAIN nor AUTH LOGIN"
        )
        assert peer.commands() == ["EHLO", "QUIT"]

    asyncio.run(run())


# --- the transaction ----------------------------------------------------------------------------

RCPTS = ("ok1@mx.test", "gone@mx.test", "later@mx.test", "ok2@mx.test")


@pytest.mark.parametrize(
    "data_reply", ["250 2.0.0 queued as X", "451 4.3.0 try again", "554 5.6.0 rejected"]
)
def test_each_recipient_gets_its_final_reply(pki: Pki, data_reply: str) -> None:
    async def run() -> None:
        handler = Handler(
            rcpt={"gone@mx.test": "550 5.1.1 no such user", "later@mx.test": "450 4.2.1 busy"},
            data_reply=data_reply,
        )
        async with smtpd(handler, "127.0.55.11") as port:
            outcome = await send(target(port, "127.0.55.11"), pki.client(), recipients=RCPTS)
        code, text = data_reply.split(" ", 1)
        assert outcome.failure is None
        assert outcome.failure_reply is None
        assert outcome.recipients == {
            "ok1@mx.test": RemoteReply(int(code), text),
            "gone@mx.test": RemoteReply(550, "5.1.1 no such user"),
            "later@mx.test": RemoteReply(450, "4.2.1 busy"),
            "ok2@mx.test": RemoteReply(int(code), text),
        }
        assert [m.recipients for m in handler.messages] == [("ok1@mx.test", "ok2@mx.test")]

    asyncio.run(run())


def test_no_data_when_every_recipient_is_refused(pki: Pki) -> None:
    async def run() -> None:
        peer = RawPeer(lambda c: serve(c, replies={"RCPT": "550 5.1.1 nobody"}))
        async with peer.serving("127.0.55.12") as port:
            outcome = await send(target(port, "127.0.55.12"), pki.client(), recipients=RCPTS[:2])
        assert outcome.recipients == dict.fromkeys(RCPTS[:2], RemoteReply(550, "5.1.1 nobody"))
        assert peer.commands() == ["EHLO", "MAIL", "RCPT", "RCPT", "QUIT"]

    asyncio.run(run())


@pytest.mark.parametrize(
    ("verb", "reply"),
    [
        ("MAIL", "550 5.7.1 sender refused"),
        ("DATA", "554 5.5.1 no valid recipients"),
        ("RCPT", "421 4.3.2 shutting down"),
    ],
)
def test_a_reply_that_fails_the_transaction(pki: Pki, verb: str, reply: str) -> None:
    async def run() -> None:
        peer = RawPeer(lambda c: serve(c, replies={verb: reply}))
        async with peer.serving("127.0.55.12") as port:
            outcome = await send(target(port, "127.0.55.12"), pki.client())
        code, text = reply.split(" ", 1)
        assert outcome.failure is None
        assert outcome.failure_reply == RemoteReply(int(code), text)
        assert outcome.recipients == {}
        assert peer.data == []

    asyncio.run(run())


def test_greeting_refusal_is_the_failure_reply(pki: Pki) -> None:
    async def run() -> None:
        peer = RawPeer(lambda c: serve(c, greeting="554 5.3.2 no service here"))
        async with peer.serving("127.0.55.12") as port:
            outcome = await send(target(port, "127.0.55.12"), pki.client())
        assert outcome.failure_reply == RemoteReply(554, "5.3.2 no service here")
        assert "MAIL" not in peer.commands()

    asyncio.run(run())


def test_helo_after_ehlo_is_refused(pki: Pki) -> None:
    async def run() -> None:
        peer = RawPeer(lambda c: serve(c, replies={"EHLO": "502 5.5.1 what is EHLO"}))
        async with peer.serving("127.0.55.13") as port:
            outcome = await send(target(port, "127.0.55.13"), pki.client(), eight_bit=True)
        assert delivered(outcome)
        assert peer.lines[:3] == [
            "EHLO client.test",
            "HELO client.test",
            "MAIL FROM:<sender@client.test>",  # no BODY=8BITMIME without EHLO: sent as is
        ]

    asyncio.run(run())


@pytest.mark.parametrize("offered", [True, False])
def test_body_8bitmime_only_when_offered(pki: Pki, offered: bool) -> None:
    async def run() -> None:
        extensions = ("8BITMIME", "SIZE 1000") if offered else ("SIZE 1000",)
        peer = RawPeer(lambda c: serve(c, extensions=extensions))
        message = "Subject: caf\u00e9\r\n\r\nd\u00e9j\u00e0 vu\r\n".encode()
        async with peer.serving("127.0.55.13") as port:
            outcome = await send(
                target(port, "127.0.55.13"), pki.client(), message=message, eight_bit=True
            )
        assert delivered(outcome)
        mail = f"MAIL FROM:<sender@client.test> SIZE={len(message)}"
        assert peer.lines[1] == (mail + " BODY=8BITMIME" if offered else mail)
        assert peer.data == [message + b".\r\n"]

    asyncio.run(run())


def test_smtputf8_not_offered_refuses_locally(pki: Pki) -> None:
    async def run() -> None:
        handler = Handler()
        async with smtpd(handler, "127.0.55.14") as port:
            outcome = await send(
                target(port, "127.0.55.14"),
                pki.client(),
                recipients=("j\u00f6rg@mx.test", "plain@mx.test"),
                smtputf8=True,
            )
        assert outcome.failure is None
        assert set(outcome.recipients) == {"j\u00f6rg@mx.test", "plain@mx.test"}
        for reply in outcome.recipients.values():
            assert reply.code == 553
            assert reply.text.startswith("5.6.7 (local) ")
        assert handler.mails == []
        assert handler.quits == 1

    asyncio.run(run())


def test_smtputf8_when_offered(pki: Pki) -> None:
    async def run() -> None:
        handler = Handler()
        async with smtpd(handler, "127.0.55.14", enable_SMTPUTF8=True) as port:
            outcome = await send(
                target(port, "127.0.55.14"),
                pki.client(),
                sender="s\u00e9nder@client.test",
                recipients=("j\u00f6rg@mx.test",),
                smtputf8=True,
            )
        assert delivered(outcome, ["j\u00f6rg@mx.test"])
        assert handler.mails[0][0] == "s\u00e9nder@client.test"
        assert "SMTPUTF8" in handler.mails[0][1]

    asyncio.run(run())


def test_size_too_small_refuses_locally(pki: Pki) -> None:
    async def run() -> None:
        handler = Handler()
        async with smtpd(handler, "127.0.55.15", data_size_limit=len(MESSAGE) - 1) as port:
            outcome = await send(target(port, "127.0.55.15"), pki.client())
        reply = outcome.recipients["rcpt@mx.test"]
        assert reply.code == 552
        assert reply.text.startswith("5.3.4 (local) ")
        assert handler.mails == []

    asyncio.run(run())


def test_size_just_enough_is_sent_with_the_size(pki: Pki) -> None:
    async def run() -> None:
        handler = Handler()
        async with smtpd(handler, "127.0.55.15", data_size_limit=len(MESSAGE)) as port:
            outcome = await send(target(port, "127.0.55.15"), pki.client())
        assert delivered(outcome)
        assert f"SIZE={len(MESSAGE)}" in handler.mails[0][1]

    asyncio.run(run())


@pytest.mark.parametrize("bad", [b"Subject: x\n\r\nbody\r\n", b"Subject: x\r\n\r\nbo\rdy\r\n"])
def test_bare_lf_or_cr_is_refused_without_connecting(pki: Pki, bad: bytes) -> None:
    async def run() -> None:
        peer = RawPeer(serve)
        async with peer.serving("127.0.55.16") as port:
            outcome = await send(
                target(port, "127.0.55.16"), pki.client(), message=bad, recipients=RCPTS[:2]
            )
        assert peer.connections == 0
        assert outcome.failure is None
        assert set(outcome.recipients) == set(RCPTS[:2])
        for reply in outcome.recipients.values():
            assert reply.code == 554
            assert reply.text.startswith("5.6.0 (local) ")

    asyncio.run(run())


def test_bytes_on_the_wire_are_the_message_dot_stuffed(pki: Pki) -> None:
    message = b".leading dot line\r\nSubject: dots\r\n\r\n.\r\n..two\r\nmiddle.dot. \r\n\r\n."
    expected = (
        b"..leading dot line\r\n"
        b"Subject: dots\r\n"
        b"\r\n"
        b"..\r\n"
        b"...two\r\n"
        b"middle.dot. \r\n"
        b"\r\n"
        b"..\r\n"
        b".\r\n"
    )

    async def run() -> None:
        peer = RawPeer(serve)
        async with peer.serving("127.0.55.17") as port:
            outcome = await send(
                target(port, "127.0.55.17"), pki.client(), message=message, sender=""
            )
        assert delivered(outcome)
        assert peer.data == [expected]
        assert peer.lines[1] == "MAIL FROM:<>"

    asyncio.run(run())


# --- broken peers and networks ------------------------------------------------------------------


def test_connection_refused(pki: Pki) -> None:
    with socket.socket() as closed:  # bound, never listening: connecting gets a RST
        closed.bind(("127.0.55.18", 0))
        port = closed.getsockname()[1]
        outcome = asyncio.run(send(target(port, "127.0.55.18"), pki.client()))
    assert outcome.failure == f"cannot connect to mx.test[127.0.55.18]:{port}: Connection refused"
    assert (outcome.failure_reply, outcome.recipients) == (None, {})


def test_timeout_waiting_for_the_greeting(pki: Pki) -> None:
    async def silent(conn: RawConnection) -> None:
        await conn.reader.read()  # says nothing; returns once the client has given up

    async def run() -> None:
        peer = RawPeer(silent)
        async with peer.serving("127.0.55.19") as port:
            outcome = await send(
                target(port, "127.0.55.19"), pki.client(), timeouts=Timeouts(command=0.2)
            )
        assert outcome.failure == "timeout (0.2s) in greeting"
        assert outcome.recipients == {}

    asyncio.run(run())


def test_timeout_connecting(pki: Pki) -> None:
    with socket.socket() as full, socket.socket() as first:
        full.bind(("127.0.55.24", 0))
        full.listen(0)  # never accepts: once one connection waits, Linux drops further SYNs
        first.connect(full.getsockname())
        port = full.getsockname()[1]
        outcome = asyncio.run(
            send(target(port, "127.0.55.24"), pki.client(), timeouts=Timeouts(connect=0.2))
        )
    assert outcome.failure == f"timeout (0.2s) connecting to mx.test[127.0.55.24]:{port}"


def test_cancelled_delivery_closes_the_connection(pki: Pki) -> None:
    async def run() -> None:
        connected = asyncio.Event()
        closed = asyncio.Event()

        async def silent(conn: RawConnection) -> None:
            connected.set()
            await conn.reader.read()  # EOF once the client has dropped the connection
            closed.set()

        peer = RawPeer(silent)
        async with peer.serving("127.0.55.19") as port:
            task = asyncio.create_task(send(target(port, "127.0.55.19"), pki.client()))
            await connected.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.wait_for(closed.wait(), 10)
        assert peer.connections == 1

    asyncio.run(run())


def test_421_to_ehlo_ends_the_session(pki: Pki) -> None:
    async def run() -> None:
        peer = RawPeer(lambda c: serve(c, replies={"EHLO": "421 4.3.2 going down"}))
        async with peer.serving("127.0.55.20") as port:
            outcome = await send(target(port, "127.0.55.20"), pki.client())
        assert outcome.failure_reply == RemoteReply(421, "4.3.2 going down")
        assert outcome.recipients == {}
        assert "HELO" not in peer.commands()

    asyncio.run(run())


def test_garbage_reply(pki: Pki) -> None:
    async def run() -> None:
        peer = RawPeer(lambda c: serve(c, replies={"EHLO": "hello there, I am no SMTP server"}))
        async with peer.serving("127.0.55.20") as port:
            outcome = await send(target(port, "127.0.55.20"), pki.client())
        assert outcome.failure == "malformed reply in EHLO"
        assert "MAIL" not in peer.commands()

    asyncio.run(run())


def test_connection_closed_mid_data(pki: Pki) -> None:
    async def cut(conn: RawConnection) -> None:
        await conn.send("220 raw.test")
        while (line := await conn.line()) is not None:
            if line == "DATA":
                await conn.send("354 go ahead")
                await conn.reader.readline()  # one line of the message, then hang up
                return
            await answer(conn, line)

    async def run() -> None:
        peer = RawPeer(cut)
        async with peer.serving("127.0.55.21") as port:
            outcome = await send(target(port, "127.0.55.21"), pki.client(), recipients=RCPTS[:2])
        assert outcome.failure == "connection lost in message data"
        assert outcome.recipients == {}

    asyncio.run(run())


def test_remote_reply_text_is_bounded_and_cleaned(pki: Pki) -> None:
    long_reply = "550-5.1.1 \x1b[2J\x00first\r\n550 5.1.1 " + "x" * 5000

    async def run() -> None:
        peer = RawPeer(lambda c: serve(c, replies={"RCPT": long_reply}))
        async with peer.serving("127.0.55.22") as port:
            outcome = await send(target(port, "127.0.55.22"), pki.client())
        reply = outcome.recipients["rcpt@mx.test"]
        assert reply.code == 550
        assert reply.text.startswith("5.1.1 ?[2J?first\n5.1.1 xxx")
        assert len(reply.text) == MAX_REPLY_TEXT + len("...")
        assert "\n" not in str(reply)

    asyncio.run(run())


def test_ipv6_loopback(pki: Pki) -> None:
    async def run() -> None:
        peer = RawPeer(serve)
        async with peer.serving("::1") as port:
            outcome = await send(Target("mx.test", "::1", port, OPPORTUNISTIC), pki.client())
        assert delivered(outcome)
        assert len(peer.data) == 1

    asyncio.run(run())


# --- arguments ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"mode": "sometimes", "verify": "none"}, "TLS mode must be one of"),
        ({"mode": "required", "verify": "maybe"}, "TLS verify must be one of"),
        ({"mode": "opportunistic", "verify": "pkix", "names": ("a",)}, "needs mode 'required'"),
        ({"mode": "opportunistic", "verify": "none", "implicit": True}, "implicit TLS needs"),
        ({"mode": "required", "verify": "pkix"}, "at least one acceptable name"),
        ({"mode": "required", "verify": "dane"}, "needs a leaf_check"),
    ],
)
def test_tls_requirement_refuses_nonsense(kwargs: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        TlsRequirement(**kwargs)


@pytest.mark.parametrize(
    ("host", "address", "port", "error"),
    [
        ("", "127.0.55.1", 25, "is not a host name"),
        ("mx.test", "mx.test", 25, "is not an IP address"),
        ("mx.test", "127.0.55.1", 0, "out of range"),
    ],
)
def test_target_refuses_nonsense(host: str, address: str, port: int, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        Target(host, address, port, OPPORTUNISTIC)


def test_target_repr_hides_the_password() -> None:
    assert "s3cret" not in repr(
        Target("mx.test", "127.0.55.1", 25, PLAINTEXT, auth=("a", "s3cret"))
    )


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"recipients": ()}, "no recipients"),
        ({"recipients": ("a@mx.test", "a@mx.test")}, "duplicate recipients"),
        ({"recipients": ("a@mx.test> NOTIFY=NEVER",)}, "is not valid"),
        ({"sender": "x\r\nRSET"}, "is not valid"),
        ({"recipients": ("j\u00f6rg@mx.test",)}, "is not valid"),  # needs smtputf8=True
    ],
)
def test_bad_envelope_is_a_programming_error(pki: Pki, kwargs: dict[str, Any], error: str) -> None:
    peer = RawPeer(serve)

    async def run() -> None:
        async with peer.serving("127.0.55.23") as port:
            await send(target(port, "127.0.55.23"), pki.client(), **kwargs)

    with pytest.raises(ValueError, match=error):
        asyncio.run(run())
    assert peer.connections == 0


@pytest.mark.parametrize("helo", ["", "two words", "caf\u00e9.test", "bad\r\nRSET"])
def test_bad_helo_name_is_a_programming_error(pki: Pki, helo: str) -> None:
    coroutine = deliver(
        target(25, "127.0.55.23"),
        helo=helo,
        sender="",
        recipients=["rcpt@mx.test"],
        message=MESSAGE,
        smtputf8=False,
        eight_bit=False,
        ssl_context=pki.client(),
    )
    with pytest.raises(ValueError, match="HELO name"):
        asyncio.run(coroutine)


def test_remote_reply_str_is_one_line() -> None:
    assert str(RemoteReply(550, "5.1.1 no\nsuch user")) == "550 5.1.1 no such user"
    assert str(RemoteReply(250, "")) == "250"


# --- parsers (property tests) -------------------------------------------------------------------

line_bytes = st.binary(max_size=40) | st.lists(
    st.sampled_from([b"\r\n", b".", b"\r", b"\n", b"a", b" "]), max_size=30
).map(b"".join)


@given(line_bytes)
def test_bare_line_ending_matches_its_definition(message: bytes) -> None:
    reference = re.search(rb"\r(?!\n)|(?<!\r)\n", message) is not None
    assert has_bare_line_ending(message) == reference


@given(st.lists(st.sampled_from([b".", b"..", b"a", b" ", b"\r\n", b".\r\n"]), max_size=30))
def test_data_payload_round_trips_and_ends_once(parts: list[bytes]) -> None:
    message = b"".join(parts)
    payload = data_payload(message)
    assert payload.endswith(b"\r\n.\r\n") or (payload == b".\r\n" and message == b"")
    # Seen from the peer (DATA starts a line): the only end-of-data mark is the last one.
    wire = b"\r\n" + payload
    assert wire.find(b"\r\n.\r\n") == len(wire) - 5
    lines = payload[:-3].split(b"\r\n")[:-1]
    unstuffed = b"".join(
        line[1:] + b"\r\n" if line.startswith(b".") else line + b"\r\n" for line in lines
    )
    assert unstuffed == (message if message.endswith(b"\r\n") else message + b"\r\n")


@given(st.text(max_size=30))
def test_size_limit_reads_only_plain_numbers(text: str) -> None:
    value = size_limit(text)
    if value is not None:
        assert value > 0
        assert str(value) == text.strip().lstrip("0")


@pytest.mark.parametrize(
    ("parameter", "limit"),
    [
        ("1000", 1000),
        (" 52428800 ", 52428800),
        ("0", None),
        ("", None),
        ("1e6", None),
        ("\u0661", None),
    ],
)
def test_size_limit_examples(parameter: str, limit: int | None) -> None:
    assert size_limit(parameter) == limit


label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
hostname = st.lists(label, min_size=2, max_size=4).map(".".join)


@given(hostname)
def test_a_name_matches_itself_in_any_case(name: str) -> None:
    assert dns_name_matches(name, name)
    assert dns_name_matches(name.upper(), name + ".")


@given(label, label, hostname)
def test_wildcard_stands_for_exactly_one_label(first: str, second: str, base: str) -> None:
    pattern = "*." + base
    assert dns_name_matches(pattern, f"{first}.{base}") == (base.count(".") >= 1)
    assert not dns_name_matches(pattern, base)
    assert not dns_name_matches(pattern, f"{first}.{second}.{base}")
    assert not dns_name_matches(f"{first}.*.{base}", f"{first}.{second}.{base}")


@pytest.mark.parametrize(
    ("pattern", "name", "ok"),
    [
        ("*.example.com", "mx.example.com", True),
        ("*.com", "example.com", False),  # too broad
        ("f*.example.com", "foo.example.com", False),  # partial wildcards are not honoured
        ("example.com", "*.example.com", False),
        ("ex\u00e4mple.com", "ex\u00e4mple.com", False),  # A-labels only
    ],
)
def test_dns_name_examples(pattern: str, name: str, ok: bool) -> None:
    assert dns_name_matches(pattern, name) is ok


def test_certificate_matches_reads_the_san(pki: Pki) -> None:
    wildcard = pki.ca.issue_cert("*.pool.test")
    assert certificate_matches(Pki.der(pki.mx), ["nope.test", "relay.test"])
    assert not certificate_matches(Pki.der(pki.mx), ["other.test"])
    assert certificate_matches(Pki.der(wildcard), ["a.pool.test"])
    assert not certificate_matches(Pki.der(wildcard), ["a.b.pool.test", "pool.test"])
    assert not certificate_matches(b"not a certificate", ["mx.test"])


# --- connection reuse (127.0.55.61 - 127.0.55.90) -----------------------------------------------


def message(number: int) -> bytes:
    return MESSAGE.replace(b"Hello.", b"Hello, number %d." % number)


def test_reuse_carries_the_next_transaction_on_the_same_connection(pki: Pki) -> None:
    async def run() -> None:
        peer = RawPeer(serve)
        cache = ConnectionCache()
        async with peer.serving("127.0.55.61") as port:
            to = target(port, "127.0.55.61", PLAINTEXT)
            first = await send(to, pki.client(), message=message(1), cache=cache)
            second = await send(to, pki.client(), message=message(2), cache=cache)
            assert cache.idle == 1
            # After a completed transaction the state is reset (RFC 5321 4.1.4): no RSET.
            assert peer.commands() == ["EHLO", "MAIL", "RCPT", "DATA", "MAIL", "RCPT", "DATA"]
            await cache.close()
            assert cache.idle == 0
        assert delivered(first)
        assert delivered(second)
        assert peer.connections == 1
        assert peer.data == [data_payload(message(1)), data_payload(message(2))]
        assert peer.commands()[-1] == "QUIT"

    asyncio.run(run())


def test_a_reused_session_keeps_its_tls_parameters(pki: Pki) -> None:
    async def run() -> None:
        handler = Handler()
        connections: list[SMTP] = []
        cache = ConnectionCache()
        async with smtpd(
            handler, "127.0.55.62", starttls=pki.server(pki.mx), connections=connections
        ) as port:
            to = target(port, "127.0.55.62")
            first = await send(to, pki.client(), message=message(1), cache=cache)
            second = await send(to, pki.client(), message=message(2), cache=cache)
            assert handler.quits == 0
            await cache.close()
        assert delivered(first)
        assert delivered(second)
        assert first.tls_version in ("TLSv1.2", "TLSv1.3")
        assert (second.tls_version, second.tls_cipher) == (first.tls_version, first.tls_cipher)
        assert len(connections) == 1
        assert [(m.content, m.tls) for m in handler.messages] == [
            (message(1), True),
            (message(2), True),
        ]
        assert handler.quits == 1

    asyncio.run(run())


@pytest.mark.parametrize("variant", ["host", "tls mode", "helo", "auth user"])
def test_sessions_are_not_shared_across_keys(pki: Pki, variant: str) -> None:
    auth_peer = ("AUTH PLAIN", "8BITMIME")

    async def run() -> None:
        peer = RawPeer(lambda c: serve(c, extensions=auth_peer, replies={"AUTH": "235 2.7.0 ok"}))
        cache = ConnectionCache()
        async with peer.serving("127.0.55.63") as port:
            base = target(port, "127.0.55.63", PLAINTEXT, auth=("alice", "pw"))
            other, helo = base, "client.test"
            if variant == "host":
                other = Target("relay.test", base.address, port, PLAINTEXT, auth=base.auth)
            elif variant == "tls mode":
                other = target(port, "127.0.55.63", OPPORTUNISTIC)
            elif variant == "helo":
                helo = "other.client.test"
            else:
                other = target(port, "127.0.55.63", PLAINTEXT, auth=("bob", "pw"))
            outcomes = [
                await send(base, pki.client(), cache=cache),
                await send(other, pki.client(), cache=cache, helo=helo),
                await send(base, pki.client(), cache=cache),  # each goes back to its own
                await send(other, pki.client(), cache=cache, helo=helo),
            ]
            assert cache.idle == 2
            await cache.close()
        assert all(delivered(outcome) for outcome in outcomes)
        assert peer.connections == 2
        assert peer.commands().count("EHLO") == 2
        assert peer.commands().count("QUIT") == 2

    asyncio.run(run())


def test_sessions_are_not_shared_across_tls_requirements(pki: Pki) -> None:
    async def run() -> None:
        handler = Handler()
        connections: list[SMTP] = []
        cache = ConnectionCache()
        trust, other_trust = pki.client(), pki.client()
        pkix = TlsRequirement("required", "pkix", names=("mx.test",), reason="mta-sts")
        plans = [
            (OPPORTUNISTIC, trust),
            (TlsRequirement("required", "none", reason="smarthost"), trust),
            (pkix, trust),
            (pkix, other_trust),  # another trust store verified nothing yet
        ]
        async with smtpd(
            handler, "127.0.55.64", starttls=pki.server(pki.mx), connections=connections
        ) as port:
            outcomes = [
                await send(target(port, "127.0.55.64", tls), context, cache=cache)
                for tls, context in plans + plans
            ]
            assert cache.idle == 4
            await cache.close()
        assert all(delivered(outcome) for outcome in outcomes)
        assert len(connections) == 4
        assert len(handler.messages) == 8
        assert handler.quits == 4

    asyncio.run(run())


@pytest.mark.parametrize(
    ("limits", "steps", "connections"),
    [
        ({"idle_time": 2.0}, [1.9, 1.9], 1),
        ({"idle_time": 2.0}, [1.9, 2.0], 2),
        ({"idle_time": 100.0, "max_age": 10.0}, [5.0, 4.9], 1),
        ({"idle_time": 100.0, "max_age": 10.0}, [5.0, 5.0], 2),
        ({"max_transactions": 3}, [0.0, 0.0], 1),
        ({"max_transactions": 2}, [0.0, 0.0], 2),
    ],
)
def test_limits_force_a_new_connection(
    pki: Pki, limits: dict[str, float], steps: list[float], connections: int
) -> None:
    async def run() -> None:
        peer = RawPeer(serve)
        clock = FakeClock(1000.0)
        cache = ConnectionCache(clock=clock, **limits)  # type: ignore[arg-type]
        async with peer.serving("127.0.55.65") as port:
            to = target(port, "127.0.55.65", PLAINTEXT)
            outcomes = [await send(to, pki.client(), cache=cache)]
            for step in steps:
                clock.advance(step)
                outcomes.append(await send(to, pki.client(), cache=cache))
            await cache.close()
        assert all(delivered(outcome) for outcome in outcomes)
        assert peer.connections == connections
        assert len(peer.data) == 3
        # Every connection ends with QUIT: at the limit, when found expired, or at close().
        assert peer.commands().count("QUIT") == connections

    asyncio.run(run())


def test_used_up_session_quits_right_after_its_last_transaction(pki: Pki) -> None:
    async def run() -> None:
        peer = RawPeer(serve)
        cache = ConnectionCache(max_transactions=2)
        async with peer.serving("127.0.55.65") as port:
            to = target(port, "127.0.55.65", PLAINTEXT)
            for _ in range(2):
                assert delivered(await send(to, pki.client(), cache=cache))
            assert peer.commands()[-1] == "QUIT"
            assert cache.idle == 0
            await cache.close()
        assert peer.connections == 1

    asyncio.run(run())


def test_idle_sessions_are_closed_in_the_background(pki: Pki) -> None:
    async def run() -> None:
        quit_seen = asyncio.Event()

        async def script(conn: RawConnection) -> None:
            await serve(conn)
            if "QUIT" in conn.peer.commands():
                quit_seen.set()

        peer = RawPeer(script)
        cache = ConnectionCache(idle_time=0.05)  # the real clock: the loop's timer must fire
        async with peer.serving("127.0.55.66") as port:
            outcome = await send(target(port, "127.0.55.66", PLAINTEXT), pki.client(), cache=cache)
            assert cache.idle == 1
            await asyncio.wait_for(quit_seen.wait(), 10)
            assert cache.idle == 0
            await cache.close()
        assert delivered(outcome)
        assert peer.commands() == ["EHLO", "MAIL", "RCPT", "DATA", "QUIT"]

    asyncio.run(run())


def test_a_session_the_peer_closed_while_idle_is_replaced(pki: Pki) -> None:
    async def one_transaction(conn: RawConnection) -> None:
        await conn.send("220 raw.test ESMTP")
        while (line := await conn.line()) is not None:
            await answer(conn, line)
            if line == "DATA":
                return  # hang up after the reply to the data, as an idle timeout would

    async def run() -> None:
        peer = RawPeer(one_transaction)
        cache = ConnectionCache()
        async with peer.serving("127.0.55.67") as port:
            to = target(port, "127.0.55.67", PLAINTEXT)
            first = await send(to, pki.client(), message=message(1), cache=cache)
            second = await send(to, pki.client(), message=message(2), cache=cache)
            await cache.close()
        assert delivered(first)
        assert delivered(second)
        assert peer.connections == 2
        assert peer.data == [data_payload(message(1)), data_payload(message(2))]

    asyncio.run(run())


@pytest.mark.parametrize("behaviour", ["421", "hang up"])
def test_a_reused_session_refused_at_mail_is_replaced_unseen(pki: Pki, behaviour: str) -> None:
    async def second_mail_fails(conn: RawConnection) -> None:
        await conn.send("220 raw.test ESMTP")
        mails = 0
        while (line := await conn.line()) is not None:
            if line.startswith("MAIL"):
                mails += 1
                if mails == 2:
                    if behaviour == "421":
                        await conn.send("421 4.4.2 idle too long")
                    return
            if not await answer(conn, line):
                return

    async def run() -> None:
        peer = RawPeer(second_mail_fails)
        cache = ConnectionCache()
        async with peer.serving("127.0.55.68") as port:
            to = target(port, "127.0.55.68", PLAINTEXT)
            first = await send(to, pki.client(), message=message(1), cache=cache)
            second = await send(to, pki.client(), message=message(2), cache=cache)
            assert cache.idle == 1
            await cache.close()
        assert delivered(first)
        assert delivered(second)  # no trace of the stale session's 421 or hang-up
        assert peer.connections == 2
        assert peer.commands().count("MAIL") == 3
        assert peer.data == [data_payload(message(1)), data_payload(message(2))]

    asyncio.run(run())


def test_a_timeout_on_a_reused_session_is_reported_not_retried(pki: Pki) -> None:
    async def mute_after_one(conn: RawConnection) -> None:
        await conn.send("220 raw.test ESMTP")
        while (line := await conn.line()) is not None:
            if line.startswith("MAIL") and conn.peer.data:
                await conn.reader.read()  # no answer; returns once the client has given up
                return
            if not await answer(conn, line):
                return

    async def run() -> None:
        peer = RawPeer(mute_after_one)
        cache = ConnectionCache()
        async with peer.serving("127.0.55.69") as port:
            to = target(port, "127.0.55.69", PLAINTEXT)
            first = await send(to, pki.client(), cache=cache)
            second = await send(to, pki.client(), cache=cache, timeouts=Timeouts(command=0.2))
            await cache.close()
        assert delivered(first)
        assert second.failure == "timeout (0.2s) in MAIL FROM"
        assert peer.connections == 1
        assert cache.idle == 0

    asyncio.run(run())


@pytest.mark.parametrize(
    ("verb", "reply", "dialogue", "kept"),
    [
        ("RCPT", "550 5.1.1 nobody", ["EHLO", "MAIL", "RCPT", "RCPT", "RSET"], True),
        ("MAIL", "550 5.7.1 sender refused", ["EHLO", "MAIL", "RSET"], True),
        ("DATA", "554 5.5.1 no", ["EHLO", "MAIL", "RCPT", "RCPT", "DATA", "RSET"], True),
        ("RCPT", "421 4.3.2 shutting down", ["EHLO", "MAIL", "RCPT"], False),
    ],
)
def test_a_transaction_that_ends_early_is_reset_before_reuse(
    pki: Pki, verb: str, reply: str, dialogue: list[str], kept: bool
) -> None:
    async def run() -> None:
        peer = RawPeer(lambda c: serve(c, replies={verb: reply}))
        cache = ConnectionCache()
        async with peer.serving("127.0.55.70") as port:
            to = target(port, "127.0.55.70", PLAINTEXT)
            outcome = await send(to, pki.client(), recipients=RCPTS[:2], cache=cache)
            assert peer.commands() == dialogue
            assert cache.idle == (1 if kept else 0)
            await send(to, pki.client(), cache=cache)
            await cache.close()
        code = int(reply.split(" ", 1)[0])
        if verb == "RCPT" and code == 550:
            assert {r.code for r in outcome.recipients.values()} == {550}
        else:
            assert outcome.failure_reply is not None
            assert outcome.failure_reply.code == code
        assert peer.connections == (1 if kept else 2)

    asyncio.run(run())


def test_dane_sessions_are_never_cached(pki: Pki) -> None:
    async def run() -> None:
        handler = Handler()
        connections: list[SMTP] = []
        checked: list[bytes] = []

        def leaf_check(der: bytes) -> bool:
            checked.append(der)
            return True

        cache = ConnectionCache()
        tls = TlsRequirement("required", "dane", leaf_check=leaf_check, reason="dane")
        stranger = trustme.CA().issue_cert("mx.test")
        async with smtpd(
            handler, "127.0.55.71", starttls=pki.server(stranger), connections=connections
        ) as port:
            to = target(port, "127.0.55.71", tls)
            outcomes = [await send(to, pki.client(), cache=cache) for _ in range(2)]
            assert cache.idle == 0
            await cache.close()
        assert all(delivered(outcome) for outcome in outcomes)
        assert len(connections) == 2
        assert len(checked) == 2
        assert handler.quits == 2

    asyncio.run(run())


def test_close_quits_idle_sessions_and_the_cache_stays_usable(pki: Pki) -> None:
    async def run() -> None:
        peer = RawPeer(serve)
        cache = ConnectionCache()
        async with peer.serving("127.0.55.72") as port:
            to = target(port, "127.0.55.72", PLAINTEXT)
            assert delivered(await send(to, pki.client(), cache=cache))
            assert "QUIT" not in peer.commands()
            await cache.close()
            assert peer.commands()[-1] == "QUIT"
            assert cache.idle == 0
            assert delivered(await send(to, pki.client(), cache=cache))
            assert cache.idle == 1
            await cache.close()
        assert peer.connections == 2
        assert peer.commands().count("QUIT") == 2

    asyncio.run(run())


@pytest.mark.parametrize(("per_key", "total", "idle"), [(20, 100, 2), (1, 100, 1), (20, 1, 1)])
def test_concurrent_deliveries_never_share_a_session(
    pki: Pki, per_key: int, total: int, idle: int
) -> None:
    async def run() -> None:
        both_in_data = asyncio.Event()
        in_data = 0

        async def wait_for_both(conn: RawConnection) -> None:
            nonlocal in_data
            await conn.send("220 raw.test ESMTP")
            while (line := await conn.line()) is not None:
                if line == "DATA":
                    in_data += 1
                    if in_data == 2:
                        both_in_data.set()
                    await both_in_data.wait()  # both transactions are in flight at once
                if not await answer(conn, line):
                    return

        peer = RawPeer(wait_for_both)
        cache = ConnectionCache(per_key=per_key, total=total)
        async with peer.serving("127.0.55.73") as port:
            to = target(port, "127.0.55.73", PLAINTEXT)
            outcomes = list(
                await asyncio.gather(
                    send(to, pki.client(), message=message(1), cache=cache),
                    send(to, pki.client(), message=message(2), cache=cache),
                )
            )
            assert peer.connections == 2
            assert cache.idle == idle
            outcomes.append(await send(to, pki.client(), message=message(3), cache=cache))
            await cache.close()
        assert all(delivered(outcome) for outcome in outcomes)
        assert peer.connections == 2
        assert sorted(peer.data) == sorted(data_payload(message(n)) for n in (1, 2, 3))
        assert peer.commands().count("QUIT") == 2

    asyncio.run(run())


@pytest.mark.parametrize(
    "limit", ["idle_time", "max_age", "max_transactions", "per_key", "total", "quit_timeout"]
)
def test_connection_cache_refuses_limits_that_are_not_positive(limit: str) -> None:
    with pytest.raises(ValueError, match=f"connection cache {limit} must be positive"):
        ConnectionCache(**{limit: 0})  # type: ignore[arg-type]

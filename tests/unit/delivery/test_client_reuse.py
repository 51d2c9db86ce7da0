"""Tests for `deliver` on cached sessions: the next transaction, dead sessions, RSET before reuse.

Loopback addresses 127.0.55.61-127.0.55.90 are shared with test_connections.py.
"""

from __future__ import annotations

import asyncio

import pytest
from aiosmtpd.smtp import SMTP
from tests.unit.delivery.client_peers import (
    PLAINTEXT,
    RCPTS,
    Handler,
    Pki,
    RawConnection,
    RawPeer,
    answer,
    delivered,
    message,
    send,
    serve,
    smtpd,
    target,
)

from sendgate.delivery.connections import ConnectionCache
from sendgate.delivery.payload import data_payload
from sendgate.delivery.target import Timeouts

# --- connection reuse (127.0.55.61 - 127.0.55.90) -----------------------------------------------


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

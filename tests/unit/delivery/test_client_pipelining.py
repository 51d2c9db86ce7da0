"""Tests for PIPELINING to the next hop (RFC 2920): MAIL, RCPT and DATA go in one write.

The peers here answer nothing before they have read the whole group, so a client that waited
for each reply would time out. Addresses 127.0.57.1-127.0.57.20 (this module only).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import pytest
from tests.unit.delivery.client_peers import (
    MESSAGE,
    PLAINTEXT,
    RCPTS,
    Pki,
    RawConnection,
    RawPeer,
    answer,
    delivered,
    message,
    send,
    target,
)

from sendgate.delivery.connections import ConnectionCache
from sendgate.delivery.target import RemoteReply

PIPELINING = ("8BITMIME", "PIPELINING")


def grouped(
    replies: Mapping[str, str] | None = None,
    *,
    rcpt: Sequence[str] = (),
    after_dot: str = "250 2.0.0 queued",
) -> RawPeer:
    """A peer that reads MAIL .. DATA before it answers any of them.

    `rcpt` gives the replies to the RCPTs in order (250 for the rest); `replies` overrides
    MAIL or DATA; a 354 to DATA is followed by reading the data and answering `after_dot`.
    """
    replies = replies or {}

    async def script(conn: RawConnection) -> None:
        await conn.send("220 raw.test ESMTP")
        while (line := await conn.line()) is not None:
            if not line.upper().startswith("MAIL"):
                if not await answer(conn, line, extensions=PIPELINING):
                    return
                continue
            group = [line]
            while not group[-1].upper().startswith("DATA"):
                more = await conn.line()
                if more is None:
                    return
                group.append(more)
            out = [replies.get("MAIL", "250 2.1.0 ok")]
            rcpt_replies = list(rcpt) + ["250 2.1.5 ok"] * (len(group) - 2 - len(rcpt))
            out += rcpt_replies
            out.append(replies.get("DATA", "354 go ahead"))
            await conn.send(*out)
            if any(reply.startswith("421") for reply in out):
                return  # closing, as a server that says 421 does
            if out[-1].startswith("354"):
                # Line by line: an empty message is a lone dot right after DATA's CRLF.
                data = b""
                while (raw := await conn.reader.readline()) != b".\r\n":
                    if not raw:
                        return  # the client went away without ending the data
                    data += raw
                conn.peer.data.append(data + b".\r\n")
                await conn.send(after_dot)

    return RawPeer(script)


def test_the_transaction_goes_in_two_writes_and_is_delivered(pki: Pki) -> None:
    async def run() -> None:
        peer = grouped()
        async with peer.serving("127.0.57.1") as port:
            outcome = await send(target(port, "127.0.57.1", PLAINTEXT), pki.client())
        assert delivered(outcome)
        assert peer.commands()[:4] == ["EHLO", "MAIL", "RCPT", "DATA"]
        assert peer.data == [MESSAGE + b".\r\n"]

    asyncio.run(run())


def test_each_recipient_gets_its_own_reply(pki: Pki) -> None:
    async def run() -> None:
        peer = grouped(rcpt=["250 ok", "550 5.1.1 gone", "450 4.2.1 busy", "250 ok"])
        async with peer.serving("127.0.57.2") as port:
            outcome = await send(
                target(port, "127.0.57.2", PLAINTEXT), pki.client(), recipients=RCPTS
            )
        assert outcome.recipients == {
            "ok1@mx.test": RemoteReply(250, "2.0.0 queued"),
            "gone@mx.test": RemoteReply(550, "5.1.1 gone"),
            "later@mx.test": RemoteReply(450, "4.2.1 busy"),
            "ok2@mx.test": RemoteReply(250, "2.0.0 queued"),
        }

    asyncio.run(run())


def test_a_data_accepted_without_recipients_is_ended_with_a_lone_dot(pki: Pki) -> None:
    async def run() -> None:
        peer = grouped(rcpt=["550 5.1.1 gone"], after_dot="554 5.5.1 no valid recipients")
        async with peer.serving("127.0.57.3") as port:
            outcome = await send(target(port, "127.0.57.3", PLAINTEXT), pki.client())
        assert outcome.recipients == {"rcpt@mx.test": RemoteReply(550, "5.1.1 gone")}
        assert outcome.failure is None
        assert peer.data == [b".\r\n"]  # the message itself was never sent

    asyncio.run(run())


@pytest.mark.parametrize(
    ("replies", "rcpt", "failure_reply"),
    [
        ({"MAIL": "550 5.7.1 sender refused", "DATA": "503 5.5.1 no"}, ["503 5.5.1 no"], 550),
        ({}, ["421 4.3.2 closing"], 421),
        ({"DATA": "451 4.3.0 try later"}, [], 451),
    ],
)
def test_a_reply_that_fails_the_transaction(
    pki: Pki, replies: dict[str, str], rcpt: list[str], failure_reply: int
) -> None:
    async def run() -> None:
        peer = grouped(replies, rcpt=rcpt)
        async with peer.serving("127.0.57.4") as port:
            outcome = await send(target(port, "127.0.57.4", PLAINTEXT), pki.client())
        assert outcome.failure_reply is not None
        assert outcome.failure_reply.code == failure_reply
        assert all(MESSAGE not in data for data in peer.data)

    asyncio.run(run())


@pytest.mark.parametrize(
    "bad",
    ["25O ok", "250" + "x" * 3000, "199 too low", "250-first\r\n251 second differs"],
)
def test_a_malformed_reply_ends_the_session(pki: Pki, bad: str) -> None:
    async def run() -> None:
        peer = grouped({"MAIL": bad})
        async with peer.serving("127.0.57.5") as port:
            outcome = await send(target(port, "127.0.57.5", PLAINTEXT), pki.client())
        assert outcome.failure == "malformed reply in MAIL FROM"
        assert all(MESSAGE not in data for data in peer.data)

    asyncio.run(run())


def test_a_multiline_reply_is_joined(pki: Pki) -> None:
    async def run() -> None:
        peer = grouped(rcpt=["550-5.1.1 no such user\r\n550 5.1.1 see the docs"])
        async with peer.serving("127.0.57.6") as port:
            outcome = await send(
                target(port, "127.0.57.6", PLAINTEXT), pki.client(), recipients=RCPTS[:2]
            )
        refused = outcome.recipients["ok1@mx.test"]
        assert refused.code == 550
        assert "no such user" in refused.text
        assert "see the docs" in refused.text
        assert outcome.recipients["gone@mx.test"] == RemoteReply(250, "2.0.0 queued")

    asyncio.run(run())


def test_the_server_closing_mid_group_is_a_lost_connection(pki: Pki) -> None:
    async def script(conn: RawConnection) -> None:
        await conn.send("220 raw.test ESMTP")
        while (line := await conn.line()) is not None:
            if line.upper().startswith("MAIL"):
                await conn.send("250 2.1.0 ok")
                return  # closes after the first reply of the group
            await answer(conn, line, extensions=PIPELINING)

    async def run() -> None:
        peer = RawPeer(script)
        async with peer.serving("127.0.57.7") as port:
            outcome = await send(target(port, "127.0.57.7", PLAINTEXT), pki.client())
        assert outcome.failure == "connection lost in RCPT TO"

    asyncio.run(run())


def test_a_cached_session_carries_the_next_pipelined_transaction_then_quits(pki: Pki) -> None:
    async def run() -> None:
        peer = grouped()
        cache = ConnectionCache()
        async with peer.serving("127.0.57.8") as port:
            to = target(port, "127.0.57.8", PLAINTEXT)
            first = await send(to, pki.client(), message=message(1), cache=cache)
            second = await send(to, pki.client(), message=message(2), cache=cache)
            assert cache.idle == 1
            await cache.close()  # aiosmtplib has the transport back: its QUIT is answered
        assert delivered(first)
        assert delivered(second)
        assert peer.connections == 1
        assert peer.commands() == ["EHLO", "MAIL", "RCPT", "DATA", "MAIL", "RCPT", "DATA", "QUIT"]
        assert peer.data == [message(1) + b".\r\n", message(2) + b".\r\n"]

    asyncio.run(run())

"""Tests for `deliver`: the transaction, broken peers and misuse, against real peers on loopback.

Addresses 127.0.55.1-127.0.55.60 are shared with test_client_tls.py (each test its own).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from tests.unit.delivery.client_peers import (
    MESSAGE,
    OPPORTUNISTIC,
    RCPTS,
    Handler,
    Pki,
    RawConnection,
    RawPeer,
    answer,
    delivered,
    send,
    serve,
    smtpd,
    target,
)

from sendgate.delivery.client import deliver
from sendgate.delivery.target import MAX_REPLY_TEXT, RemoteReply, Target, Timeouts

# --- the transaction ----------------------------------------------------------------------------


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


# --- arguments ---------------------------------------------------------------------------------


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

"""Tests for `deliver` with the sender's DSN requests (RFC 3461) and REQUIRETLS (RFC 8689).

Peers are aiosmtpd offering the extensions (tests.peers.smtp_extensions) or hand-written ones,
on loopback 127.0.58.x.
"""

from __future__ import annotations

import asyncio

import pytest
from tests.unit.delivery.client_peers import (
    Handler,
    Pki,
    RawPeer,
    delivered,
    send,
    serve,
    smtpd,
    target,
)

from sendgate.delivery.payload import DsnRequest
from sendgate.delivery.target import Outcome, TlsRequirement
from sendgate.smtp.dsn import RcptParameters

PKIX = TlsRequirement("required", "pkix", names=("mx.test",), reason="requiretls")
UNVERIFIED = TlsRequirement("required", "none", reason="dane (unusable TLSA)")
REQUEST = DsnRequest(
    ret="HDRS",
    envid="QQ 3+1",
    recipients={"rcpt@mx.test": RcptParameters(("SUCCESS", "FAILURE"), "rfc822;Rcpt@mx.test")},
)


def test_dsn_requests_go_to_a_host_that_offers_dsn(pki: Pki) -> None:
    async def run() -> Outcome:
        handler = Handler()
        async with smtpd(handler, "127.0.58.1", dsn=True) as port:
            outcome = await send(
                target(port, "127.0.58.1"),
                pki.client(),
                recipients=("rcpt@mx.test", "other@mx.test"),
                dsn=REQUEST,
            )
        [message] = handler.messages
        assert message.mail_params == ("RET=HDRS", "ENVID=QQ+203+2B1")
        assert message.rcpt_params == {
            "rcpt@mx.test": ("NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;Rcpt@mx.test"),
            # Without an ORCPT of the sender's, the address as given (RFC 3461 4.2).
            "other@mx.test": ("ORCPT=rfc822;other@mx.test",),
        }
        return outcome

    outcome = asyncio.run(run())
    assert delivered(outcome, ("rcpt@mx.test", "other@mx.test"))
    assert outcome.dsn


def test_dsn_requests_are_not_sent_to_a_host_without_dsn(pki: Pki) -> None:
    async def run() -> None:
        peer = RawPeer(serve)
        async with peer.serving("127.0.58.2") as port:
            outcome = await send(target(port, "127.0.58.2"), pki.client(), dsn=REQUEST)
        assert delivered(outcome)
        assert not outcome.dsn  # the sender may be owed a "relayed" report
        mail, rcpt = (line for line in peer.lines if line.startswith(("MAIL", "RCPT")))
        assert mail == "MAIL FROM:<sender@client.test>"
        assert rcpt == "RCPT TO:<rcpt@mx.test>"

    asyncio.run(run())


def test_requiretls_goes_over_verified_tls_to_a_host_offering_it(pki: Pki) -> None:
    async def run() -> None:
        handler = Handler()
        async with smtpd(
            handler, "127.0.58.3", starttls=pki.server(pki.mx), requiretls=True
        ) as port:
            outcome = await send(target(port, "127.0.58.3", PKIX), pki.client(), requiretls=True)
        assert delivered(outcome)
        [message] = handler.messages
        assert message.tls
        assert message.mail_params == ("REQUIRETLS",)

    asyncio.run(run())


@pytest.mark.parametrize(
    ("tls", "offers", "problem"),
    [
        (PKIX, False, "mx.test does not offer REQUIRETLS, which this message requires"),
        (UNVERIFIED, True, "the certificate of mx.test was not verified"),
    ],
)
def test_requiretls_refuses_a_host_that_cannot_promise_it(
    pki: Pki, tls: TlsRequirement, offers: bool, problem: str
) -> None:
    async def run() -> None:
        handler = Handler()
        async with smtpd(
            handler, "127.0.58.4", starttls=pki.server(pki.mx), requiretls=offers
        ) as port:
            outcome = await send(target(port, "127.0.58.4", tls), pki.client(), requiretls=True)
        assert handler.mails == []  # refused before MAIL FROM
        [reply] = outcome.recipients.values()
        assert reply.code == 550
        assert reply.text.startswith("5.7.30 (local) ")
        assert problem in reply.text

    asyncio.run(run())


def test_requiretls_never_falls_back_to_plaintext(pki: Pki) -> None:
    async def run() -> None:
        peer = RawPeer(serve)  # no STARTTLS at all
        opportunistic = TlsRequirement("opportunistic", "none")
        async with peer.serving("127.0.58.5") as port:
            outcome = await send(
                target(port, "127.0.58.5", opportunistic), pki.client(), requiretls=True
            )
        assert "MAIL" not in peer.commands()
        [reply] = outcome.recipients.values()
        assert reply.text == (
            "5.7.30 (local) no TLS with mx.test, and the message requires TLS (REQUIRETLS)"
        )

    asyncio.run(run())

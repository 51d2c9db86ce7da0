"""Tests for `deliver`'s TLS policy and AUTH against real peers on loopback (127.0.55.x)."""

from __future__ import annotations

import asyncio
import ssl

import pytest
import trustme
from tests.unit.delivery.client_peers import (
    MESSAGE,
    PLAINTEXT,
    Handler,
    Pki,
    RawConnection,
    RawPeer,
    alice_only,
    answer,
    delivered,
    send,
    serve,
    smtpd,
    target,
)

from sendgate.delivery.target import TlsRequirement

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

"""Tests for sendgate.server.connection: admission, caps, TLS on 465 and 587, timeouts, errors.

Each test drives a live Worker (see conftest.py) with real sockets and real TLS, once on
asyncio's event loop and once on uvloop.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import socket
import ssl
import threading
from dataclasses import dataclass, field

import pytest
from tests.support.tls import client_hello
from tests.support.waiting import wait_until
from tests.unit.server.conftest import (
    HOSTNAME,
    Admissions,
    Client,
    Handler,
    LiveWorker,
    ServeFactory,
    read_to_close,
)

from sendgate.server.caps import ConnectionCaps
from sendgate.server.worker import Timeouts
from sendgate.smtp.events import MailFrom, MessageReceived

CONN = r"conn=c\d+ client=127\.0\.0\.1"
MESSAGE = b"From: a@example.test\r\nSubject: t\r\n\r\nbody\r\n.\r\n"


def greeted(client: Client) -> Client:
    banner = client.reply()
    assert (banner.code, banner.text) == (220, f"{HOSTNAME} ESMTP ready")
    return client


def send_message(client: Client) -> None:
    assert client.command("EHLO client.example").code == 250
    assert client.command("MAIL FROM:<a@example.test>").code == 250
    assert client.command("RCPT TO:<b@example.org>").code == 250
    assert client.command("DATA").code == 354
    client.send(MESSAGE)


def no_bytes_yet(sock: socket.socket) -> bool:
    """True when nothing has arrived so far (a peek that does not wait)."""
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(timeout)
    return False


# --- admitted clients --------------------------------------------------------------------------


def test_587_serves_a_transaction_and_logs_the_connection(serve: ServeFactory) -> None:
    live = serve()
    with greeted(live.client()) as client:
        send_message(client)
        assert client.reply().text == "queued as TEST"
        assert client.command("QUIT").code == 221
        assert client.closed() == b""
    live.log.wait_for(rf"event=disconnect {CONN} errors=0$")
    assert live.log.matching(rf"event=connect {CONN} tls=starttls$")
    assert live.admissions.asked == [("127.0.0.1", live.admissions.asked[0][1])]
    assert [type(e) for e in live.admissions.handler.events][-1] is MessageReceived
    assert live.caps.active() == 0


def test_465_banner_comes_over_tls_even_when_the_client_hello_comes_at_once(
    serve: ServeFactory,
) -> None:
    live = serve()
    for _ in range(5):  # wrap_socket sends its ClientHello right after the connect
        with greeted(live.tls_client()) as client:
            ehlo = client.command("EHLO client.example")
            assert ehlo.code == 250
            assert client.command("QUIT").code == 221
    tls = live.log.wait_for(
        rf"event=tls {CONN} version=TLSv1\.3 cipher=\S+ resumed=(true|false) seconds=\d+\.\d{{3}}$"
    )
    assert tls
    assert len(live.log.matching(rf"event=connect {CONN} tls=implicit$")) == 5


def test_465_session_knows_it_is_encrypted(serve: ServeFactory) -> None:
    live = serve()
    with greeted(live.tls_client()) as client:
        ehlo = client.command("EHLO client.example").texts
    assert "STARTTLS" not in ehlo
    assert any(text.startswith("AUTH ") for text in ehlo)


# --- refusals ----------------------------------------------------------------------------------


def test_587_refusal_is_sent_in_plaintext_and_the_connection_closed(serve: ServeFactory) -> None:
    live = serve(Admissions(mode="refuse"))
    with live.client() as client:
        refusal = client.reply()
        assert (refusal.code, refusal.enhanced, refusal.text) == (421, "4.7.0", "Not now")
        assert client.closed() == b""
    live.log.wait_for(rf'event=refused {CONN} reason=admission code="421 4\.7\.0"$')
    live.log.wait_for(rf"event=disconnect {CONN} errors=0$")
    assert live.admissions.handler.events == []
    assert live.caps.active() == 0


def test_465_refusal_gets_no_handshake_at_all(serve: ServeFactory) -> None:
    live = serve(Admissions(mode="refuse"))
    with live.raw_tls_client() as sock:
        with contextlib.suppress(OSError):  # already closed by the server: just as good
            sock.sendall(client_hello())
        assert read_to_close(sock) == b""  # not one byte of a ServerHello
    live.log.wait_for(rf'event=refused {CONN} reason=admission code="421 4\.7\.0"$')
    live.log.wait_for(rf"event=disconnect {CONN} errors=0$")
    assert not live.log.matching(r"event=tls")


def test_admission_decided_later_keeps_an_early_talkers_bytes(serve: ServeFactory) -> None:
    admissions = Admissions(mode="later")
    live = serve(admissions)
    with live.client() as client:
        client.send(b"EHLO early.example\r\n")  # before the banner: held, not lost
        assert admissions.asking.wait(10)
        assert no_bytes_yet(client.sock)
        admissions.gate.open()
        greeted(client)
        assert client.reply().code == 250
        assert client.command("NOOP").code == 250


def test_465_admission_decided_later_then_the_handshake(serve: ServeFactory) -> None:
    admissions = Admissions(mode="later")
    live = serve(admissions)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        connecting = pool.submit(live.tls_client)  # blocks in the handshake until admitted
        assert admissions.asking.wait(10)
        assert not live.log.matching(r"event=tls")
        admissions.gate.open()
        with greeted(connecting.result(10)) as client:
            assert client.command("NOOP").code == 250


def test_refusal_decided_later(serve: ServeFactory) -> None:
    admissions = Admissions(mode="later_refuse")
    admissions.gate.open()
    live = serve(admissions)
    with live.client() as client:
        assert client.reply().code == 421
        assert client.closed() == b""
    live.log.wait_for(rf'event=refused {CONN} reason=admission code="421 4\.7\.0"$')


@pytest.mark.parametrize("mode", ["raise", "later_raise"])
def test_a_factory_that_raises_costs_one_connection(serve: ServeFactory, mode: str) -> None:
    admissions = Admissions(mode="raise" if mode == "raise" else "later_raise")
    admissions.gate.open()
    live = serve(admissions)
    with live.client() as client:
        reply = client.reply()
        assert (reply.code, reply.enhanced) == (421, "4.3.0")
        assert client.closed() == b""
    with live.raw_tls_client() as sock:
        assert read_to_close(sock) == b""
    live.log.wait_for(rf"event=admission_error {CONN} error=\"RuntimeError\(.*\)\"$", count=2)
    admissions.mode = "admit"
    with greeted(live.client()) as client:
        assert client.command("NOOP").code == 250
    with greeted(live.tls_client()) as client:
        assert client.command("NOOP").code == 250


# --- connection caps ---------------------------------------------------------------------------


def test_caps_refuse_before_admission_on_both_ports(serve: ServeFactory) -> None:
    live = serve(caps=ConnectionCaps(1, max_total=1, max_per_ip=1))
    with greeted(live.client()) as first:
        with live.client() as second:
            reply = second.reply()
            assert (reply.code, reply.enhanced) == (421, "4.7.0")
            assert second.closed() == b""
        with live.raw_tls_client() as third:
            third.sendall(client_hello())
            assert read_to_close(third) == b""
        live.log.wait_for(rf"event=refused {CONN} reason=connection_cap$", count=2)
        assert len(live.admissions.asked) == 1  # the refused ones were never asked about
        assert first.command("NOOP").code == 250


# --- timeouts ----------------------------------------------------------------------------------


def test_idle_client_is_told_and_closed(serve: ServeFactory) -> None:
    live = serve(timeouts=Timeouts(command=0.2, session=60, reload_interval=0))
    with greeted(live.client()) as client:
        reply = client.reply()  # arrives once the server gives up on us
        assert (reply.code, reply.enhanced) == (421, "4.4.2")
        assert reply.text.startswith("Idle timeout")
        assert client.closed() == b""
    live.log.wait_for(rf"event=timeout {CONN} kind=idle$")
    live.log.wait_for(rf"event=disconnect {CONN} errors=0$")


def test_session_time_limit(serve: ServeFactory) -> None:
    live = serve(timeouts=Timeouts(command=30, session=0.3, reload_interval=0))
    with greeted(live.tls_client()) as client:
        reply = client.reply()
        assert (reply.code, reply.enhanced) == (421, "4.4.2")
        assert reply.text.startswith("Session time limit")
    live.log.wait_for(rf"event=timeout {CONN} kind=session$")


def test_465_silent_client_fails_the_handshake_timeout(serve: ServeFactory) -> None:
    live = serve(timeouts=Timeouts(command=30, session=60, handshake=0.2, reload_interval=0))
    with live.raw_tls_client() as sock:
        assert read_to_close(sock) == b""
    live.log.wait_for(rf"event=tls_failed {CONN} error=\w+ detail=")
    live.log.wait_for(rf"event=disconnect {CONN} errors=0$")
    assert live.caps.active() == 0


# --- TLS ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("junk", [b"\x16\x03\x01\x00\x05garbage" * 20, b"EHLO client.example\r\n"])
def test_465_failed_handshake_is_logged_and_frees_the_slot(
    serve: ServeFactory, junk: bytes
) -> None:
    live = serve()
    with live.raw_tls_client() as sock:
        sock.sendall(junk)
        read_to_close(sock)
    live.log.wait_for(rf"event=tls_failed {CONN} error=SSLError detail=")
    live.log.wait_for(rf"event=disconnect {CONN} errors=0$")
    assert live.caps.active() == 0
    with greeted(live.tls_client()) as client:
        assert client.command("NOOP").code == 250


def test_starttls_discards_pipelined_plaintext(serve: ServeFactory) -> None:
    live = serve()
    with greeted(live.client()) as client:
        assert client.command("EHLO client.example").code == 250
        client.send(b"STARTTLS\r\nMAIL FROM:<injected@example.test>\r\n")
        assert client.reply().code == 220
        client.starttls(live.client_ctx)
        assert client.command("EHLO client.example").code == 250
        reply = client.command("RCPT TO:<b@example.org>")
        assert (reply.code, reply.enhanced) == (503, "5.5.1")  # no MAIL was ever accepted
    live.log.wait_for(rf"event=starttls_injection {CONN} discarded=\d+$")
    live.log.wait_for(rf"event=tls {CONN} version=")
    assert not any(isinstance(e, MailFrom) for e in live.admissions.handler.events)


def test_a_command_sent_with_the_tls_finished_message_is_answered(serve: ServeFactory) -> None:
    # The client's last handshake flight and its first command over TLS in one segment:
    # asyncio's TLS layer hands the command over before start_tls returns.
    live = serve()
    with greeted(live.client()) as client:
        assert client.command("EHLO client.example").code == 250
        assert client.command("STARTTLS").code == 220
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = live.client_ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                client.sock.sendall(outgoing.read())
                incoming.write(client.sock.recv(65536))
        tls.write(b"EHLO client.example\r\n")
        client.sock.sendall(outgoing.read())  # Finished and the EHLO together
        received = b""
        while b"\r\n250 " not in b"\r\n" + received:
            chunk = client.sock.recv(65536)
            assert chunk, f"closed after {received!r}"
            incoming.write(chunk)
            with contextlib.suppress(ssl.SSLWantReadError):
                while piece := tls.read(65536):
                    received += piece
    assert received.startswith(b"250-")
    assert not live.log.matching(r"event=starttls_injection ")


def test_587_failed_starttls_handshake_is_logged(serve: ServeFactory) -> None:
    live = serve()
    with greeted(live.client()) as client:
        assert client.command("EHLO client.example").code == 250
        assert client.command("STARTTLS").code == 220
        client.send(b"\x16\x03\x01\x00\x05garbage" * 20)
        read_to_close(client.sock)
    live.log.wait_for(rf"event=tls_failed {CONN} error=SSLError detail=")


# --- handler errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("when", ["now", "later"])
def test_handler_exception_gets_the_local_error_reply(serve: ServeFactory, when: str) -> None:
    admissions = Admissions()
    admissions.handler.raising[MailFrom] = "now" if when == "now" else "later"
    live = serve(admissions)
    with greeted(live.client()) as client:
        assert client.command("EHLO client.example").code == 250
        reply = client.command("MAIL FROM:<a@example.test>")
        assert (reply.code, reply.enhanced) == (451, "4.3.0")
        assert client.command("NOOP").code == 250
    live.log.wait_for(r"event=handler_error conn=c\d+ error=\"RuntimeError\(")
    with greeted(live.client()) as client:
        assert client.command("NOOP").code == 250


def test_client_reset_mid_transaction_frees_the_slot(serve: ServeFactory) -> None:
    admissions = Admissions()
    admissions.handler.gated.add(MessageReceived)
    live: LiveWorker = serve(admissions)
    client = greeted(live.client())
    send_message(client)
    assert admissions.handler.waiting.wait(10)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    client.sock.close()  # RST while the handler still works
    # Reading is paused until the answer, so the reset may show only when the answer is sent.
    admissions.handler.gate.open()
    live.log.wait_for(rf"event=disconnect {CONN} errors=0$")
    assert live.caps.active() == 0
    with greeted(live.client()) as other:
        assert other.command("NOOP").code == 250


def test_client_ctx_rejects_an_untrusted_server(serve: ServeFactory) -> None:
    live = serve()
    with (
        socket.create_connection(("127.0.0.1", live.tls_port), 10) as sock,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        ssl.create_default_context().wrap_socket(sock, server_hostname="localhost")
    live.log.wait_for(rf"event=tls_failed {CONN} error=")


# --- large bodies streamed to a sink: never left open behind a connection ---


class RecordingSink:
    def __init__(self) -> None:
        self.written = 0
        self.discarded = threading.Event()

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def discard(self) -> None:
        self.discarded.set()


@dataclass
class SpillingHandler(Handler):
    """The conftest handler, taking large bodies into recording sinks."""

    sinks: list[RecordingSink] = field(default_factory=list)

    def open_body(self) -> RecordingSink:
        self.sinks.append(RecordingSink())
        return self.sinks[-1]


LARGE = b"From: a@example.test\r\nSubject: big\r\n\r\n" + b"x" * 70 + b"\r\n"


def start_large_message(client: Client) -> None:
    assert client.command("EHLO client.example").code == 250
    assert client.command("MAIL FROM:<a@example.test>").code == 250
    assert client.command("RCPT TO:<b@example.test>").code == 250
    assert client.command("DATA").code == 354
    client.send(LARGE * 6000)  # 430 KB: past the spill threshold


def test_a_client_reset_mid_data_lets_go_of_the_spilled_body(serve: ServeFactory) -> None:
    handler = SpillingHandler()
    live: LiveWorker = serve(Admissions(handler=handler))
    client = greeted(live.client())
    start_large_message(client)
    assert wait_until(lambda: bool(handler.sinks) and handler.sinks[0].written > 0)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    client.sock.close()  # RST in the middle of the message
    live.log.wait_for(rf"event=disconnect {CONN} errors=0$")
    assert handler.sinks[0].discarded.wait(10)


def test_a_spilled_body_the_handler_leaves_is_discarded_once_it_answered(
    serve: ServeFactory,
) -> None:
    handler = SpillingHandler()
    handler.gated.add(MessageReceived)  # answered later, without touching the body
    live: LiveWorker = serve(Admissions(handler=handler))
    with greeted(live.client()) as client:
        start_large_message(client)
        client.send(b".\r\n")
        assert handler.waiting.wait(10)
        assert not handler.sinks[0].discarded.is_set()  # the handler owns it while deciding
        handler.gate.open()
        assert client.reply().code == 250
        assert handler.sinks[0].discarded.wait(10)

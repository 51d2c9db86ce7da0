"""Tests for sendgate.server.worker: graceful stop, the grace period, TLS reloads, loop errors.

Each test drives a live Worker (see conftest.py) on asyncio's event loop and on uvloop.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import resource
import socket
import ssl
from pathlib import Path

import trustme
from tests.unit.server.conftest import (
    WAIT,
    Admissions,
    CertPair,
    Client,
    LiveWorker,
    ServeFactory,
    read_to_close,
)

from sendgate.server.worker import Timeouts
from sendgate.smtp.events import MessageReceived

MESSAGE = b"From: a@example.test\r\n\r\nbody\r\n.\r\n"


def greeted(client: Client) -> Client:
    assert client.reply().code == 220
    assert client.command("EHLO client.example").code == 250
    return client


def start_transaction(client: Client) -> None:
    assert client.command("MAIL FROM:<a@example.test>").code == 250
    assert client.command("RCPT TO:<b@example.org>").code == 250
    assert client.command("DATA").code == 354
    client.send(MESSAGE)


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_stop_tells_idle_clients_and_lets_a_transaction_finish(serve: ServeFactory) -> None:
    admissions = Admissions()
    admissions.handler.gated.add(MessageReceived)
    live = serve(admissions)
    with greeted(live.client()) as busy, greeted(live.client()) as idle:
        start_transaction(busy)
        assert admissions.handler.waiting.wait(10)  # the message is being "stored"

        live.worker.stop_threadsafe()
        reply = idle.reply()
        assert (reply.code, reply.enhanced) == (421, "4.3.2")
        assert idle.closed() == b""
        assert live.running  # still waiting for the transaction

        admissions.handler.gate.open()
        assert busy.reply().text == "queued as TEST"
        reply = busy.reply()
        assert (reply.code, reply.enhanced) == (421, "4.3.2")
        assert busy.closed() == b""
    live.join()
    assert refused(live.port)
    assert refused(live.tls_port)
    assert not live.log.matching(r"event=shutdown_abort")
    assert len(live.log.matching(r"event=disconnect ")) == 2


def test_stop_while_admission_is_pending(serve: ServeFactory) -> None:
    admissions = Admissions(mode="later")
    live = serve(admissions)
    with live.client() as plain, live.raw_tls_client() as tls:
        live.log.wait_for(r"event=connect .*tls=starttls")
        live.log.wait_for(r"event=connect .*tls=implicit")
        live.stop()  # the admissions never came: the 587 client hears why, 465 is just closed
        reply = plain.reply()
        assert (reply.code, reply.enhanced) == (421, "4.3.2")
        assert plain.closed() == b""
        assert read_to_close(tls) == b""
    assert len(live.log.matching(r"event=disconnect ")) == 2


def test_stop_aborts_what_outlives_the_grace_period(serve: ServeFactory) -> None:
    admissions = Admissions()
    admissions.handler.gated.add(MessageReceived)
    live = serve(admissions, timeouts=Timeouts(shutdown_grace=0.2, reload_interval=0))
    with greeted(live.client()) as busy:
        start_transaction(busy)
        assert admissions.handler.waiting.wait(10)
        live.stop()
        assert busy.closed() == b""
    live.log.wait_for(r"event=shutdown_abort connections=1$")


def test_stop_during_a_465_handshake(serve: ServeFactory) -> None:
    live = serve()
    with live.raw_tls_client() as sock:
        live.log.wait_for(r"event=connect .*tls=implicit")  # the handshake waits for a hello
        live.stop()
        assert read_to_close(sock) == b""
    assert not live.log.matching(r"event=tls_failed")  # a stop is no client's failure


def test_certificate_reload_keeps_the_last_good_one(serve: ServeFactory, tmp_path: Path) -> None:
    ca = trustme.CA()
    pair = CertPair(tmp_path / "cert.pem", tmp_path / "key.pem")
    first, second = ca.issue_cert("localhost"), ca.issue_cert("localhost")
    first.private_key_and_cert_chain_pem.write_to_path(str(pair.cert))
    first.private_key_pem.write_to_path(str(pair.key))
    live = serve(pair=pair)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    live.client_ctx = client_ctx
    assert served_certificate(live) == first.cert_chain_pems[0].bytes()

    first.private_key_pem.write_to_path(str(pair.cert))  # a broken chain file
    live.worker.reload_tls(force=True)
    live.log.wait_for(r"level=error event=tls_reload_failed error=")
    assert served_certificate(live) == first.cert_chain_pems[0].bytes()

    second.private_key_and_cert_chain_pem.write_to_path(str(pair.cert))
    second.private_key_pem.write_to_path(str(pair.key))
    live.worker.reload_tls(force=False)
    live.log.wait_for(r"event=tls_reloaded$")
    assert served_certificate(live) == second.cert_chain_pems[0].bytes()
    live.worker.reload_tls(force=False)  # nothing changed since: nothing to do
    assert len(live.log.matching(r"event=tls_reloaded$")) == 1


def served_certificate(live: LiveWorker) -> bytes:
    with live.tls_client() as client:
        assert isinstance(client.sock, ssl.SSLSocket)
        der = client.sock.getpeercert(binary_form=True)
    assert der is not None
    return ssl.DER_cert_to_PEM_cert(der).encode()


def test_an_unexpected_loop_error_is_one_log_line(serve: ServeFactory) -> None:
    live = serve()
    assert live.loop is not None
    loop = live.loop
    live.call(
        lambda: loop.call_exception_handler({"message": "boom", "exception": ValueError("bad")})
    )
    live.log.wait_for(r"event=loop_error message=boom error=ValueError detail=bad$")
    with greeted(live.client()) as client:
        assert client.command("NOOP").code == 250


def test_many_clients_at_once_on_both_ports(serve: ServeFactory) -> None:
    live = serve()
    clients = 8

    def session(implicit: bool) -> int:
        with live.tls_client() if implicit else live.client() as client:
            greeted(client)
            return client.command("QUIT").code

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        codes = list(pool.map(session, [n % 2 == 0 for n in range(clients)]))
    assert codes == [221] * clients
    live.log.wait_for(r"event=disconnect ", count=clients)
    assert live.caps.active() == 0


def test_out_of_descriptors_the_listener_backs_off_then_takes_the_client(
    serve: ServeFactory,
) -> None:
    live = serve()
    sock = socket.socket()  # its descriptor now: none is left once the table is full
    sock.settimeout(WAIT)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers: list[int] = []
    try:
        # Every descriptor number below the new limit taken: the worker's accept gets EMFILE.
        highest = max(int(name) for name in os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
        with contextlib.suppress(OSError):
            while True:
                fillers.append(os.open(os.devnull, os.O_RDONLY))
        sock.connect(("127.0.0.1", live.port))  # the kernel completes it; accept fails
        line = live.log.wait_for(r"event=accept_failed ")
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert "error=OSError" in line
    assert "Too many open files" in line
    # The listener tries again a moment later and serves the client that waited in the backlog.
    with greeted(Client(sock)) as client:
        assert client.command("QUIT").code == 221
    assert len(live.log.matching("event=accept_failed ")) == 1

"""How a live `sendgate serve` behaves at its edges: shutdown, caps, timeouts, reloads, crashes.

Every wait here is on something the server does (a reply, a closed socket, a log event), never
on the clock; the one timeout being tested is configured down to a second.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from cryptography import x509

if TYPE_CHECKING:
    from tests.e2e.conftest import (
        Instance,
        InstanceFactory,
        RawClient,
        ServerFactory,
        ServerProcess,
    )

pytestmark = pytest.mark.e2e

JUNK_TIMEOUT = 3.0  # how long a junk connection may take to be refused


def _peer_serial(sock: socket.socket | None) -> int:
    """The serial number of the certificate the server presented on `sock`."""
    assert isinstance(sock, ssl.SSLSocket)
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _greeted(client: RawClient) -> RawClient:
    reply = client.reply()
    assert reply.code == 220, reply
    return client


# --- graceful shutdown ---------------------------------------------------------------------------


def test_sigterm_lets_a_transaction_finish_and_tells_idle_clients_at_once(
    instance: InstanceFactory, server: ServerFactory
) -> None:
    running = server(instance())
    busy = running.smtp()
    assert busy.mail(running.instance.user)[0] == 250
    assert busy.rcpt("bob@example.org")[0] == 250
    idle = _greeted(running.raw())
    assert idle.command("EHLO client.example").code == 250

    running.send_signal(signal.SIGTERM)

    # The idle client hears at once; that also proves the worker has begun to drain.
    reply = idle.reply()
    assert (reply.code, reply.enhanced) == (421, "4.3.2")
    assert idle.closed_by_server()
    code, text = busy.data(running.instance.message("finished-during-shutdown"))
    assert code == 250, text
    queue_id = text.decode().rsplit(" ", 1)[-1]
    code, text = busy.getreply()
    assert (code, text[:5]) == (421, b"4.3.2")
    assert busy.sock is not None
    assert busy.sock.recv(1) == b""  # then the server closes
    busy.close()  # as a real client does; TLS teardown waits for it
    idle.close()
    assert running.wait() == 0
    assert running.instance.queue_ids() == [queue_id]
    assert running.matching(r"event=stopped code=0")


# --- connection caps and timeouts ----------------------------------------------------------------


def test_per_ip_connection_cap(instance: InstanceFactory, server: ServerFactory) -> None:
    running = server(instance({"limits.max_connections_per_ip": 2}))
    first = _greeted(running.raw())
    second = _greeted(running.raw())

    third = running.raw()
    reply = third.reply()
    assert (reply.code, reply.enhanced) == (421, "4.7.0")
    assert third.closed_by_server()
    running.wait_for(r"event=refused .*reason=connection_cap")

    since = running.mark()
    assert first.command("QUIT").code == 221
    assert first.closed_by_server()
    # The slot is free once the server has logged the disconnect.
    running.wait_for(r"event=disconnect ", since=since)
    fourth = _greeted(running.raw())
    assert fourth.command("NOOP").code == 250
    for client in (first, second, third, fourth):
        client.close()


def test_idle_client_is_timed_out(instance: InstanceFactory, server: ServerFactory) -> None:
    running = server(instance({"limits.command_timeout": 1}))
    client = _greeted(running.raw())
    assert client.command("EHLO client.example").code == 250

    reply = client.reply()  # blocks until the server gives up on us

    assert (reply.code, reply.enhanced) == (421, "4.4.2")
    assert client.closed_by_server()
    running.wait_for(r"event=timeout .*kind=idle")
    client.close()


# --- TLS certificates ----------------------------------------------------------------------------


def _check_reload(running: ServerProcess, made: Instance, trigger: Callable[[], None]) -> None:
    """Replace the certificate, then break it; `trigger` makes the server look at the files.

    A new connection must present the new certificate while an established one keeps working;
    a broken file must leave the last good certificate in use.
    """
    old_serial = x509.load_pem_x509_certificate(made.cert.read_bytes()).serial_number
    with running.smtp() as established:
        assert _peer_serial(established.sock) == old_serial

        since = running.mark()
        new_serial = made.new_certificate()
        trigger()
        done = running.wait_for(r"event=tls_reloaded|Traceback", since=since, count=2)
        assert all("event=tls_reloaded" in line for line in done), done  # one line per worker

        assert new_serial != old_serial
        for _ in range(3):
            with running.smtp(login=False) as fresh:
                assert _peer_serial(fresh.sock) == new_serial
        assert established.noop()[0] == 250

        since = running.mark()
        made.cert.write_text("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
        trigger()
        failed = running.wait_for(r"event=tls_reload_failed|Traceback", since=since, count=2)
        assert all("event=tls_reload_failed" in line for line in failed), failed
        assert str(made.cert) in failed[0]
        with running.smtp() as fresh:
            assert _peer_serial(fresh.sock) == new_serial
            assert running.submit(fresh, made.message("after-failed-reload"))
        assert established.noop()[0] == 250


def test_changed_certificate_files_are_reloaded(
    instance: InstanceFactory, server: ServerFactory
) -> None:
    made = instance({"listen.workers": 2, "tls.reload_interval": 1})
    running = server(made)
    _check_reload(running, made, lambda: None)  # the one-second file check notices


def test_sighup_reloads_the_certificate_and_keeps_connections(
    instance: InstanceFactory, server: ServerFactory
) -> None:
    made = instance({"listen.workers": 2, "tls.reload_interval": 0})
    running = server(made)
    _check_reload(running, made, lambda: running.send_signal(signal.SIGHUP))


def _junk_connection(running: ServerProcess, implicit_tls: bool) -> socket.socket:
    """A connection at the point where the server expects a TLS ClientHello."""
    if implicit_tls:
        return socket.create_connection(("127.0.0.1", running.tls_port), timeout=JUNK_TIMEOUT)
    client = _greeted(running.raw())
    assert client.command("EHLO client.example").code == 250
    assert client.command("STARTTLS").code == 220
    client.sock.settimeout(JUNK_TIMEOUT)
    return client.sock


def _closed_by_server(sock: socket.socket) -> bool:
    """Read until the server closes (a TLS alert may come first); False on a timeout."""
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    return True


@pytest.mark.parametrize("implicit_tls", [False, True], ids=["587", "465"])
def test_broken_handshakes_do_not_affect_the_next_client(
    instance: InstanceFactory, server: ServerFactory, implicit_tls: bool
) -> None:
    running = server(instance())
    for junk in (b"\x16\x03\x01\x00\x05garbage" * 20, b"EHLO client.example\r\n"):
        since = running.mark()
        with _junk_connection(running, implicit_tls) as bad:
            bad.sendall(junk)
            closed = _closed_by_server(bad)
        assert closed, "the server neither failed the handshake nor closed"
        running.wait_for(r"event=tls_failed .*error=SSLError", since=since)

        with running.smtp() as client:
            assert running.submit(client, running.instance.message("after-junk"))
        if implicit_tls:
            with running.smtps(timeout=JUNK_TIMEOUT) as client:
                assert client.noop()[0] == 250


def test_implicit_tls_client_hello_at_once_is_not_lost(
    instance: InstanceFactory, server: ServerFactory
) -> None:
    running = server(instance())
    for _ in range(10):
        with running.smtps(login=False, timeout=2) as client:
            assert client.noop()[0] == 250


# --- STARTTLS injection --------------------------------------------------------------------------


def test_starttls_pipelined_plaintext_is_never_executed(
    instance: InstanceFactory, server: ServerFactory
) -> None:
    running = server(instance())
    made = running.instance
    client = _greeted(running.raw())
    assert client.command("EHLO client.example").code == 250
    injected = b"MAIL FROM:<x@y>\r\n"

    client.send(b"STARTTLS\r\n" + injected)
    reply = client.reply()
    assert (reply.code, reply.enhanced) == (220, "2.0.0")
    client.starttls(made.client_context())  # asserts no plaintext byte followed the 220

    ehlo = client.command("EHLO client.example")
    assert ehlo.code == 250
    assert any(line.startswith("AUTH ") for line in ehlo.lines)  # EHLO's own answer
    assert client.command(f"AUTH PLAIN {made.auth_plain()}").code == 235
    reply = client.command(f"MAIL FROM:<{made.user}>")
    assert (reply.code, reply.enhanced) == (250, "2.1.0")
    assert client.command("RCPT TO:<bob@example.org>").code == 250
    assert client.command("DATA").code == 354
    client.send(made.message("after-injection") + b".\r\n")
    assert client.reply().code == 250
    assert client.command("QUIT").code == 221
    client.close()
    line = running.wait_for(r"event=starttls_injection ")[0]
    assert f"discarded={len(injected)}" in line
    assert running.matching(r"event=rejected ") == []


# --- worker crashes ------------------------------------------------------------------------------


def _submit_one(running: ServerProcess, tag: str) -> str:
    with running.smtp() as client:
        return running.submit(client, running.instance.message(tag))


def test_killed_workers_are_replaced(instance: InstanceFactory, server: ServerFactory) -> None:
    running = server(instance({"listen.workers": 2}))
    first, second = running.worker_pids

    os.kill(first, signal.SIGKILL)
    running.wait_for(rf"event=worker_died .*worker=0 pid={first} code=-9")
    assert _submit_one(running, "one-worker-died")

    # With both original workers gone, only replacements can serve the next client.
    os.kill(second, signal.SIGKILL)
    running.wait_for(rf"event=worker_died .*worker=1 pid={second} code=-9")
    assert _submit_one(running, "both-workers-replaced")
    for pid in (first, second):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert len(running.instance.queue_ids()) == 2
    assert running.running

"""sendgate behind a real HAProxy (Debian's haproxy) in TCP mode: PROXY protocol v1 on 587, v2 on
465. The client's address in the logs, limits and bans is the one HAProxy saw; connections from
outside `listen.proxy_from`, and trusted ones without a valid header, are closed unanswered.

Addresses: HAProxy listens on 127.0.70.1, clients come from 127.0.70.x (x >= 10); sendgate
trusts only 127.0.0.1, where HAProxy's connections to it come from.
"""

from __future__ import annotations

import re
import smtplib
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from tests.support.waiting import wait_until

if TYPE_CHECKING:
    from tests.e2e.conftest import Instance, InstanceFactory, ServerFactory, ServerProcess

pytestmark = pytest.mark.e2e

FRONT = "127.0.70.1"
PROBE = "127.0.70.2"  # the readiness checks' source


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class HaProxy:
    """haproxy in the foreground, forwarding two ports to sendgate with PROXY headers."""

    def __init__(self, directory: Path, running: ServerProcess) -> None:
        self.port = free_port(FRONT)
        self.tls_port = free_port(FRONT)
        config = directory / "haproxy.cfg"
        config.write_text(
            "global\n    maxconn 200\n"
            "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n"
            "    timeout server 60s\n"
            f"frontend submission\n    bind {FRONT}:{self.port}\n    default_backend plain\n"
            f"backend plain\n    server sendgate 127.0.0.1:{running.port} send-proxy\n"
            f"frontend submissions\n    bind {FRONT}:{self.tls_port}\n    default_backend tls\n"
            f"backend tls\n    server sendgate 127.0.0.1:{running.tls_port} send-proxy-v2\n"
        )
        check = subprocess.run(["haproxy", "-c", "-f", str(config)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        self.proc = subprocess.Popen(
            ["haproxy", "-db", "-f", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert wait_until(lambda: self._listening(self.port) and self._listening(self.tls_port))

    @staticmethod
    def _listening(port: int) -> bool:
        try:
            # From an address of its own: HAProxy passes the connection on, and the tests look
            # for their clients' addresses in sendgate's log.
            socket.create_connection((FRONT, port), timeout=1, source_address=(PROBE, 0)).close()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def closed_unanswered(sock: socket.socket) -> bool:
    """True when the server closes `sock` without a byte (a reset counts: nothing was said)."""
    sock.settimeout(10)
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


@pytest.fixture
def behind_haproxy(
    instance: InstanceFactory, server: ServerFactory, tmp_path: Path
) -> Iterator[tuple[Instance, ServerProcess, HaProxy]]:
    made = instance({"listen.proxy_from": ["127.0.0.1/32"]})
    running = server(made)
    proxy = HaProxy(tmp_path, running)
    try:
        yield made, running, proxy
    finally:
        proxy.stop()


def test_the_client_is_the_one_haproxy_saw_on_both_ports(
    behind_haproxy: tuple[Instance, ServerProcess, HaProxy],
) -> None:
    made, running, proxy = behind_haproxy
    context = made.client_context()
    context.check_hostname = False  # the certificate names 127.0.0.1, not HAProxy's address
    with smtplib.SMTP(FRONT, proxy.port, "client.test", 30, ("127.0.70.10", 0)) as client:
        client.starttls(context=context)
        client.ehlo()
        client.login(made.user, made.password)
        queued = running.submit(client, made.message("via haproxy 587"))
    with smtplib.SMTP_SSL(
        FRONT,
        proxy.tls_port,
        "client.test",
        timeout=30,
        context=context,
        source_address=("127.0.70.11", 0),
    ) as client:
        client.login(made.user, made.password)
        running.submit(client, made.message("via haproxy 465"))

    running.wait_for(r"event=connect .*client=127\.0\.70\.10 tls=starttls")
    running.wait_for(r"event=connect .*client=127\.0\.70\.11 tls=implicit")
    running.wait_for(rf"event=accepted .*client=127\.0\.70\.10 .*queue_id={queued}")
    running.wait_for(r"event=auth_ok .*client=127\.0\.70\.11 ")
    # Not one connection was taken to come from the proxy itself.
    assert running.matching(r"event=connect .*client=127\.0\.0\.1 ") == []


def test_untrusted_and_headerless_connections_are_closed_unanswered(
    behind_haproxy: tuple[Instance, ServerProcess, HaProxy],
) -> None:
    _, running, _ = behind_haproxy
    mark = running.mark()
    # From an address outside proxy_from, straight to sendgate: no banner, no TLS.
    for port in (running.port, running.tls_port):
        with socket.create_connection(("127.0.0.1", port), source_address=("127.0.70.20", 0)) as s:
            assert closed_unanswered(s)
    running.wait_for(
        r"event=refused .*client=127\.0\.70\.20 .*reason=proxy_untrusted", since=mark, count=2
    )
    # From the trusted address but without a valid header: a client, not the proxy.
    for sent, detail in [
        (b"EHLO me\r\n", "not a PROXY header"),
        (b"PROXY TCP4 192.0.2.1 192.0.2.2 1 99999\r\n", "not a port"),
        (b"PROXY TCP4 192.0.2.1", "closed before a whole PROXY header"),
        (b"\r\n\r\n\x00\r\nQUIT\n\x21\x12\x00\x00", "not a stream"),
    ]:
        with socket.create_connection(("127.0.0.1", running.port)) as s:
            s.sendall(sent)
            s.shutdown(socket.SHUT_WR)
            assert closed_unanswered(s)
        running.wait_for(
            rf'event=refused .*reason=proxy_header detail="?[^"]*{re.escape(detail)}', since=mark
        )
    # No connection of this test's was served (HAProxy's readiness checks come from PROBE).
    served = running.matching(r"event=connect ", since=mark)
    assert [line for line in served if f"client={PROBE} " not in line] == []

"""The hand-made ClientHello: well-formed (OpenSSL answers it), and the ServerHello read right."""

from __future__ import annotations

import socket
import ssl
import struct
import threading
from collections.abc import Iterator

import pytest
import trustme
from hypothesis import given
from hypothesis import strategies as st
from tests.support.tls import server_context

from sendgate.probe.hello import (
    SSL3,
    SUITES,
    TLS10,
    TLS12,
    Accepted,
    client_hello,
    server_choice,
)


def answer(data: bytes) -> Accepted | None:
    ours, theirs = socket.socketpair()
    ours.settimeout(5)
    theirs.sendall(data)
    theirs.close()
    try:
        return server_choice(ours)
    finally:
        ours.close()


def server_hello(version: int, suite: int, session_id: bytes = b"") -> bytes:
    body = struct.pack("!H", version) + bytes(32) + bytes([len(session_id)]) + session_id
    body += struct.pack("!H", suite) + b"\x00"
    handshake = b"\x02" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x03" + struct.pack("!H", len(handshake)) + handshake


def test_the_hello_is_one_record_offering_what_was_asked() -> None:
    hello = client_hello(TLS12, (0xC02F, 0x009C), "mx.example.test")
    assert hello[:3] == b"\x16\x03\x01"
    assert struct.unpack("!H", hello[3:5])[0] == len(hello) - 5
    assert hello[5] == 1  # ClientHello
    assert hello[9:11] == b"\x03\x03"
    suites_at = 9 + 2 + 32 + 1
    assert hello[suites_at : suites_at + 6] == b"\x00\x04\xc0\x2f\x00\x9c"
    assert b"mx.example.test" in hello


def test_ssl3_hellos_have_no_extensions() -> None:
    hello = client_hello(SSL3, (0x000A,), "mx.example.test")
    assert hello[9:11] == b"\x03\x00"
    assert hello.endswith(b"\x00\x02\x00\x0a\x01\x00")
    assert b"mx.example.test" not in hello


@pytest.mark.parametrize("session_id", [b"", bytes(32)])
def test_a_server_hello_gives_version_and_suite(session_id: bytes) -> None:
    assert answer(server_hello(TLS12, 0xC02F, session_id)) == Accepted(TLS12, 0xC02F)
    assert Accepted(TLS10, 1).version_name == "TLS 1.0"
    assert Accepted(0x7F1C, 1).version_name == "0x7f1c"


@pytest.mark.parametrize(
    "data",
    [
        b"",  # closed
        b"\x15\x03\x03\x00\x02\x02\x28",  # alert: handshake_failure
        b"220 mx.example.test ESMTP\r\n",  # plaintext: not TLS
        b"\x16\x03\x03\x00\x00",  # empty record
        b"\x16\x03\x03\x00\x10" + b"\x0b" + bytes(15),  # a Certificate, not a ServerHello
        b"\x16\x03\x03\x00\x30" + b"\x02" + bytes(20),  # cut short
        server_hello(TLS12, 1, bytes(32))[:-5],  # the suite is missing
    ],
)
def test_anything_else_is_no(data: bytes) -> None:
    assert answer(data) is None


@given(st.binary(max_size=200))
def test_no_bytes_make_it_fail(data: bytes) -> None:
    result = answer(data)
    assert result is None or (0 <= result.version < 65536 and 0 <= result.suite < 65536)


@pytest.fixture(scope="module")
def openssl_server() -> Iterator[int]:
    """A TLS 1.2+ server with the stdlib's defaults (AEAD and CBC suites, no 3DES)."""
    context = server_context(trustme.CA().issue_cert("localhost"))
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                conn.settimeout(5)
                context.wrap_socket(conn, server_side=True).close()
            except (OSError, ssl.SSLError):
                pass  # refused hellos and dropped handshakes are the point
            finally:
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port
    stop.set()
    thread.join(5)
    listener.close()


def offer(port: int, version: int, suites: tuple[int, ...]) -> Accepted | None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(client_hello(version, suites, "localhost"))
        return server_choice(sock)


def test_openssl_takes_a_hello_it_supports(openssl_server: int) -> None:
    aead = (0xC02B, 0xC02C, 0xC02F, 0xC030)  # ECDHE with AES-GCM, for ECDSA and RSA keys
    accepted = offer(openssl_server, TLS12, aead)
    assert accepted is not None
    assert accepted.version == TLS12
    assert accepted.suite in aead
    assert offer(openssl_server, TLS12, SUITES["cbc"]) is not None


def test_openssl_refuses_what_it_does_not_offer(openssl_server: int) -> None:
    assert offer(openssl_server, TLS10, SUITES["cbc"]) is None
    assert offer(openssl_server, SSL3, SUITES["3des"]) is None
    for weak in ("null", "anonymous", "export", "low", "3des"):
        assert offer(openssl_server, TLS12, SUITES[weak]) is None, weak

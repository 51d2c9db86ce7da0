"""The PROXY protocol parser and reader (`server.proxy`), versions 1 and 2.

Headers are built by hand after HAProxy's specification (proxy-protocol.txt); the reader runs
on real socket pairs and must leave every byte after the header where it was.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sendgate.server.proxy import V2_SIGNATURE, ProxyError, header_length, parse, read_header

V1_TCP4 = b"PROXY TCP4 192.0.2.10 198.51.100.1 56324 587\r\n"
V1_TCP6 = b"PROXY TCP6 2001:db8::10 2001:db8::1 56324 465\r\n"
CLIENT_HELLO = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03"


def v2(command: int = 1, family: int = 0x11, body: bytes | None = None) -> bytes:
    if body is None:
        six = family >> 4 == 2
        source = ipaddress.ip_address("2001:db8::10" if six else "192.0.2.10")
        destination = ipaddress.ip_address("2001:db8::1" if six else "198.51.100.1")
        body = source.packed + destination.packed + (56324).to_bytes(2, "big") + b"\x02\x4b"
    return V2_SIGNATURE + bytes([0x20 | command, family]) + len(body).to_bytes(2, "big") + body


@pytest.mark.parametrize(
    ("header", "client"),
    [
        (V1_TCP4, ("192.0.2.10", 56324)),
        (V1_TCP6, ("2001:db8::10", 56324)),
        (b"PROXY TCP6 2001:DB8:0::10 2001:db8::1 1 2\r\n", ("2001:db8::10", 1)),
        (b"PROXY UNKNOWN\r\n", None),
        (b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n", None),
        (v2(), ("192.0.2.10", 56324)),
        (v2(family=0x21), ("2001:db8::10", 56324)),
        (v2(command=0, body=b""), None),  # LOCAL: a health check by the proxy itself
        (v2(family=0x00, body=b""), None),
        (v2(family=0x31, body=b"\x00" * 216), None),  # a Unix socket: no address
        (v2(body=v2()[16:] + b"\x20\x00\x05tlv!!"), ("192.0.2.10", 56324)),  # TLVs skipped
    ],
)
def test_valid_headers(header: bytes, client: tuple[str, int] | None) -> None:
    assert header_length(header + CLIENT_HELLO) == len(header)
    assert parse(header) == client


@pytest.mark.parametrize("header", [V1_TCP4, v2(), v2(family=0x21)])
def test_a_header_in_pieces_is_not_whole_until_its_last_octet(header: bytes) -> None:
    for end in range(1, len(header)):
        assert header_length(header[:end]) is None
    assert header_length(header) == len(header)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"GET / HTTP/1.1\r\n", "not a PROXY header"),
        (b"PROXX", "not a PROXY header"),
        (b"\x16\x03\x01", "not a PROXY header"),  # a ClientHello: no proxy in front
        (b"PROXY TCP4 " + b"1" * 100, "longer than 107 octets"),
        (V2_SIGNATURE + b"\x21\x11\xff\xff", "a version 2 header of 65551 octets"),
    ],
)
def test_what_cannot_start_a_header(data: bytes, message: str) -> None:
    with pytest.raises(ProxyError, match=message):
        header_length(data)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (b"PROXY UDP4 192.0.2.10 198.51.100.1 1 2\r\n", "not TCP4, TCP6 or UNKNOWN"),
        (b"PROXY TCP4 192.0.2.10 198.51.100.1 1\r\n", "not TCP4, TCP6 or UNKNOWN"),
        (b"PROXY TCP4 2001:db8::1 198.51.100.1 1 2\r\n", "not an IPv4 address"),
        (b"PROXY TCP6 192.0.2.10 2001:db8::1 1 2\r\n", "not an IPv6 address"),
        (b"PROXY TCP4 192.0.2.300 198.51.100.1 1 2\r\n", "not an IPv4 address"),
        (b"PROXY TCP4 192.0.2.10 198.51.100.1 65536 2\r\n", "not a port"),
        (b"PROXY TCP4 192.0.2.10 198.51.100.1 0587 2\r\n", "not a port"),
        (b"PROXY TCP4 192.0.2.10 198.51.100.1 -1 2\r\n", "not a port"),
        (b"PROXY TCP4 192.0.2.\xff 198.51.100.1 1 2\r\n", "not ASCII"),
        (v2()[:12] + b"\x11" + v2()[13:], "version 1 in a version 2 header"),
        (v2(command=2), "command 2"),
        (v2(family=0x12), "not a stream"),
        (v2(body=bytes(8)), "too short"),
        (v2(family=0x21, body=bytes(20)), "too short"),
        (v2(family=0x41, body=bytes(12)), "address family 4"),
    ],
)
def test_bad_headers_are_refused(header: bytes, message: str) -> None:
    assert header_length(header) == len(header)
    with pytest.raises(ProxyError, match=message):
        parse(header)


@given(
    st.binary(max_size=120) | st.builds(lambda tail: V2_SIGNATURE + tail, st.binary(max_size=60))
)
def test_any_bytes_are_a_header_more_needed_or_a_refusal(data: bytes) -> None:
    try:
        length = header_length(data)
        if length is not None:
            assert 0 < length <= len(data)
            client = parse(data[:length])
            if client is not None:
                ipaddress.ip_address(client[0])
                assert 0 <= client[1] <= 65535
    except ProxyError as exc:
        refusal = str(exc)
        assert "\n" not in refusal


Pair = tuple[socket.socket, socket.socket]


@pytest.fixture
def pair() -> Iterator[Pair]:
    """(ours, non-blocking as an accepted socket is; theirs, the proxy's end)."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    with ours, theirs:
        yield ours, theirs


async def read_after(pair: Pair, sends: list[bytes], timeout: float = 5.0) -> object:
    """`read_header` on our end while the proxy sends `sends` one after another."""
    ours, theirs = pair
    reader = asyncio.ensure_future(read_header(ours, timeout))
    for part in sends:
        await asyncio.sleep(0)  # let the reader look at what came so far
        theirs.sendall(part)
    try:
        return await reader
    except ProxyError as exc:
        return exc


def test_the_reader_takes_the_header_and_nothing_more(pair: Pair) -> None:
    client = asyncio.run(read_after(pair, [V1_TCP4[:9], V1_TCP4[9:] + CLIENT_HELLO]))
    assert client == ("192.0.2.10", 56324)
    ours, _ = pair
    ours.setblocking(True)
    assert ours.recv(100) == CLIENT_HELLO  # left for the TLS handshake
    ours.setblocking(False)
    assert asyncio.run(read_after(pair, [v2()])) == ("192.0.2.10", 56324)


def test_a_slow_proxy_is_cut(pair: Pair) -> None:
    slow = asyncio.run(read_after(pair, [V1_TCP4[:9]], timeout=0.2))
    assert str(slow) == "no whole PROXY header within 0.2 s"


def test_a_bad_header_is_refused(pair: Pair) -> None:
    assert str(asyncio.run(read_after(pair, [b"NOT A PROXY\r\n"]))) == "not a PROXY header"


def test_a_proxy_that_closes_first(pair: Pair) -> None:
    ours, theirs = pair
    theirs.close()
    assert str(asyncio.run(read_after((ours, theirs), []))) == "closed before a whole PROXY header"

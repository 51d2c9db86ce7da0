"""The PROXY protocol (HAProxy's, versions 1 and 2): the real client behind a trusted proxy.

A proxy in front of sendgate (HAProxy in TCP mode, a load balancer) opens each connection with
a header naming the client's address. `header_length` says how much of the first bytes is the
header (so that not one byte of what follows, the client's ClientHello on 465, is consumed);
`parse` turns the header into the client's address, or None for the proxy's own connections
(v2 LOCAL, v1 UNKNOWN: health checks). `read_header` takes the header off an accepted socket
without reading past it.

Security: a header is believed only from a trusted network (the caller checks), and everything
in it is checked: the signature, the lengths (a v1 line is at most 107 octets; a v2 header here
at most `MAX_V2` octets), the family, each address and port. Anything else is a `ProxyError`
and the connection is closed unanswered.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

V1_MAX = 107  # "PROXY TCP6 " + two IPv6 addresses + two ports + CRLF, per the specification
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16
MAX_V2 = V2_FIXED + 1024  # addresses and a few TLVs; HAProxy sends far less
_PEEK = MAX_V2


class ProxyError(ValueError):
    """Not a valid PROXY header; the message says what is wrong, in one line."""


Client = tuple[str, int]  # the client's address and port, as the header gave them


def header_length(data: bytes) -> int | None:
    """The header's length if `data` begins with a whole one, None if more is needed.

    ProxyError as soon as `data` cannot be the start of a header.
    """
    if data[:1] == b"P":
        if not b"PROXY ".startswith(data[:6]):
            raise ProxyError("not a PROXY header")
        end = data.find(b"\r\n", 0, V1_MAX)
        if end >= 0:
            return end + 2
        if len(data) >= V1_MAX:
            raise ProxyError(f"a version 1 header longer than {V1_MAX} octets")
        return None
    if not V2_SIGNATURE.startswith(data[: len(V2_SIGNATURE)]):
        raise ProxyError("not a PROXY header")
    if len(data) < V2_FIXED:
        return None
    total = V2_FIXED + int.from_bytes(data[14:16], "big")
    if total > MAX_V2:
        raise ProxyError(f"a version 2 header of {total} octets (at most {MAX_V2})")
    return total if len(data) >= total else None


def parse(header: bytes) -> Client | None:
    """The client a whole header names, or None for the proxy's own connection."""
    if header.startswith(b"PROXY "):
        return _parse_v1(header)
    return _parse_v2(header)


def _parse_v1(header: bytes) -> Client | None:
    try:
        text = header.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyError("a version 1 header that is not ASCII") from None
    fields = text.removesuffix("\r\n").split(" ")
    if len(fields) >= 2 and fields[1] == "UNKNOWN":
        return None
    if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
        raise ProxyError("a version 1 header that is not TCP4, TCP6 or UNKNOWN with 4 fields")
    _, family, source, _destination, source_port, destination_port = fields
    address = _address(source, 4 if family == "TCP4" else 6)
    _address(_destination, 4 if family == "TCP4" else 6)
    port = _port(source_port)
    _port(destination_port)
    return address, port


def _parse_v2(header: bytes) -> Client | None:
    version, command = header[12] >> 4, header[12] & 0x0F
    if version != 2:
        raise ProxyError(f"version {version} in a version 2 header")
    if command == 0:  # LOCAL: the proxy's own connection (a health check)
        return None
    if command != 1:
        raise ProxyError(f"command {command} in a version 2 header")
    family, transport = header[13] >> 4, header[13] & 0x0F
    body = header[V2_FIXED:]
    if family == 0 or family == 3:  # UNSPEC, or a Unix socket: no address to use
        return None
    if transport != 1:
        raise ProxyError("a version 2 header for a transport that is not a stream")
    if family == 1:
        if len(body) < 12:
            raise ProxyError("a version 2 IPv4 header too short for its addresses")
        return str(ipaddress.IPv4Address(body[0:4])), int.from_bytes(body[8:10], "big")
    if family == 2:
        if len(body) < 36:
            raise ProxyError("a version 2 IPv6 header too short for its addresses")
        return str(ipaddress.IPv6Address(body[0:16])), int.from_bytes(body[32:34], "big")
    raise ProxyError(f"address family {family} in a version 2 header")


def _address(text: str, version: int) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyError(f"not an IPv{version} address: {text[:45]!r}") from None
    if address.version != version:
        raise ProxyError(f"not an IPv{version} address: {text[:45]!r}")
    return str(address)


def _port(text: str) -> int:
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[0] == "0"):
        raise ProxyError(f"not a port: {text[:8]!r}")
    port = int(text)
    if port > 65535:
        raise ProxyError(f"not a port: {text!r}")
    return port


async def read_header(sock: socket.socket, timeout: float) -> Client | None:
    """Take the PROXY header off `sock` (non-blocking, just accepted) and parse it.

    Not one byte past the header is consumed: what has come is looked at with MSG_PEEK, and
    read for good only while it is all header (a header not yet whole cannot be followed by
    anything), then the rest of the header exactly. ProxyError for a bad header, one that is
    not whole within `timeout` seconds, or a client that closes first.
    """
    loop = asyncio.get_running_loop()
    taken = b""
    try:
        async with asyncio.timeout(timeout):
            while True:
                await _readable(loop, sock)
                data = sock.recv(_PEEK, socket.MSG_PEEK)
                if not data:
                    raise ProxyError("closed before a whole PROXY header")
                length = header_length(taken + data)
                if length is not None:
                    return parse(taken + sock.recv(length - len(taken)))
                taken += sock.recv(len(data))
    except TimeoutError:
        raise ProxyError(f"no whole PROXY header within {timeout:g} s") from None
    except (BlockingIOError, InterruptedError):
        raise ProxyError("the PROXY header could not be read") from None
    except ConnectionError as exc:
        raise ProxyError(f"the connection failed: {type(exc).__name__}") from None


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())

"""A hand-made TLS ClientHello, to ask a server whether it would accept a protocol or a suite.

Why by hand: the local OpenSSL 3 no longer implements SSL 3, export, RC4 or 3DES suites, so
it cannot offer them, and a probe must ask about exactly those. A server that accepts an
offer answers with a ServerHello naming the version and suite it picked; that is all the
probe needs, so the handshake is never finished (no key exchange, no secret).

Security: the server's answer is untrusted; only the first record's header and the fixed
ServerHello fields are read, with a length cap, and anything else counts as "not accepted".
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass

SSL3 = 0x0300
TLS10 = 0x0301
TLS11 = 0x0302
TLS12 = 0x0303
VERSION_NAMES = {SSL3: "SSLv3", TLS10: "TLS 1.0", TLS11: "TLS 1.1", TLS12: "TLS 1.2"}

_HANDSHAKE = 22
_CLIENT_HELLO = 1
_SERVER_HELLO = 2
_MAX_RECORD = 1 << 14

# IANA code points (RFC 2246, 4346, 4492, 5246, 5289, 5932), grouped the way testssl.sh groups
# its cipher categories, so that a finding names the same thing it does (3DES includes IDEA).
SUITES: dict[str, tuple[int, ...]] = {
    "null": (0x0001, 0x0002, 0x003B, 0xC006, 0xC010, 0xC015, 0x002C, 0x002D, 0x002E),
    "anonymous": (
        0x0018, 0x001B, 0x0034, 0x003A, 0x0046, 0x006C, 0x006D, 0x0089,
        0x00A6, 0x00A7, 0x00BF, 0x00C5, 0xC016, 0xC017, 0xC018, 0xC019,
    ),
    "export": (0x0003, 0x0006, 0x0008, 0x000B, 0x000E, 0x0011, 0x0014, 0x0017, 0x0019),
    "low": (  # RC4 and single DES
        0x0004, 0x0005, 0xC002, 0xC007, 0xC00C, 0xC011, 0x0009, 0x000C, 0x000F, 0x0012, 0x0015,
    ),
    "3des": (0x0007, 0x000A, 0x000D, 0x0010, 0x0013, 0x0016, 0xC003, 0xC008, 0xC00D, 0xC012),
    "cbc": (
        0x002F, 0x0033, 0x0035, 0x0039, 0x003C, 0x003D, 0x0041, 0x0045, 0x0067, 0x006B,
        0x0084, 0x0088, 0x00BA, 0x00BE, 0x00C0, 0x00C4, 0xC009, 0xC00A, 0xC013, 0xC014,
        0xC023, 0xC024, 0xC027, 0xC028, 0xC072, 0xC073, 0xC076, 0xC077,
    ),
}  # fmt: skip
# What a client of the old protocol versions would have offered: every authenticated suite of
# those days that is not NULL (a server that accepts only NULL suites is found by "null").
LEGACY_SUITES = SUITES["cbc"] + SUITES["3des"] + SUITES["low"] + SUITES["export"]

_GROUPS = (0x001D, 0x0017, 0x0018, 0x0019, 0x0100)  # x25519, P-256, P-384, P-521, ffdhe2048
_SIGNATURES = (
    0x0403, 0x0503, 0x0603, 0x0807, 0x0804, 0x0805, 0x0806, 0x0401, 0x0501, 0x0601,
    0x0201, 0x0203,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Accepted:
    """The server's ServerHello: the version and suite it picked from the offer."""

    version: int
    suite: int

    @property
    def version_name(self) -> str:
        return VERSION_NAMES.get(self.version, f"0x{self.version:04x}")


def client_hello(version: int, suites: tuple[int, ...], server_name: str | None) -> bytes:
    """One TLS record holding a ClientHello that offers only `version` and `suites`."""
    extensions = b""
    if version >= TLS10:  # SSL 3 has no extensions
        if server_name:
            name = server_name.encode("ascii")
            entry = b"\x00" + _u16(len(name)) + name
            extensions += _extension(0x0000, _u16(len(entry)) + entry)
        extensions += _extension(0x000A, _u16_list(_GROUPS))
        extensions += _extension(0x000B, b"\x01\x00")  # uncompressed points
        if version >= TLS12:
            extensions += _extension(0x000D, _u16_list(_SIGNATURES))
        extensions += _extension(0xFF01, b"\x00")  # secure renegotiation, initial
    body = (
        _u16(version)
        + os.urandom(32)
        + b"\x00"  # no session to resume
        + _u16_list(suites)
        + b"\x01\x00"  # no compression
        + (_u16(len(extensions)) + extensions if extensions else b"")
    )
    handshake = bytes([_CLIENT_HELLO]) + len(body).to_bytes(3, "big") + body
    # Record version 1.0 for every hello: what clients send, and what old servers expect.
    return bytes([_HANDSHAKE]) + _u16(min(version, TLS10)) + _u16(len(handshake)) + handshake


def server_choice(sock: socket.socket) -> Accepted | None:
    """Read the answer to a ClientHello: what the server picked, or None for a refusal.

    A refusal is an alert, a closed connection, or anything that is not a ServerHello.
    """
    header = _read(sock, 5)
    if header is None or header[0] != _HANDSHAKE:
        return None  # an alert (handshake_failure, protocol_version), or not TLS at all
    length = struct.unpack("!H", header[3:5])[0]
    if not 0 < length <= _MAX_RECORD:
        return None
    record = _read(sock, length)
    # type, 3-octet length, version, 32 random octets, session id length ...
    if record is None or len(record) < 39 or record[0] != _SERVER_HELLO:
        return None
    version = struct.unpack("!H", record[4:6])[0]
    session_id = record[38]
    at = 39 + session_id
    if len(record) < at + 2:
        return None
    return Accepted(version, struct.unpack("!H", record[at : at + 2])[0])


def _read(sock: socket.socket, count: int) -> bytes | None:
    data = bytearray()
    while len(data) < count:
        try:
            chunk = sock.recv(count - len(data))
        except OSError:  # reset, or the timeout: no ServerHello came
            return None
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def _u16(value: int) -> bytes:
    return struct.pack("!H", value)


def _u16_list(values: tuple[int, ...]) -> bytes:
    return _u16(2 * len(values)) + b"".join(_u16(value) for value in values)


def _extension(kind: int, data: bytes) -> bytes:
    return _u16(kind) + _u16(len(data)) + data

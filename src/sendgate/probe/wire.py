"""A blocking SMTP client for the probe that keeps every byte in view.

The probe must see what a library client hides: replies that arrive before they were asked
for, plaintext left after a STARTTLS reply, a connection closed mid-dialog. So this client
keeps its own read buffer, parses replies strictly (RFC 5321 4.2) and never retries.

Security: the server is untrusted. A reply line is capped at `MAX_LINE` octets and a reply at
`MAX_LINES` lines; every read has the caller's timeout; reply text is only shown, escaped, in
findings' evidence.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from dataclasses import dataclass

from sendgate.errors import SendgateError

MAX_LINE = 4096
MAX_LINES = 200
_CHUNK = 16384


class WireError(SendgateError):
    """The server closed, timed out or sent something that is not an SMTP reply."""


class HandshakeError(WireError):
    """The TLS handshake did not complete."""


class CertificateVerifyError(HandshakeError):
    """The TLS handshake stopped because the server's certificate did not verify."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"certificate not verified: {reason}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    lines: tuple[str, ...]

    def shown(self) -> str:
        """The reply as it came, one line per line, for evidence (first 3 lines)."""
        last = len(self.lines) - 1
        first = [
            f"{self.code}{'-' if index < last else ' '}{line}"
            for index, line in enumerate(self.lines[:3])
        ]
        more = len(self.lines) - 3
        return " | ".join(first) + (f" | ... ({more} more lines)" if more > 0 else "")

    @property
    def keywords(self) -> dict[str, str]:
        """EHLO extensions: keyword (upper case) to its parameters."""
        found: dict[str, str] = {}
        for line in self.lines[1:]:
            keyword, _, params = line.partition(" ")
            found[keyword.upper()] = params
        return found


def shown_bytes(data: bytes) -> str:
    """Bytes as readable evidence: printable ASCII as is, CR and LF as <CR> and <LF>."""
    out = []
    for byte in data:
        if byte == 13:
            out.append("<CR>")
        elif byte == 10:
            out.append("<LF>")
        elif 32 <= byte < 127:
            out.append(chr(byte))
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out)


class Wire:
    """One connection: plaintext, then TLS after `starttls`, or TLS from the start."""

    def __init__(self, sock: socket.socket | ssl.SSLSocket, timeout: float) -> None:
        self.sock = sock
        self.timeout = timeout
        self._buffer = bytearray()
        sock.settimeout(timeout)

    @classmethod
    def open(cls, host: str, port: int, timeout: float) -> Wire:
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise WireError(f"cannot connect to {host}:{port}: {_reason(exc)}") from exc
        return cls(sock, timeout)

    @property
    def tls(self) -> ssl.SSLSocket | None:
        return self.sock if isinstance(self.sock, ssl.SSLSocket) else None

    def close(self) -> None:
        with contextlib.suppress(OSError):  # already gone; nothing to release
            self.sock.close()

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise WireError(f"send failed: {_reason(exc)}") from exc

    def command(self, line: str) -> Reply:
        self.send(line.encode("ascii") + b"\r\n")
        return self.reply()

    def pending(self) -> bytes:
        """What was read past the last reply (a reply the probe did not ask for, or TLS)."""
        return bytes(self._buffer)

    def reply(self) -> Reply:
        code = -1
        lines: list[str] = []
        while True:
            raw = self._line()
            if len(raw) < 3 or not raw[:3].isdigit() or raw[3:4] not in (b"", b" ", b"-"):
                raise WireError(f"not an SMTP reply: {shown_bytes(raw[:80])}")
            this = int(raw[:3])
            if code not in (-1, this):
                raise WireError(f"reply lines with different codes: {code} then {this}")
            code = this
            lines.append(raw[4:].decode("utf-8", "replace"))
            if raw[3:4] != b"-":
                return Reply(code, tuple(lines))
            if len(lines) >= MAX_LINES:
                raise WireError(f"reply of more than {MAX_LINES} lines")

    def _line(self) -> bytes:
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                return line.removesuffix(b"\r")
            if len(self._buffer) > MAX_LINE:
                raise WireError(f"reply line over {MAX_LINE} octets")
            self._fill()

    def _fill(self) -> None:
        try:
            data = self.sock.recv(_CHUNK)
        except TimeoutError as exc:
            raise WireError(f"no answer within {self.timeout:g} s") from exc
        except OSError as exc:
            raise WireError(f"receive failed: {_reason(exc)}") from exc
        if not data:
            raise WireError("the server closed the connection")
        self._buffer += data

    def closed_by_peer(self) -> bool:
        """True if the server has closed (reads EOF or reset within the timeout)."""
        try:
            while True:
                data = self.sock.recv(_CHUNK)
                if not data:
                    return True
                self._buffer += data
        except TimeoutError:
            return False
        except OSError:
            return True

    def starttls(self, context: ssl.SSLContext, server_hostname: str | None) -> None:
        """Wrap the socket; any unread plaintext must have been looked at by the caller."""
        self._buffer.clear()
        try:
            self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)
        except ssl.SSLCertVerificationError as exc:
            raise CertificateVerifyError(str(exc.verify_message)) from exc
        except OSError as exc:
            raise HandshakeError(f"TLS handshake failed: {_reason(exc)}") from exc
        self.sock.settimeout(self.timeout)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__

"""Checking passwords against a running Dovecot, as Postfix's `smtpd_sasl_type = dovecot` does.

The client side of Dovecot's authentication protocol (version 1.2) over its auth socket: the
handshake (VERSION, CPID; the server's VERSION, MECH, SPID, CUID, COOKIE, DONE), then one
`AUTH` request with the PLAIN mechanism and the answer `OK` (with the user name Dovecot settled
on), `FAIL` or `CONT`. A connection per attempt: logins are few next to messages, and a fresh
connection never carries a half-read answer over to the next user.

Security: the password goes only to the configured Unix socket, base64-coded inside PLAIN as
the protocol wants, and is never logged. Tab and newline end fields in this protocol, so a name
or password holding one is refused here rather than sent. Dovecot's answers are bounded
(`MAX_LINE`) and parsed strictly; anything unexpected is a `DovecotError` (a temporary failure
for the client), never a success.
"""

from __future__ import annotations

import base64
import os
import socket
from pathlib import Path

from sendgate.errors import StoreError

MAX_LINE = 16 * 1024
DOVECOT_THREADS = 32  # per worker: checks mostly wait (Dovecot delays each failure 2 s)
_ID = "1"  # one request per connection


class DovecotError(StoreError):
    """Dovecot could not be asked, or answered out of protocol; the message says which."""


class DovecotAuth:
    """Asks the Dovecot auth socket at `path` whether a user's password is right (blocking)."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.path = path
        self._timeout = timeout

    def check(self, username: str, password: str, *, client_ip: str, secured: bool) -> str | None:
        """The user name Dovecot confirmed, or None for a wrong name or password.

        DovecotError when the socket cannot be reached or answers out of protocol.
        """
        if any(c in text for text in (username, password) for c in "\t\n\0"):
            return None  # cannot be said in this protocol, so cannot be right
        plain = base64.b64encode(b"\0" + username.encode() + b"\0" + password.encode()).decode()
        fields = ["AUTH", _ID, "PLAIN", "service=smtp", "nologin", f"rip={client_ip}"]
        if secured:
            fields.append("secured")
        fields.append(f"resp={plain}")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(self._timeout)
                sock.connect(str(self.path))
                lines = _Lines(sock)
                sock.sendall(f"VERSION\t1\t2\nCPID\t{os.getpid()}\n".encode())
                self._handshake(lines)
                sock.sendall(("\t".join(fields) + "\n").encode())
                return self._answer(lines.next(), username)
        except OSError as exc:
            raise DovecotError(
                f"dovecot auth socket {self.path}: {exc.strerror or type(exc).__name__}"
            ) from None

    def _handshake(self, lines: _Lines) -> None:
        mechanisms = set()
        while True:
            line = lines.next()
            fields = line.split("\t")
            if fields[0] == "VERSION" and fields[1:2] != ["1"]:
                raise DovecotError(f"dovecot speaks auth protocol version {fields[1:2]}, not 1")
            if fields[0] == "MECH" and len(fields) > 1:
                mechanisms.add(fields[1].upper())
            if fields[0] == "DONE":
                break
        if "PLAIN" not in mechanisms:
            raise DovecotError("dovecot does not offer PLAIN (auth_mechanisms)")

    def _answer(self, line: str, username: str) -> str | None:
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] != _ID:
            raise DovecotError(f"dovecot answered another request: {line[:80]!r}")
        if fields[0] == "FAIL":
            # Dovecot's own backend failed (its database is down): not the user's fault, and
            # never to be counted against them. Dovecot 2.3 says "code=temp_fail", older "temp".
            if "temp" in fields[2:] or "code=temp_fail" in fields[2:]:
                raise DovecotError("dovecot could not check the password now (temporary failure)")
            return None
        if fields[0] != "OK":
            # CONT would ask for another round, which PLAIN never needs.
            raise DovecotError(f"dovecot answered {fields[0][:20]!r} to PLAIN")
        for field in fields[2:]:
            name, _, value = field.partition("=")
            if name == "user" and value:
                return value
        return username


class _Lines:
    """Newline-ended lines from a socket, each at most MAX_LINE octets."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = b""

    def next(self) -> str:
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_LINE:
                raise DovecotError(f"dovecot sent a line longer than {MAX_LINE} octets")
            data = self._sock.recv(4096)
            if not data:
                raise DovecotError("dovecot closed the connection")
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            return line.decode("utf-8")
        except UnicodeDecodeError:
            raise DovecotError("dovecot sent a line that is not UTF-8") from None

"""A deliberately broken submission server, for tests of `sendgate probe`.

Each flaw is a switch (`Flaws`), so a test turns on exactly what it wants found:
- `auth_before_tls`: AUTH offered in the plaintext EHLO and answered with 334 there;
- `keeps_injected`: lines pipelined behind STARTTLS stay buffered and run after the
  handshake (CVE-2011-0411);
- `lf_lines`: lines end at a bare LF (all CRs before it stripped), so `<LF>.<LF>` ends DATA
  (SMTP smuggling);
- `open_relay`: MAIL and RCPT work without AUTH;
- `vrfy`: VRFY answers 250 with the address.
With no flaw switched on it behaves: AUTH only after STARTTLS, pipelined input discarded at
STARTTLS, CRLF-only lines, 530 before AUTH, 252 for VRFY. Any credentials log in.

Security: test code only; it listens on the loopback address it is given, one thread per
connection, and keeps nothing it receives.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from dataclasses import dataclass

from tests.support.loopback import ThreadedServer


@dataclass(frozen=True, slots=True)
class Flaws:
    auth_before_tls: bool = False
    keeps_injected: bool = False
    lf_lines: bool = False
    open_relay: bool = False
    vrfy: bool = False


class _ClosedError(Exception):
    pass


class FlawedSmtp(ThreadedServer):
    def __init__(self, context: ssl.SSLContext, flaws: Flaws, host: str = "127.0.0.1") -> None:
        super().__init__("flawed-smtp")
        self.context = context
        self.flaws = flaws
        self.host = host
        self.port = 0
        self.messages: list[bytes] = []
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _bind(self) -> None:
        self._listener = socket.create_server((self.host, 0))
        self._listener.settimeout(0.05)
        self.port = self._listener.getsockname()[1]

    def _serve(self) -> None:
        assert self._listener is not None
        self._serving()
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self._connection, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()
        for thread in self._threads:
            thread.join(5)

    def _interrupt(self) -> None:
        self._stop.set()

    def _release(self) -> None:
        if self._listener is not None:
            self._listener.close()

    def _connection(self, sock: socket.socket) -> None:
        session = _Session(self, sock)
        try:
            session.run()
        except (OSError, _ClosedError):  # the client went away: normal for a probe
            pass
        except BaseException as error:
            self._failed(error)
        finally:
            with contextlib.suppress(OSError):
                session.sock.close()
            with contextlib.suppress(OSError):
                sock.close()


class _Session:
    def __init__(self, server: FlawedSmtp, sock: socket.socket) -> None:
        self.server = server
        self.flaws = server.flaws
        self.sock: socket.socket = sock
        self.buffer = b""
        self.tls = False
        self.authed = False
        sock.settimeout(10)

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\r\n")

    def line(self) -> bytes:
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0 and self.flaws.lf_lines:
                line, self.buffer = self.buffer[:end], self.buffer[end + 1 :]
                return line.rstrip(b"\r")  # every CR before the LF, as lenient servers do
            if end >= 0 and self.buffer[end - 1 : end] == b"\r":
                line, self.buffer = self.buffer[: end - 1], self.buffer[end + 1 :]
                return line
            if end >= 0:  # a bare LF without the flaw: part of the line, keep looking
                nxt = self.buffer.find(b"\r\n")
                if nxt >= 0:
                    line, self.buffer = self.buffer[:nxt], self.buffer[nxt + 2 :]
                    return line
            data = self.sock.recv(65536)
            if not data:
                raise _ClosedError
            self.buffer += data

    def run(self) -> None:
        self.send("220 flawed.example.test ESMTP")
        while True:
            words = self.line().decode("latin-1").split(" ", 1)
            verb, arg = words[0].upper(), (words[1] if len(words) > 1 else "")
            if verb == "EHLO":
                extensions = ["PIPELINING"] + ([] if self.tls else ["STARTTLS"])
                if self.tls or self.flaws.auth_before_tls:
                    extensions.append("AUTH PLAIN LOGIN")
                lines = ["flawed.example.test", *extensions]
                for text in lines[:-1]:
                    self.send(f"250-{text}")
                self.send(f"250 {lines[-1]}")
            elif verb == "STARTTLS" and not self.tls:
                self.send("220 2.0.0 go ahead")
                if not self.flaws.keeps_injected:
                    self.buffer = b""
                self.sock = self.server.context.wrap_socket(self.sock, server_side=True)
                self.tls = True
            elif verb == "AUTH":
                if not (self.tls or self.flaws.auth_before_tls):
                    self.send("538 5.7.11 Encryption required")
                elif " " in arg:
                    self.authed = True
                    self.send("235 2.7.0 ok")
                else:
                    self.send("334 ")
                    if self.line() == b"*":
                        self.send("501 5.7.0 cancelled")
                    else:
                        self.authed = True
                        self.send("235 2.7.0 ok")
            elif verb == "VRFY":
                self.send(f"250 <{arg}@flawed.example.test>" if self.flaws.vrfy else "252 2.1.5 no")
            elif verb == "MAIL":
                ok = self.authed or self.flaws.open_relay
                self.send("250 2.1.0 ok" if ok else "530 5.7.0 Authentication required")
            elif verb == "RCPT":
                self.send("250 2.1.5 ok")
            elif verb == "DATA":
                self.send("354 go")
                content: list[bytes] = []
                while (line := self.line()) != b".":
                    content.append(line)
                self.server.messages.append(b"\r\n".join(content))
                self.send("250 2.0.0 queued")
            elif verb in ("NOOP", "RSET"):
                self.send("250 2.0.0 ok")
            elif verb == "QUIT":
                self.send("221 2.0.0 bye")
                return
            else:
                self.send("500 5.5.2 unknown command")

"""A small HTTPS server on loopback for tests: fixed routes, real TLS, recorded requests.

`routes` maps a path to `(status, content_type, body)`. For a 3xx status the body is sent as
the Location header instead (an empty body follows), so redirects are easy to serve; status 0
sends the body raw as the whole response (for malformed-response tests). With
`chunked=True` every body is sent with Transfer-Encoding: chunked in small chunks. Unknown paths
get 404. The server runs stdlib http.server on a background thread (a `ThreadedServer`); `stop`
joins every thread it started.
"""

from __future__ import annotations

import socket
import ssl
import tempfile
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

from tests.support.loopback import ThreadedServer

Route = tuple[int, str, bytes]
_CHUNK = 7  # small and odd, so chunk boundaries fall inside lines


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the server saw it, with the TLS server name the client sent."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    sni: str | None


class HttpsServer(ThreadedServer):
    """HTTPS on `address:port` with a certificate from PEM bytes or a trustme.LeafCert.

    It binds when made (so `address` is known before `start`, also with port 0).
    """

    def __init__(
        self,
        address: str,
        port: int,
        cert: Any = None,
        *,
        cert_pem: bytes | None = None,
        key_pem: bytes | None = None,
        routes: dict[str, Route] | None = None,
        chunked: bool = False,
    ) -> None:
        super().__init__(f"https-{address}")
        self.routes: dict[str, Route] = dict(routes or {})
        self.chunked = chunked
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.sni_callback = self._remember_sni
        self._sni: dict[int, str | None] = {}
        if cert is not None:
            cert.configure_cert(self._context)
        elif cert_pem is not None and key_pem is not None:
            self._load_pem(cert_pem, key_pem)
        else:
            raise ValueError("HttpsServer needs cert or both cert_pem and key_pem")
        self._httpd = _Server((address, port), _Handler, self)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def wrap(self, sock: socket.socket) -> ssl.SSLSocket:
        return self._context.wrap_socket(sock, server_side=True)

    def sni(self, sock: ssl.SSLSocket) -> str | None:
        """The server name the client sent on connection `sock` (None without SNI)."""
        with self._lock:
            return self._sni.get(id(sock))

    def forget(self, sock: ssl.SSLSocket) -> None:
        with self._lock:
            self._sni.pop(id(sock), None)

    def _remember_sni(self, sock: Any, name: str | None, _: ssl.SSLContext) -> None:
        with self._lock:
            self._sni[id(sock)] = name

    def _bind(self) -> None:
        """Bound and listening since __init__: connections wait in the backlog until served."""

    def _serve(self) -> None:
        self._serving()
        self._httpd.serve_forever(poll_interval=0.05)

    def _interrupt(self) -> None:
        self._httpd.shutdown()

    def _release(self) -> None:
        self._httpd.server_close()

    def _load_pem(self, cert_pem: bytes, key_pem: bytes) -> None:
        # ssl loads certificates only from files.
        with tempfile.TemporaryDirectory() as tmp:
            cert_path = Path(tmp) / "cert.pem"
            key_path = Path(tmp) / "key.pem"
            cert_path.write_bytes(cert_pem)
            key_path.write_bytes(key_pem)
            self._context.load_cert_chain(cert_path, key_path)


class _Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], handler: type[_Handler], owner: HttpsServer
    ) -> None:
        self.owner = owner
        super().__init__(address, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        sock = cast(socket.socket, request)
        sock.settimeout(10)
        try:
            tls = self.owner.wrap(sock)
        except OSError:
            return  # the client refused our certificate: part of the test, not an error
        try:
            with tls:
                super().finish_request(tls, client_address)
        finally:
            self.owner.forget(tls)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients hanging up mid-response are expected in tests (oversize bodies)."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        owner = cast(_Server, self.server).owner
        owner.record(
            RecordedRequest(
                method=self.command,
                path=self.path,
                headers=tuple(self.headers.items()),
                sni=owner.sni(cast(ssl.SSLSocket, self.request)),
            )
        )
        status, content_type, body = owner.routes.get(self.path, (404, "text/plain", b"no\n"))
        self.close_connection = True
        if status == 0:
            self.wfile.write(body)
            return
        self.send_response(status)
        self.send_header("Connection", "close")
        if 300 <= status < 400:
            self.send_header("Location", body.decode())
            body = b""
        if content_type:
            self.send_header("Content-Type", content_type)
        if owner.chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, len(body), _CHUNK):
                piece = body[start : start + _CHUNK]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: requests are recorded in `HttpsServer.requests` instead."""

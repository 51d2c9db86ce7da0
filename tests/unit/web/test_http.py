"""The HTTP listener's server (`sendgate.web.http`) on a loopback socket, with real clients.

A `LiveHttp` serves a recording handler from a background thread's event loop; the tests speak
to it with http.client and with raw sockets for what a polite client would not send.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import io
import socket
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.support.loopback import AsyncioServer

from sendgate.log import EventLog
from sendgate.web.http import HttpServer, Request, Response

TIMEOUT = 10.0


class LiveHttp(AsyncioServer):
    """An HttpServer on 127.0.0.1 whose handler records each request and echoes its path."""

    def __init__(self, **limits: float) -> None:
        super().__init__("http")
        self.requests: list[Request] = []
        self.stream = io.StringIO()
        self._limits = limits
        self.port = 0

    async def handle(self, request: Request) -> Response:
        self.requests.append(request)
        if request.path == "/boom":
            raise RuntimeError("a bug")
        return Response(200, f"you asked for {request.path}\n".encode(), "text/plain")

    def _bind(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]

    async def _run_async(self) -> None:
        server = HttpServer(self.handle, EventLog(self.stream, level="debug"), **self._limits)  # type: ignore[arg-type]
        task = asyncio.create_task(server.serve(self._sock))
        self._serving()  # the socket listens already: connections wait in its backlog
        await self._stopped()
        task.cancel()

    def _release(self) -> None:
        self._sock.close()

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT)


@pytest.fixture
def live() -> Iterator[LiveHttp]:
    with LiveHttp() as server:
        yield server


def exchange(server: LiveHttp, raw: bytes) -> bytes:
    """Send `raw`, then read until the server closes."""
    with server.connect() as sock:
        sock.sendall(raw)
        return read_all(sock)


def read_all(sock: socket.socket) -> bytes:
    parts = []
    while chunk := sock.recv(65536):
        parts.append(chunk)
    return b"".join(parts)


def test_a_request_reaches_the_handler_and_the_answer_is_framed(live: LiveHttp) -> None:
    client = http.client.HTTPConnection("127.0.0.1", live.port, timeout=TIMEOUT)
    client.request("GET", "/mail/config-v1.1.xml?emailaddress=a%40b.example&x=1&x=2")
    response = client.getresponse()
    assert (response.status, response.reason) == (200, "OK")
    assert response.read() == b"you asked for /mail/config-v1.1.xml\n"
    assert response.getheader("content-type") == "text/plain"
    assert response.getheader("content-length") == "36"
    assert response.getheader("cache-control") == "no-store"
    assert response.getheader("x-content-type-options") == "nosniff"
    [request] = live.requests
    assert (request.method, request.path) == ("GET", "/mail/config-v1.1.xml")
    assert request.query == {"emailaddress": "a@b.example", "x": "1"}
    assert request.headers["host"] == f"127.0.0.1:{live.port}"
    # The connection stays open for the next request (Prometheus scrapes this way).
    client.request("POST", "/two", body=b"<xml/>")
    assert client.getresponse().read() == b"you asked for /two\n"
    assert live.requests[1].body == b"<xml/>"
    client.close()


def test_pipelined_requests_are_answered_in_order(live: LiveHttp) -> None:
    raw = (
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    answer = exchange(live, raw)
    assert answer.count(b"HTTP/1.1 200 OK\r\n") == 2
    assert answer.index(b"you asked for /a") < answer.index(b"you asked for /b")


def test_head_gets_the_headers_only(live: LiveHttp) -> None:
    answer = exchange(live, b"HEAD /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"content-length: 17" in head  # "you asked for /x\n"
    assert body == b""


def test_http_1_0_is_answered_and_closed(live: LiveHttp) -> None:
    answer = exchange(live, b"GET /old HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.endswith(b"you asked for /old\n")


@pytest.mark.parametrize(
    "raw",
    [
        b"NONSENSE\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # no Host
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 20_000 + b"\r\n\r\n",
        b"GET /?" + b"&".join(b"f%d=1" % i for i in range(40)) + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=["not-http", "no-host", "bad-header", "head-too-long", "too-many-fields"],
)
def test_a_malformed_request_gets_400_and_the_connection_closes(live: LiveHttp, raw: bytes) -> None:
    answer = exchange(live, raw)
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer[:100]
    assert answer.endswith(b"\r\n\r\nbad request\n")
    assert live.requests == []


def test_a_body_too_large_gets_413(live: LiveHttp) -> None:
    body = b"x" * (64 * 1024 + 1)
    raw = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    answer = exchange(live, raw)
    assert answer.startswith(b"HTTP/1.1 413 ")  # the phrase changed in Python 3.13
    assert live.requests == []


def test_a_handler_bug_is_a_500_and_a_log_line(live: LiveHttp) -> None:
    answer = exchange(live, b"GET /boom HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert answer.endswith(b"internal error\n")
    assert "level=error event=http_error path=/boom error=\"RuntimeError('a bug')\"" in (
        live.stream.getvalue()
    )
    # The listener goes on serving.
    assert exchange(live, b"GET /ok HTTP/1.0\r\n\r\n").endswith(b"you asked for /ok\n")


def test_answers_are_logged_at_debug(live: LiveHttp) -> None:
    exchange(live, b"GET /ok HTTP/1.0\r\n\r\n")
    assert "level=debug event=http method=GET path=/ok status=200" in live.stream.getvalue()


def test_a_silent_client_is_cut_after_the_request_timeout() -> None:
    with LiveHttp(request_timeout=0.3) as server, server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n")  # and never the rest
        assert read_all(sock) == b""  # closed by the server, unanswered


def test_connections_past_the_limit_are_closed_unanswered() -> None:
    with LiveHttp(max_connections=1) as server, server.connect() as first:
        first.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        assert first.recv(100).startswith(b"HTTP/1.1 200 OK")  # the first is being served
        with server.connect() as second:
            second.sendall(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
            with contextlib.suppress(ConnectionResetError):  # an abort may come as a reset
                assert read_all(second) == b""
        first.sendall(b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert read_all(first).endswith(b"you asked for /c\n")
    assert [r.path for r in server.requests] == ["/a", "/c"]


@pytest.fixture(scope="module")
def shared() -> Iterator[LiveHttp]:
    with LiveHttp(request_timeout=2.0) as server:
        yield server


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    raw=st.binary(max_size=400)
    | st.builds(lambda tail: b"GET / HTTP/1.1\r\n" + tail, st.binary(max_size=200))
)
def test_any_bytes_get_an_answer_or_a_close_and_never_stop_the_listener(
    shared: LiveHttp, raw: bytes
) -> None:
    with shared.connect() as sock:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        try:
            answer = read_all(sock)
        except ConnectionResetError:
            answer = b""
    assert answer == b"" or answer.startswith(b"HTTP/1.1 ")
    assert exchange(shared, b"GET /alive HTTP/1.0\r\n\r\n").endswith(b"you asked for /alive\n")

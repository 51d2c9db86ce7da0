"""A small HTTP/1.1 server for the HTTP listener: h11 parses, asyncio carries, a handler answers.

Connections may carry several requests (Prometheus reuses its connection). The handler gets a
`Request` and returns a `Response`; this module owns the protocol: status lines, lengths, HEAD,
keep-alive and closing.

Security: everything a client sends is bounded. The request head is at most 16 KiB (h11), the
body `max_body` octets, the whole request must arrive within `request_timeout` seconds, and at
most `max_connections` connections are served at once (one more is closed unanswered). A
malformed request gets 400 and the connection closes; a body too large gets 413; a handler's
bug is a 500 and one log line, never a crash of the listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import h11

from sendgate.log import EventSink

MAX_HEAD = 16 * 1024
_READ_SIZE = 64 * 1024
_MAX_QUERY_FIELDS = 16
_REASONS = {400: "bad request", 413: "request body too large", 500: "internal error"}


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str  # without the query
    query: Mapping[str, str]  # the first value of each name
    headers: Mapping[str, str]  # lower-case names
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = field(default=())


Handler = Callable[[Request], Awaitable[Response]]


class _UnreadableError(Exception):
    """A request that gets `status` (400 or 413) and the connection closed."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class HttpServer:
    """Serves `handler` on a listening socket until cancelled."""

    def __init__(
        self,
        handler: Handler,
        log: EventSink,
        *,
        max_connections: int = 64,
        request_timeout: float = 10.0,
        max_body: int = 64 * 1024,
    ) -> None:
        self._handler = handler
        self._log = log
        self._max_connections = max_connections
        self._timeout = request_timeout
        self._max_body = max_body
        self._open = 0

    async def serve(self, sock: socket.socket) -> None:
        server = await asyncio.start_server(self._client, sock=sock, limit=_READ_SIZE)
        async with server:
            await server.serve_forever()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= self._max_connections:
            writer.transport.abort()
            return
        self._open += 1
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        try:
            await self._requests(conn, reader, writer)
        except (ConnectionError, TimeoutError, OSError):
            pass  # the client went away or was too slow: nothing to answer
        finally:
            self._open -= 1
            writer.close()

    async def _requests(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            try:
                request = await asyncio.wait_for(self._read(conn, reader), self._timeout)
            except h11.RemoteProtocolError:
                await self._refuse(conn, writer, 400)
                return
            except _UnreadableError as exc:
                await self._refuse(conn, writer, exc.status)
                return
            if request is None:
                return
            response = await self._answer(request)
            await self._send(conn, writer, response, head_only=request.method == "HEAD")
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return  # either side asked to close (or HTTP/1.0)
            conn.start_next_cycle()

    async def _read(self, conn: h11.Connection, reader: asyncio.StreamReader) -> Request | None:
        """The next whole request, or None when the client closed between requests."""
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(_READ_SIZE))
            elif isinstance(event, h11.Request):
                # h11 bounds only a head that arrives in pieces; one read may bring a whole one.
                size = len(event.target) + sum(len(n) + len(v) for n, v in event.headers)
                if size > MAX_HEAD:
                    raise _UnreadableError(400)
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > self._max_body:
                    raise _UnreadableError(413)
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return _request(head, bytes(body))
            else:  # ConnectionClosed (or PAUSED, which only follows a whole request)
                return None

    async def _answer(self, request: Request) -> Response:
        try:
            response = await self._handler(request)
        except Exception as exc:  # a bug costs one request, never the listener
            self._log.event("http_error", "error", path=request.path[:100], error=repr(exc)[:200])
            return Response(500, b"internal error\n")
        level = "error" if response.status >= 500 else "debug"
        self._log.event(
            "http", level, method=request.method, path=request.path[:100], status=response.status
        )
        return response

    async def _send(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        response: Response,
        *,
        head_only: bool = False,
    ) -> None:
        headers = [
            ("content-type", response.content_type),
            ("content-length", str(len(response.body))),
            ("cache-control", "no-store"),
            ("x-content-type-options", "nosniff"),
            *response.headers,
        ]
        reason = HTTPStatus(response.status).phrase.encode()
        head = h11.Response(status_code=response.status, headers=headers, reason=reason)
        data = conn.send(head) or b""
        if not head_only:
            data += conn.send(h11.Data(data=response.body)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
        writer.write(data)
        await writer.drain()

    async def _refuse(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, status: int
    ) -> None:
        """Answer a request that could not be read, if the protocol still allows an answer."""
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        response = Response(
            status, f"{_REASONS[status]}\n".encode(), headers=(("connection", "close"),)
        )
        with contextlib.suppress(h11.LocalProtocolError):
            await self._send(conn, writer, response)


def _request(head: h11.Request, body: bytes) -> Request:
    target = head.target.decode("ascii", "replace")
    try:
        parts = urlsplit(target)
        fields = parse_qs(parts.query, max_num_fields=_MAX_QUERY_FIELDS)
    except ValueError:  # too many fields, or a malformed authority
        raise _UnreadableError(400) from None
    return Request(
        method=head.method.decode("ascii", "replace"),
        path=parts.path,
        query={name: values[0] for name, values in fields.items()},
        headers={n.decode("latin-1").lower(): v.decode("latin-1") for n, v in head.headers},
        body=body,
    )

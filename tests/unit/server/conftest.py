"""A live I/O shell for the server tests: a real Worker on 127.0.0.1 in a thread, real TLS.

The Worker runs on asyncio's loop or on uvloop (each test that takes `live` runs on both), with
listeners for 587 and 465 on free ports, certificates from trustme and a handler factory whose
answers the test chooses. Tests wait on events (a log line, a reply, a closed socket), never on
the clock.
"""

from __future__ import annotations

import asyncio
import io
import re
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import trustme
import uvloop

from sendgate.log import EventLog
from sendgate.server.admission import Admission
from sendgate.server.caps import ConnectionCaps
from sendgate.server.supervisor import bind
from sendgate.server.tls import TlsContextHolder
from sendgate.server.worker import Listener, Timeouts, Worker
from sendgate.smtp import replies
from sendgate.smtp.events import AuthAttempt, Event, MailFrom, MessageReceived, RcptTo
from sendgate.smtp.replies import Reply
from sendgate.smtp.session import Session, SessionSettings

HOSTNAME = "mx.example.test"
WAIT = 10.0  # seconds any single wait may take before the test fails
REFUSAL = Reply(421, "4.7.0", "Not now")
LoopKind = Literal["asyncio", "uvloop"]
Mode = Literal["admit", "refuse", "raise", "later", "later_refuse", "later_raise"]


class LogLines(io.StringIO):
    """The EventLog's stream: keeps every line and wakes whoever waits for one."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = threading.Condition()

    def write(self, text: str) -> int:
        with self._changed:
            written = super().write(text)
            self._changed.notify_all()
        return written

    def lines(self) -> list[str]:
        with self._changed:
            return self.getvalue().splitlines()

    def matching(self, pattern: str) -> list[str]:
        return [line for line in self.lines() if re.search(pattern, line)]

    def wait_for(self, pattern: str, count: int = 1) -> str:
        """The `count`-th line matching `pattern`, once it has been written."""
        with self._changed:
            found = self._changed.wait_for(lambda: len(self.matching(pattern)) >= count, WAIT)
        assert found, f"no line matching {pattern!r} in:\n" + "\n".join(self.lines())
        return self.matching(pattern)[count - 1]


@dataclass
class Gate:
    """Opened from the test's thread, awaited on the worker's loop in a thread as a store lookup
    would be; its own threads, so that a stopping loop does not wait for a gate never opened."""

    opened: threading.Event = field(default_factory=threading.Event)
    _pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(4))

    def open(self) -> None:
        self.opened.set()

    def passed(self) -> Awaitable[bool]:
        return asyncio.get_running_loop().run_in_executor(self._pool, self.opened.wait, WAIT)

    def close(self) -> None:
        self.opened.set()
        self._pool.shutdown(wait=True)


@dataclass
class Handler:
    """Accepts everything; `raising` events raise (at once or when awaited), `gated` ones wait."""

    events: list[Event] = field(default_factory=list)
    raising: dict[type, Literal["now", "later"]] = field(default_factory=dict)
    gated: set[type] = field(default_factory=set)
    gate: Gate = field(default_factory=Gate)
    waiting: threading.Event = field(default_factory=threading.Event)

    def handle(self, event: Event, session: Session) -> Reply | Awaitable[Reply]:
        self.events.append(event)
        kind = type(event)
        if self.raising.get(kind) == "now":
            raise RuntimeError("handler bug")
        if kind in self.raising or kind in self.gated:
            return self._later(event)
        return self._answer(event)

    async def _later(self, event: Event) -> Reply:
        if type(event) in self.raising:
            raise RuntimeError("handler bug, later")
        self.waiting.set()
        await self.gate.passed()
        return self._answer(event)

    @staticmethod
    def _answer(event: Event) -> Reply:
        if isinstance(event, AuthAttempt):
            return replies.AUTH_OK
        if isinstance(event, MailFrom):
            return replies.SENDER_OK
        if isinstance(event, RcptTo):
            return replies.RECIPIENT_OK
        assert isinstance(event, MessageReceived)
        return replies.QUEUED.with_text("queued as TEST")


@dataclass
class Admissions:
    """The handler factory under test: admits, refuses or raises, at once or after a gate."""

    mode: Mode = "admit"
    handler: Handler = field(default_factory=Handler)
    asked: list[tuple[str, str]] = field(default_factory=list)
    asking: threading.Event = field(default_factory=threading.Event)
    gate: Gate = field(default_factory=Gate)

    def __call__(self, client_ip: str, conn_id: str) -> Admission | Awaitable[Admission]:
        self.asked.append((client_ip, conn_id))
        self.asking.set()
        if self.mode == "raise":
            raise RuntimeError("factory bug")
        if self.mode == "refuse":
            return REFUSAL
        if self.mode == "admit":
            return self.handler
        return self._later(self.mode)

    async def _later(self, mode: Mode) -> Admission:
        await self.gate.passed()
        if mode == "later_raise":
            raise RuntimeError("factory bug, later")
        return REFUSAL if mode == "later_refuse" else self.handler


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    pair: CertPair
    client: ssl.SSLContext


class LiveWorker:
    """A Worker serving 587 and 465 on 127.0.0.1 from a thread running its own event loop."""

    def __init__(
        self,
        loop_kind: LoopKind,
        pki: Pki,
        admissions: Admissions,
        *,
        caps: ConnectionCaps,
        timeouts: Timeouts,
        settings: SessionSettings,
        pair: CertPair | None = None,
        budget: int | None = None,
        memory: int = 1 << 40,
    ) -> None:
        self.loop_kind = loop_kind
        self.client_ctx = pki.client
        self.admissions = admissions
        self.caps = caps
        self.log = LogLines()
        self.tls = TlsContextHolder([pair or pki.pair])
        self._socks = [bind("127.0.0.1", 0), bind("127.0.0.1", 0)]
        self.port = self._socks[0].getsockname()[1]
        self.tls_port = self._socks[1].getsockname()[1]
        self.worker = Worker(
            listeners=[Listener(self._socks[0], False), Listener(self._socks[1], True)],
            settings=settings,
            tls=self.tls,
            caps=caps,
            handler_factory=admissions,
            log=EventLog(self.log),
            timeouts=timeouts,
            max_connections=budget,
            message_memory=memory,
        )
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"worker-{loop_kind}", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            task = asyncio.ensure_future(self.worker.run(install_signals=False))
            await asyncio.sleep(0)  # run() has made its stop event: stop() works from here on
            self._ready.set()
            await task

        factory = uvloop.new_event_loop if self.loop_kind == "uvloop" else None
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(main())

    def start(self) -> LiveWorker:
        self._thread.start()
        assert self._ready.wait(WAIT)
        return self

    def call(self, function: Callable[[], object]) -> None:
        """Run `function` on the worker's loop (from the test's thread)."""
        assert self.loop is not None
        self.loop.call_soon_threadsafe(function)

    def stop(self) -> None:
        self.worker.stop_threadsafe()
        self.join()

    def join(self) -> None:
        self._thread.join(WAIT + 5)
        assert not self._thread.is_alive(), "the worker did not stop"
        for sock in self._socks:
            sock.close()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def client(self, source: str = "127.0.0.1") -> Client:
        """A client on 587 from `source` (any 127.0.0.0/8 address: Linux routes it to lo)."""
        return Client(socket.create_connection(("127.0.0.1", self.port), WAIT, (source, 0)))

    def tls_client(self) -> Client:
        sock = socket.create_connection(("127.0.0.1", self.tls_port), WAIT)
        return Client(self.client_ctx.wrap_socket(sock, server_hostname="localhost"))

    def raw_tls_client(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.tls_port), WAIT)


_REPLY_LINE = re.compile(rb"(\d{3})([ -])(?:(\d\.\d{1,3}\.\d{1,3}) )?(.*)")


@dataclass(frozen=True)
class Answer:
    code: int
    enhanced: str
    text: str  # of the last line
    texts: tuple[str, ...]  # of every line


class Client:
    """A blocking SMTP client that reads replies exactly as the server sent them."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = b""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def _line(self) -> bytes:
        while b"\r\n" not in self._buf:
            chunk = self.sock.recv(65536)
            assert chunk, f"closed by the server while reading a reply (have {self._buf!r})"
            self._buf += chunk
        line, self._buf = self._buf.split(b"\r\n", 1)
        return line

    def reply(self) -> Answer:
        texts: list[str] = []
        while True:
            match = _REPLY_LINE.fullmatch(self._line())
            assert match is not None
            texts.append(match.group(4).decode())
            if match.group(2) == b" ":
                enhanced = (match.group(3) or b"").decode()
                return Answer(int(match.group(1)), enhanced, texts[-1], tuple(texts))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, line: str) -> Answer:
        self.send(line.encode() + b"\r\n")
        return self.reply()

    def starttls(self, ctx: ssl.SSLContext) -> None:
        assert self._buf == b"", f"bytes before TLS: {self._buf!r}"
        self.sock = ctx.wrap_socket(self.sock, server_hostname="localhost")

    def closed(self) -> bytes:
        """Everything still sent before the server closed (a reset counts as closed)."""
        return self._buf + read_to_close(self.sock)


def read_to_close(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, ssl.SSLEOFError):
        pass
    return data


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1", HOSTNAME)
    root = tmp_path_factory.mktemp("server-pki")
    pair = CertPair(root / "cert.pem", root / "key.pem")
    leaf.private_key_and_cert_chain_pem.write_to_path(str(pair.cert))
    leaf.private_key_pem.write_to_path(str(pair.key))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return Pki(pair, client)


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_kind(request: pytest.FixtureRequest) -> LoopKind:
    kind: LoopKind = request.param
    return kind


ServeFactory = Callable[..., LiveWorker]


@pytest.fixture
def serve(loop_kind: LoopKind, pki: Pki) -> Iterator[ServeFactory]:
    """Start a LiveWorker; keyword arguments override caps, timeouts, settings, certificate and
    the worker's own connection ceiling (`budget`) and its message memory (`memory`)."""
    started: list[LiveWorker] = []

    def start(
        admissions: Admissions | None = None,
        *,
        caps: ConnectionCaps | None = None,
        timeouts: Timeouts | None = None,
        settings: SessionSettings | None = None,
        pair: CertPair | None = None,
        budget: int | None = None,
        memory: int = 1 << 40,
    ) -> LiveWorker:
        live = LiveWorker(
            loop_kind,
            pki,
            admissions or Admissions(),
            caps=caps or ConnectionCaps(1, 100, 100),
            timeouts=timeouts or Timeouts(command=30, session=60, handshake=10, reload_interval=0),
            settings=settings or SessionSettings(hostname=HOSTNAME, auth_required=False),
            pair=pair,
            budget=budget,
            memory=memory,
        )
        started.append(live.start())
        return live

    yield start
    for live in started:
        gates = (live.admissions.gate, live.admissions.handler.gate)
        for gate in gates:
            gate.open()  # nothing may still wait for a test that has ended
        if live.running:
            live.stop()
        for gate in gates:
            gate.close()

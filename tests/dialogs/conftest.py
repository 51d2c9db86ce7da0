"""Dialog transcripts: the parser and two players, an in-memory Session and a live TLS server.

Transcript lines:
  `# ...`            comment            `set KEY=VALUE`  SessionSettings field (int) for this dialog
  `> TEXT`           client line + CRLF `>> TEXT`        raw bytes, escapes \\r \\n \\t \\\\ \\xHH
  `< CODE [X.Y.Z]`   next reply (multi-line replies count once, by their last line)
  `starttls`         client TLS handshake       `expect-close`  the server closes the connection
  `queued N`         N messages are in the spool at the end of the dialog
`{plain-alice}` / `{plain-bob}` / `{plain-wrong}` in a line become AUTH PLAIN responses.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO

import pytest
import trustme
from argon2 import PasswordHasher
from tests.support.loopback import AsyncioServer
from tests.support.session import TLS, plain, respond_async, shell
from tests.support.tls import client_context

from sendgate.log import EventLog
from sendgate.policy.auth import Authenticator
from sendgate.server.caps import ConnectionCaps
from sendgate.server.supervisor import bind
from sendgate.server.tls import TlsContextHolder
from sendgate.server.worker import Listener, Timeouts, Worker
from sendgate.smtp.session import Session, SessionSettings
from sendgate.store.local.queue import LocalQueueStore
from sendgate.store.local.users import LocalUserStore
from sendgate.submission import Submission

HOSTNAME = "mx.example.test"
PASSWORDS = {
    "alice@example.test": "alice-dialog-password",
    "bob@example.test": "bob-dialog-password",
}
_REPLY = re.compile(rb"(\d{3})([ -])(\d\.\d{1,3}\.\d{1,3} )?.*")


MACROS = {
    "{plain-alice}": plain("alice@example.test", PASSWORDS["alice@example.test"]),
    "{plain-bob}": plain("bob@example.test", PASSWORDS["bob@example.test"]),
    "{plain-wrong}": plain("alice@example.test", "not-the-password-at-all"),
}


@dataclass(frozen=True)
class Step:
    kind: str  # send | expect | starttls | close | queued
    data: bytes = b""
    code: int = 0
    enhanced: str = ""
    line: int = 0


@dataclass(frozen=True)
class Dialog:
    name: str
    settings: dict[str, int]
    steps: tuple[Step, ...]


def _unescape(text: str) -> bytes:
    return text.encode("latin-1").decode("unicode_escape").encode("latin-1")


def parse_dialog(path: Path) -> Dialog:
    steps: list[Step] = []
    settings: dict[str, int] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.rstrip()
        for macro, value in MACROS.items():
            line = line.replace(macro, value)
        if not line or line.startswith("#"):
            continue
        if line.startswith(">> "):
            steps.append(Step("send", _unescape(line[3:]), line=number))
        elif line.startswith("> "):
            steps.append(Step("send", line[2:].encode() + b"\r\n", line=number))
        elif line.startswith("< "):
            code, _, enhanced = line[2:].partition(" ")
            steps.append(Step("expect", code=int(code), enhanced=enhanced, line=number))
        elif line == "starttls":
            steps.append(Step("starttls", line=number))
        elif line == "expect-close":
            steps.append(Step("close", line=number))
        elif line.startswith("queued "):
            steps.append(Step("queued", code=int(line[7:]), line=number))
        elif line.startswith("set "):
            key, _, value = line[4:].partition("=")
            settings[key] = int(value)
        else:
            raise ValueError(f"{path.name}:{number}: cannot parse {raw!r}")
    return Dialog(path.stem, settings, tuple(steps))


def split_replies(data: bytes) -> tuple[list[tuple[int, str]], bytes]:
    """Complete replies in `data` as (code, enhanced) by their last line, plus the leftover."""
    found: list[tuple[int, str]] = []
    while True:
        end = data.find(b"\r\n")
        if end < 0:
            return found, data
        line, data = data[:end], data[end + 2 :]
        match = _REPLY.fullmatch(line)
        assert match is not None, f"malformed reply line {line!r}"
        if match.group(2) == b" ":
            enhanced = (match.group(3) or b"").decode().strip()
            found.append((int(match.group(1)), enhanced))


@dataclass
class Backend:
    """Real store (SQLite), spool and submission rules in a temporary directory."""

    store: LocalUserStore
    queue: LocalQueueStore
    submission: Submission
    settings: SessionSettings
    executor: ThreadPoolExecutor
    log_stream: TextIO


def make_backend(root: Path, settings: dict[str, int]) -> Backend:
    root.mkdir(parents=True)
    store = LocalUserStore(root / "users.db")
    hasher = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    for user, password in PASSWORDS.items():
        store.add_user(user, hasher.hash(password))
    queue = LocalQueueStore(root / "spool")
    executor = ThreadPoolExecutor(4)
    log_stream = (root / "log.txt").open("a")
    authenticator = Authenticator(store, hasher, executor, 60.0, time.monotonic)
    submission = Submission(
        hostname=HOSTNAME,
        authenticator=authenticator,
        queue=queue,
        executor=executor,
        log=EventLog(log_stream),
        clock=time.time,
    )
    base = SessionSettings(hostname=HOSTNAME)
    # Transcripts only set integer limits (max_message_size, max_recipients, max_errors).
    tuned = replace(base, **settings)  # type: ignore[arg-type]
    return Backend(store, queue, submission, tuned, executor, log_stream)


def play_in_memory(dialog: Dialog, backend: Backend) -> None:
    asyncio.run(_play_in_memory(dialog, backend))


async def _play_in_memory(dialog: Dialog, backend: Backend) -> None:
    session = Session(backend.settings)
    answer = shell(backend.submission.connection("192.0.2.1", "mem"), session)
    replies_seen: list[tuple[int, str]] = []
    leftover = b""

    def collect() -> None:
        nonlocal leftover
        found, leftover = split_replies(leftover + session.data_to_send())
        replies_seen.extend(found)

    for step in dialog.steps:
        where = f"{dialog.name}:{step.line}"
        if step.kind == "send":
            session.receive_data(step.data)
            await respond_async(session, answer)
        elif step.kind == "expect":
            collect()
            assert replies_seen, f"{where}: expected {step.code}, got no reply"
            check_reply(where, step, replies_seen.pop(0))
        elif step.kind == "starttls":
            session.tls_established(TLS)
        elif step.kind == "close":
            collect()
            assert not replies_seen, f"{where}: unexpected replies before close: {replies_seen}"
            assert session.closed, f"{where}: session still open"
        else:
            assert len(backend.queue.ids()) == step.code, f"{where}: queued count"
    collect()
    assert not replies_seen, f"{dialog.name}: trailing replies {replies_seen}"
    assert not leftover, f"{dialog.name}: trailing bytes {leftover!r}"


def check_reply(where: str, step: Step, got: tuple[int, str]) -> None:
    assert got[0] == step.code, f"{where}: expected {step.code} {step.enhanced}, got {got}"
    assert not step.enhanced or got[1] == step.enhanced, (
        f"{where}: expected {step.enhanced}, got {got}"
    )


class LiveServer(AsyncioServer):
    """A real Worker (the production I/O shell) on 127.0.0.1, run in a thread with its loop."""

    def __init__(self, backend: Backend, cert: Path, key: Path) -> None:
        super().__init__("dialog-server")
        pair = _Pair(cert, key)
        self.sock = bind("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.worker = Worker(
            listeners=[Listener(self.sock, implicit_tls=False)],
            settings=backend.settings,
            tls=TlsContextHolder([pair]),
            caps=ConnectionCaps(1, 100, 100),
            handler_factory=backend.submission.connection,
            log=backend.submission.log,
            timeouts=Timeouts(command=30, session=60, shutdown_grace=5, reload_interval=0),
        )

    def _bind(self) -> None:
        """Bound when made: `port` is known before the worker starts."""

    async def _run_async(self) -> None:
        task = asyncio.ensure_future(self.worker.run(install_signals=False))
        await asyncio.sleep(0)  # let run() create its stop event before announcing readiness
        self._serving()
        await task

    def _interrupt(self) -> None:
        self.worker.stop_threadsafe()

    def _release(self) -> None:
        self.sock.close()


@dataclass(frozen=True)
class _Pair:
    cert: Path
    key: Path


def play_live(
    dialog: Dialog, server: LiveServer, backend: Backend, client_ctx: ssl.SSLContext
) -> None:
    sock: socket.socket = socket.create_connection(("127.0.0.1", server.port), 10)
    replies_seen: list[tuple[int, str]] = []
    leftover = b""
    try:
        for step in dialog.steps:
            where = f"{dialog.name}:{step.line}"
            if step.kind == "send":
                sock.sendall(step.data)
            elif step.kind == "expect":
                while not replies_seen:
                    chunk = sock.recv(65536)
                    assert chunk, f"{where}: connection closed while waiting for {step.code}"
                    found, leftover = split_replies(leftover + chunk)
                    replies_seen.extend(found)
                check_reply(where, step, replies_seen.pop(0))
            elif step.kind == "starttls":
                assert not replies_seen, f"{where}: replies before TLS: {replies_seen}"
                assert not leftover, f"{where}: bytes before TLS: {leftover!r}"
                sock = client_ctx.wrap_socket(sock, server_hostname="localhost")
            elif step.kind == "close":
                assert not replies_seen, f"{where}: unexpected replies before close: {replies_seen}"
                tail = sock.recv(65536)
                assert tail == b"", f"{where}: server did not close, sent {tail!r}"
            else:
                assert len(backend.queue.ids()) == step.code, f"{where}: queued count"
        assert not replies_seen, f"{dialog.name}: trailing replies {replies_seen}"
        assert not leftover, f"{dialog.name}: trailing bytes {leftover!r}"
    finally:
        sock.close()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, trustme.CA]:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1", HOSTNAME)
    root = tmp_path_factory.mktemp("tls")
    cert_path, key_path = root / "cert.pem", root / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    return cert_path, key_path, ca


@pytest.fixture
def client_ctx(tls_files: tuple[Path, Path, trustme.CA]) -> ssl.SSLContext:
    return client_context(tls_files[2])


@pytest.fixture
def backend_factory(tmp_path: Path) -> Iterator[Callable[[dict[str, int]], Backend]]:
    made: list[Backend] = []

    def make(settings: dict[str, int]) -> Backend:
        backend = make_backend(tmp_path / f"b{len(made)}", settings)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.executor.shutdown(wait=True)
        backend.store.close()
        backend.log_stream.close()


class Players:
    """What test_dialogs.py uses: parse a transcript and replay it one way or the other."""

    def __init__(
        self,
        make: Callable[[dict[str, int]], Backend],
        tls: tuple[Path, Path, trustme.CA],
        client_ctx: ssl.SSLContext,
    ) -> None:
        self._make = make
        self._tls = tls
        self._client_ctx = client_ctx

    def memory(self, path: Path) -> None:
        dialog = parse_dialog(path)
        play_in_memory(dialog, self._make(dialog.settings))

    def live(self, path: Path) -> str:
        """Replay over TLS against the real I/O shell; returns the server's event log."""
        dialog = parse_dialog(path)
        backend = self._make(dialog.settings)
        with LiveServer(backend, self._tls[0], self._tls[1]) as server:
            play_live(dialog, server, backend, self._client_ctx)
        backend.log_stream.flush()
        return Path(backend.log_stream.name).read_text()


@pytest.fixture
def players(
    backend_factory: Callable[[dict[str, int]], Backend],
    tls_files: tuple[Path, Path, trustme.CA],
    client_ctx: ssl.SSLContext,
) -> Players:
    return Players(backend_factory, tls_files, client_ctx)

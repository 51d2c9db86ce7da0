"""Fixtures for end-to-end tests: a trustme CA, instances made by the real CLI, live servers.

An `Instance` is a directory made with `sendgate init` (certificate from the session's trustme
CA) plus one user added with `sendgate user add`; a `ServerProcess` is `sendgate serve` on that
instance, running as its own process group. A thread drains the server's stderr into a list so
that tests wait on log events (readiness, reloads, crashes) instead of sleeping. Every server
still running at the end of a test is stopped with SIGTERM and must exit 0 with no traceback.

Security: the servers' log lines and SMTP replies are only matched and compared, never executed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import IO

import pytest
import trustme
from cryptography import x509
from tests.peers.postgres_server import PostgresServer
from tests.support.session import plain

from sendgate.store.local.spool import Spool

HOSTNAME = "mx.example.test"
USER = "alice@example.test"
# What test clients say in EHLO; smtplib would otherwise send "[127.0.0.1]" on this machine.
CLIENT_NAME = "client.example"
PASSWORD = "correct horse battery staple 42"
CERT_NAMES = ("localhost", "127.0.0.1", HOSTNAME)
CLI_TIMEOUT = 60.0
START_TIMEOUT = 30.0
STOP_TIMEOUT = 45.0  # beyond the default shutdown_grace (30 s), after which the server aborts
SOCKET_TIMEOUT = 20.0
_LISTENING = re.compile(r"event=listening kind=(submissions?) address=127\.0\.0\.1:(\d+)")
_PIDS = re.compile(r"event=workers_started .*? pids=([\d,]+) runner_pids=(\d+)")
_QUEUED = re.compile(r"queued as ([0-9A-Z]{18})")
_CONN = re.compile(r"worker=(\d+) conn=(c\d+)")

TomlScalar = bool | int | float | str | list[str]


def _queue_id_of(reply_text: str) -> str:
    """The queue id from a `250 2.0.0 queued as <id>` reply text."""
    match = _QUEUED.search(reply_text)
    assert match is not None, f"no queue id in reply {reply_text!r}"
    return match.group(1)


def _simple_message(sender: str, tag: str) -> bytes:
    lines = [
        f"From: {sender}",
        "To: bob@example.org",
        f"Subject: {tag}",
        f"Message-ID: <{tag}@example.test>",
        f"Date: {format_datetime(datetime.now(UTC))}",
        "",
        f"body of {tag}",
        "",
    ]
    return "\r\n".join(lines).encode()


# --- the instance: a directory made by the CLI ---------------------------------------------------


def _toml_literal(value: TomlScalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    # A JSON string (or array of strings) of ASCII text is also TOML.
    return json.dumps(value)


def _lookup(document: Mapping[str, object], dotted: str) -> object:
    node: object = document
    for part in dotted.split("."):
        assert isinstance(node, dict), f"{dotted}: not a table"
        node = node[part]
    return node


def set_config_values(path: Path, settings: Mapping[str, TomlScalar]) -> None:
    """Rewrite the `key = value` lines that `sendgate init` wrote for the dotted keys given."""
    lines = path.read_text().splitlines(keepends=True)
    for dotted, value in settings.items():
        section, _, key = dotted.rpartition(".")
        current = ""
        for index, line in enumerate(lines):
            stripped = line.strip()
            if stripped.startswith("[") and stripped.endswith("]"):
                current = stripped[1:-1].strip()
            elif current == section and stripped.startswith(f"{key} ="):
                lines[index] = f"{key} = {_toml_literal(value)}\n"
                break
        else:
            raise KeyError(f"{dotted}: no such line in {path}")
    path.write_text("".join(lines))
    document = tomllib.loads(path.read_text())
    for dotted, value in settings.items():
        assert _lookup(document, dotted) == value, f"{dotted} was not set"


def write_certificate(ca: trustme.CA, cert_path: Path, key_path: Path) -> int:
    """Issue a new server certificate, replace both files atomically; return its serial."""
    leaf = ca.issue_cert(*CERT_NAMES)
    chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
    for path, data, mode in (
        (cert_path, chain, 0o644),
        (key_path, leaf.private_key_pem.bytes(), 0o600),
    ):
        staging = path.with_name(path.name + ".new")
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(staging, mode)
        os.replace(staging, path)
    return x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).serial_number


@dataclass(frozen=True, slots=True)
class Cmd:
    """What one CLI run printed and returned."""

    code: int
    stdout: str
    stderr: str

    def ok(self) -> Cmd:
        assert self.code == 0, f"exit {self.code}: {self.stderr}"
        return self


def cli_env() -> dict[str, str]:
    """The environment for CLI subprocesses: ours, without a config path that could leak in."""
    env = dict(os.environ)
    env.pop("SENDGATE_CONFIG", None)
    return env


def run_cli(args: list[str], *, stdin: str = "", cwd: Path | None = None) -> Cmd:
    """Run `python -m sendgate ARGS` with `stdin` piped (never a terminal)."""
    completed = subprocess.run(
        [sys.executable, "-m", "sendgate", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        env=cli_env(),
        cwd=cwd,
        check=False,
    )
    return Cmd(completed.returncode, completed.stdout, completed.stderr)


@dataclass(frozen=True, slots=True)
class Instance:
    """A sendgate instance directory with one user, `USER`, whose password is `PASSWORD`."""

    directory: Path
    config: Path
    data_dir: Path
    cert: Path
    key: Path
    ca_pem: Path
    ca: trustme.CA
    user: str = USER
    password: str = PASSWORD

    def cli(self, *args: str, stdin: str = "") -> Cmd:
        """Run `sendgate --config <this instance> ARGS`."""
        return run_cli(["--config", str(self.config), *args], stdin=stdin)

    def configure(self, settings: Mapping[str, TomlScalar]) -> None:
        set_config_values(self.config, settings)

    def new_certificate(self) -> int:
        """Replace this instance's certificate and key with a fresh pair; return the serial."""
        return write_certificate(self.ca, self.cert, self.key)

    def spool(self) -> Spool:
        return Spool(self.data_dir / "spool")

    def message(self, tag: str, *, sender: str = "") -> bytes:
        """A small complete message (own Message-ID and Date) whose body names `tag`."""
        return _simple_message(sender or self.user, tag)

    def auth_plain(self) -> str:
        """The base64 initial response of AUTH PLAIN for this instance's user."""
        return plain(self.user, self.password)

    def queue_ids(self) -> list[str]:
        return self.spool().ids()

    def client_context(self) -> ssl.SSLContext:
        """A verifying client context trusting only the test CA."""
        return ssl.create_default_context(cafile=str(self.ca_pem))


class InstanceFactory:
    """Makes instances under `root` with `sendgate init` and `sendgate user add`."""

    def __init__(self, root: Path, ca: trustme.CA, ca_pem: Path) -> None:
        self._root = root
        self._ca = ca
        self._ca_pem = ca_pem
        self._count = 0

    def cli(self, *args: str, stdin: str = "") -> Cmd:
        """Run `sendgate ARGS` (no --config added) in the factory's directory."""
        return run_cli(list(args), stdin=stdin, cwd=self._root)

    def __call__(
        self, settings: Mapping[str, TomlScalar] | None = None, *, with_user: bool = True
    ) -> Instance:
        """A new instance; `with_user` False leaves out `sendgate user add` (nodes that share a
        user store with one that has the user, or whose store is not ready yet)."""
        self._count += 1
        base = self._root / f"instance{self._count}"
        tls_dir = base / "tls-files"
        tls_dir.mkdir(parents=True)
        cert, key = tls_dir / "cert.pem", tls_dir / "key.pem"
        write_certificate(self._ca, cert, key)
        directory = base / "sg"
        run_cli(
            [
                "init",
                str(directory),
                "--hostname",
                HOSTNAME,
                "--submission",
                "127.0.0.1:0",
                "--submissions",
                "127.0.0.1:0",
                "--cert",
                str(cert),
                "--key",
                str(key),
            ]
        ).ok()
        instance = Instance(
            directory=directory,
            config=directory / "sendgate.toml",
            data_dir=directory / "data",
            cert=cert,
            key=key,
            ca_pem=self._ca_pem,
            ca=self._ca,
        )
        # Delivery is held unless a test asks for it: no test may reach the system's DNS. The
        # scheduled audit's live probe would be connections and log lines other tests count.
        instance.configure(
            {"listen.workers": 1, "delivery.hold": True, "audit.interval": 0, **(settings or {})}
        )
        if with_user:
            instance.cli("user", "add", USER, stdin=PASSWORD + "\n").ok()
        return instance


# --- raw SMTP over a socket, for what smtplib will not do ----------------------------------------


@dataclass(frozen=True, slots=True)
class SmtpReply:
    """One reply: its code and the text of each line (after "250-" or "250 ")."""

    code: int
    lines: tuple[str, ...]

    @property
    def enhanced(self) -> str:
        """The enhanced status code of the last line ("" when it has none)."""
        first = self.lines[-1].split(" ", 1)[0]
        return first if re.fullmatch(r"\d\.\d{1,3}\.\d{1,3}", first) else ""


class RawClient:
    """A line-oriented SMTP client on a plain socket that can be upgraded to TLS by hand."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    @classmethod
    def connect(cls, port: int) -> RawClient:
        return cls(socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        """Read one CRLF-terminated line; ConnectionError if the server closes first."""
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"connection closed; unterminated data {self.buffer!r}")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def reply(self) -> SmtpReply:
        lines: list[str] = []
        while True:
            line = self.line().decode("utf-8", "replace")
            assert re.match(r"\d{3}[ -]", line), f"malformed reply line {line!r}"
            lines.append(line[4:])
            if line[3] == " ":
                return SmtpReply(int(line[:3]), tuple(lines))

    def command(self, text: str) -> SmtpReply:
        self.send(text.encode() + b"\r\n")
        return self.reply()

    def starttls(self, context: ssl.SSLContext) -> None:
        assert not self.buffer, f"plaintext after the 220 to STARTTLS: {self.buffer!r}"
        self.sock = context.wrap_socket(self.sock, server_hostname="127.0.0.1")

    def closed_by_server(self) -> bool:
        """Block until the server closes the connection; True if it sent nothing more first."""
        extra = self.buffer
        try:
            while chunk := self.sock.recv(4096):
                extra += chunk
        except (ConnectionResetError, ssl.SSLEOFError):
            pass
        self.buffer = b""
        return not extra


# --- the server process --------------------------------------------------------------------------


class ServerProcess:
    """`sendgate --config F serve` in its own process group, with its log collected."""

    def __init__(self, instance: Instance, *, nofile: int | None = None) -> None:
        self.instance = instance
        self.nofile = nofile  # a descriptor limit (soft and hard) to start the server under
        self.proc: subprocess.Popen[bytes] | None = None
        self.lines: list[str] = []
        self.port = 0  # STARTTLS listener
        self.tls_port = 0  # implicit-TLS listener
        self.worker_pids: tuple[int, ...] = ()
        self.runner_pid = 0
        self.returncode: int | None = None
        self._cond = threading.Condition()
        self._eof = False
        self._reader: threading.Thread | None = None

    # --- lifecycle ---

    def start(self) -> ServerProcess:
        """Start the server and return once it logged ready and forked its workers."""
        assert self.proc is None or self.returncode is not None, "already running"
        with self._cond:
            self.lines = []
            self._eof = False
        self.returncode = None
        limit = [] if self.nofile is None else ["prlimit", f"--nofile={self.nofile}", "--"]
        self.proc = subprocess.Popen(
            [
                *limit,
                sys.executable,
                "-m",
                "sendgate",
                "--config",
                str(self.instance.config),
                "serve",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=cli_env(),
            start_new_session=True,  # so os.killpg reaches the workers too
        )
        assert self.proc.stderr is not None
        self._reader = threading.Thread(
            target=self._drain, args=(self.proc.stderr,), name="sendgate-log", daemon=True
        )
        self._reader.start()
        self.wait_for("event=ready", timeout=START_TIMEOUT)
        started = self.wait_for("event=workers_started", timeout=START_TIMEOUT)[0]
        ports = dict(_LISTENING.findall("\n".join(self.snapshot())))
        self.port = int(ports["submission"])
        self.tls_port = int(ports["submissions"])
        pids = _PIDS.search(started)
        assert pids is not None
        self.worker_pids = tuple(int(pid) for pid in pids.group(1).split(","))
        self.runner_pid = int(pids.group(2))  # the delivery runner
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.returncode is None

    def send_signal(self, signum: int) -> None:
        """Signal the supervisor (it forwards SIGTERM and SIGHUP to its workers)."""
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, wait for the whole tree to exit, return the supervisor's exit code."""
        assert self.proc is not None
        if self.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def send_group_signal(self, signum: int) -> None:
        """Signal every process of the instance (SIGSTOP, SIGCONT: a node paused as a whole)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signum)

    def kill(self) -> None:
        """SIGKILL the whole process group and wait until every member has exited."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.wait(STOP_TIMEOUT)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        """Wait until the supervisor and every worker have exited; the supervisor's exit code."""
        assert self.proc is not None
        assert self._reader is not None
        if self.returncode is not None:
            return self.returncode
        problem = ""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            problem = f"the server did not stop within {timeout}s"
        else:
            # stderr reaches EOF only once every process holding it (each worker) has exited.
            self._reader.join(timeout)
            if self._reader.is_alive():
                problem = "a worker outlived the supervisor"
        if problem:
            # Leave nothing of ours running, then report.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout)
            self._reader.join(timeout)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        self.returncode = self.proc.returncode
        assert not problem, f"{problem}:\n{self.tail()}"
        return self.returncode

    # --- the log ---

    def _drain(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def snapshot(self) -> list[str]:
        with self._cond:
            return list(self.lines)

    def mark(self) -> int:
        """The number of log lines so far: pass it as `since` to wait for later events."""
        with self._cond:
            return len(self.lines)

    def tail(self, count: int = 40) -> str:
        return "\n".join(self.snapshot()[-count:])

    def wait_for(
        self, pattern: str, *, since: int = 0, count: int = 1, timeout: float = START_TIMEOUT
    ) -> list[str]:
        """Block until `count` log lines after line `since` match `pattern`; return them."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [line for line in self.lines[since:] if regex.search(line)]
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    why = "the server exited" if self._eof else f"{timeout}s passed"
                    raise AssertionError(f"{why} before log {pattern!r}:\n{self.tail()}")
                self._cond.wait(remaining)

    def matching(self, pattern: str, *, since: int = 0) -> list[str]:
        regex = re.compile(pattern)
        return [line for line in self.snapshot()[since:] if regex.search(line)]

    # --- clients ---

    def smtp(self, *, login: bool = True, timeout: float = SOCKET_TIMEOUT) -> smtplib.SMTP:
        """An smtplib client on the STARTTLS port, after STARTTLS (and AUTH unless not `login`)."""
        client = smtplib.SMTP("127.0.0.1", self.port, CLIENT_NAME, timeout)
        client.starttls(context=self.instance.client_context())
        client.ehlo()  # TLS reset the session (RFC 3207): greet again
        if login:
            client.login(self.instance.user, self.instance.password)
        return client

    def smtps(self, *, login: bool = True, timeout: float = SOCKET_TIMEOUT) -> smtplib.SMTP_SSL:
        """An smtplib client on the implicit-TLS port."""
        client = smtplib.SMTP_SSL(
            "127.0.0.1",
            self.tls_port,
            CLIENT_NAME,
            timeout=timeout,
            context=self.instance.client_context(),
        )
        if login:
            client.login(self.instance.user, self.instance.password)
        return client

    def raw(self) -> RawClient:
        """A raw client connected to the STARTTLS port (nothing read yet)."""
        return RawClient.connect(self.port)

    def submit(
        self, client: smtplib.SMTP, message: bytes, *, sender: str = USER, rcpt: str = ""
    ) -> str:
        """Send one message on a logged-in client; return the queue id from the 250 reply."""
        code, text = client.mail(sender)
        assert code == 250, (code, text)
        code, text = client.rcpt(rcpt or "bob@example.org")
        assert code == 250, (code, text)
        code, text = client.data(message)
        assert code == 250, (code, text)
        return _queue_id_of(text.decode())


class ServerFactory:
    """Starts servers; `close()` stops those still running and checks how they ended."""

    def __init__(self) -> None:
        self.servers: list[ServerProcess] = []

    def __call__(self, instance: Instance, *, nofile: int | None = None) -> ServerProcess:
        server = ServerProcess(instance, nofile=nofile)
        self.servers.append(server)
        return server.start()

    def close(self) -> None:
        problems = []
        for server in self.servers:
            if server.proc is None:
                continue
            if server.running:
                code = server.stop()
                if code != 0:
                    problems.append(f"server exited {code}:\n{server.tail()}")
            traceback = any("Traceback" in line for line in server.snapshot())
            if traceback:
                problems.append(f"traceback in the server log:\n{server.tail(80)}")
        assert not problems, "\n".join(problems)


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_pem(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def instance(tmp_path: Path, ca: trustme.CA, ca_pem: Path) -> InstanceFactory:
    """Call with an optional {"dotted.key": value} mapping of config settings."""
    return InstanceFactory(tmp_path, ca, ca_pem)


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL for the nodes of a cluster test (store.users, store.queue)."""
    with PostgresServer(tmp_path / "postgres") as started:
        yield started


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[ServerFactory]:
    """Call with an Instance to start `sendgate serve` on it."""
    factory = ServerFactory()
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def shared_server(
    tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA, ca_pem: Path
) -> Iterator[ServerProcess]:
    """One server (two workers) for a whole test module; tests must not stop it."""
    made = InstanceFactory(tmp_path_factory.mktemp("shared"), ca, ca_pem)({"listen.workers": 2})
    factory = ServerFactory()
    yield factory(made)
    factory.close()


@pytest.fixture
def open_directory() -> Iterator[Path]:
    """A directory any local user may pass through (pytest's own are their owner's only)."""
    path = Path(tempfile.mkdtemp(prefix="sendgate-open-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)

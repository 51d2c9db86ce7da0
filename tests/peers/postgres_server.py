"""A throwaway PostgreSQL (Debian's postgresql package) on a loopback port, for the cluster tests.

`PostgresServer(directory)` runs `initdb` into `directory` and `postgres` in the foreground: it
listens on 127.0.0.1 only, on a free port, with its Unix socket in `directory` too, and trusts
loopback connections (no password: nothing else reaches it). PostgreSQL refuses to run as root,
so when the tests run as root the server runs as the `postgres` system user that the Debian
package creates (or `nobody`), and `directory` is given to that user. It can be stopped and
started again on the same port (an outage seen by the stores); `reset` empties the database
between tests. Nothing outside `directory` is touched.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Self

import psycopg
from tests.support.waiting import wait_until

START_TIMEOUT = 60.0
DATABASE = "sendgate"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _binary(name: str) -> str:
    """A PostgreSQL server program: on PATH, else in Debian's versioned directory."""
    found = shutil.which(name)
    if found is not None:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not candidates:
        raise RuntimeError(f"{name} not found: install Debian's postgresql package")
    return candidates[-1]


def _server_user() -> str | None:
    """Whom to run the server as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise RuntimeError("running as root and no postgres or nobody user to run PostgreSQL as")


class PostgresServer:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = _free_port()
        self._user = _server_user()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def url(self) -> str:
        return f"postgresql://{self._role}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def _role(self) -> str:
        return self._user or pwd.getpwuid(os.geteuid()).pw_name

    def __enter__(self) -> Self:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._init()
        self.start()
        with self.connect("postgres") as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _init(self) -> None:
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            # The server's user must reach its directory: every parent up from the temporary
            # root is made traversable (pytest makes them owner-only).
            os.chown(self.directory, entry.pw_uid, entry.pw_gid)
            for ancestor in self.directory.parents:
                if ancestor == Path("/"):
                    break
                # Search (x) only, never read or write: the server's user passes through.
                os.chmod(ancestor, os.stat(ancestor).st_mode | 0o111)  # noqa: S103
        subprocess.run(
            [
                _binary("initdb"),
                *("-D", str(self.data), "-U", self._role, "--auth=trust"),
                *("--encoding=UTF8", "--locale=C.UTF-8", "--no-instructions"),
            ],
            check=True,
            capture_output=True,
            user=self._user,
        )

    def start(self) -> None:
        log = self.directory / "postgres.log"
        with open(log, "ab") as out:
            if self._user is not None:
                entry = pwd.getpwnam(self._user)
                os.chown(log, entry.pw_uid, entry.pw_gid)
            self._proc = subprocess.Popen(
                [
                    _binary("postgres"),
                    *("-D", str(self.data), "-p", str(self.port)),
                    *("-c", "listen_addresses=127.0.0.1"),
                    *("-c", f"unix_socket_directories={self.directory}"),
                    *("-c", "max_connections=200", "-c", "shared_buffers=64MB"),
                ],
                stdout=out,
                stderr=out,
                user=self._user,
            )
        if not wait_until(self._answers, within=START_TIMEOUT) or not self._running():
            self.stop()
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"postgres did not start:\n{tail}")

    def stop(self) -> None:
        """Fast shutdown (SIGINT): sessions are cut, as when the primary goes away."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGINT)
            self._proc.wait(30)
            self._proc = None

    def connect(self, database: str = DATABASE) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=self._role,
            dbname=database,
            autocommit=True,
            connect_timeout=5,
        )

    def reset(self) -> None:
        """An empty database: every schema object of the last test dropped."""
        with self.connect() as conn:
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")

    def _running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _answers(self) -> bool:
        if not self._running():
            return True  # exited: nothing to wait for (start fails on it)
        try:
            with self.connect("postgres") as conn:
                conn.execute("SELECT 1")
        except psycopg.OperationalError:
            return False
        return True

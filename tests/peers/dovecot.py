"""A throwaway Dovecot (Debian's dovecot-core) that only authenticates, for auth.backend tests.

`DovecotAuthServer(directory, users)` writes an auth-only configuration under `directory` (no
protocols, no listeners but one auth socket there), with a passwd-file of `users` (name ->
password), runs `dovecot -F` and stops it on exit. Nothing outside `directory` is touched.

Security: test code only; the passwords are the tests' own and stored in plain text on purpose.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.support.waiting import wait_until

START_TIMEOUT = 20.0


class DovecotAuthServer:
    def __init__(self, directory: Path, users: Mapping[str, str]) -> None:
        self.directory = directory
        self.socket = directory / "run" / "auth-sendgate"
        self._users = users
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        (self.directory / "run").mkdir(parents=True)
        (self.directory / "state").mkdir()
        passwd = self.directory / "passwd"
        passwd.write_text("".join(f"{n}:{{PLAIN}}{p}::::::\n" for n, p in self._users.items()))
        config = self.directory / "dovecot.conf"
        config.write_text(
            "protocols =\n"
            "listen = 127.0.0.1\n"
            f"instance_name = sendgate-test-{id(self)}\n"
            f"base_dir = {self.directory / 'run'}/\n"
            f"state_dir = {self.directory / 'state'}\n"
            f"log_path = {self.directory / 'dovecot.log'}\n"
            "ssl = no\n"
            "disable_plaintext_auth = no\n"
            "auth_mechanisms = plain login\n"
            "auth_failure_delay = 0\n"
            f"passdb {{\n  driver = passwd-file\n  args = {passwd}\n}}\n"
            "userdb {\n  driver = static\n  args = uid=nobody gid=nogroup home=/nonexistent\n}\n"
            # As root: the test's directories are its own (mode 0700), out of the dovecot user's
            # reach.
            "service auth {\n  user = root\n  unix_listener auth-sendgate {\n    mode = 0600\n"
            "  }\n}\n"
            "service auth-worker {\n  user = root\n}\n"
        )
        self._proc = subprocess.Popen(
            ["dovecot", "-F", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if not wait_until(self._accepts, within=START_TIMEOUT):
            self.stop()
            log = self.directory / "dovecot.log"
            raise RuntimeError(f"dovecot did not start: {log.read_text() if log.exists() else ''}")
        return self

    def _accepts(self) -> bool:
        """The auth socket takes connections (its file appears at bind, before the listen)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(self.socket))
            except OSError:
                return False
        return True

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(20)
            self._proc = None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()

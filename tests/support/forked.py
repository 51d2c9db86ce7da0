"""A function run in a forked child whose log lines the test waits on: `Forked`.

For code that owns a process (the `serve` supervisor, the delivery runner): it installs signal
handlers, forks, runs its own event loop. The child gets a process group of its own (so that a
failed test can end it and whatever it forked), an alarm as watchdog, and an EventLog writing
to a pipe. The test waits for log lines, never for the clock, sends real signals and reads the
exit code once every process holding the pipe has gone. What escapes the function is logged as
`event=child_error` (exit 70), its traceback printed to the child's stderr.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import sys
import time
import traceback
from collections.abc import Callable
from types import TracebackType
from typing import Self

from sendgate.log import EventLog

WAIT = 20.0  # seconds any single wait may take before the test fails
WATCHDOG = 90  # seconds before the child is ended by SIGALRM, whatever the test does


class Forked:
    """`main(log)` in a forked child; use as a context manager (leaving ends what still runs)."""

    def __init__(self, main: Callable[[EventLog], int]) -> None:
        self._main = main
        self.pid = 0
        self._read_fd = -1
        self._buffer = b""
        self._eof = False
        self.lines: list[str] = []
        self.code: int | None = None

    def start(self) -> Self:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                os.setpgid(0, 0)
                os.close(read_fd)
                signal.alarm(WATCHDOG)
                log = EventLog(os.fdopen(write_fd, "w", buffering=1, encoding="utf-8"))
                try:
                    code = self._main(log)
                except BaseException as exc:
                    traceback.print_exc()
                    log.event("child_error", "error", error=f"{type(exc).__name__}: {exc}")
                    code = 70
            finally:
                for output in (sys.stdout, sys.stderr):  # os._exit flushes nothing
                    with contextlib.suppress(Exception):
                        output.flush()
                os._exit(code)
        os.close(write_fd)
        with contextlib.suppress(OSError):  # also here: close() may kill the group at once
            os.setpgid(pid, pid)
        self.pid = pid
        self._read_fd = read_fd
        return self

    def _read(self, deadline: float) -> bool:
        """Read what is there, waiting until `deadline`; False when nothing came in time."""
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([self._read_fd], [], [], remaining)[0]:
            return False
        chunk = os.read(self._read_fd, 65536)
        if not chunk:
            self._eof = True
            return True
        *complete, self._buffer = (self._buffer + chunk).split(b"\n")
        self.lines.extend(line.decode("utf-8", "replace") for line in complete)
        return True

    def matching(self, pattern: str) -> list[str]:
        return [line for line in self.lines if re.search(pattern, line)]

    def wait_for(self, pattern: str, timeout: float = WAIT) -> str:
        """The first log line matching `pattern`, once written; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while not (found := self.matching(pattern)):
            if self._eof or not self._read(deadline):
                raise AssertionError(f"no line matching {pattern!r} in:\n" + self.text())
        return found[0]

    def signal(self, signum: signal.Signals) -> None:
        os.kill(self.pid, signum)

    def wait(self, timeout: float = WAIT) -> int:
        """The exit code, once the child and everything it forked have closed the log."""
        deadline = time.monotonic() + timeout
        while not self._eof:
            if not self._read(deadline):
                raise AssertionError(f"still running after {timeout}s:\n" + self.text())
        _, status = os.waitpid(self.pid, 0)
        self.code = os.waitstatus_to_exitcode(status)
        return self.code

    def text(self) -> str:
        return "\n".join(self.lines)

    def close(self) -> None:
        """End the child's process group if it still runs, reap it and close the pipe."""
        if self.pid and self.code is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.code = -signal.SIGKILL
        if self._read_fd >= 0:
            os.close(self._read_fd)
            self._read_fd = -1

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

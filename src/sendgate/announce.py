"""A pipe from the acceptor workers to the delivery runner carrying ids of newly queued messages.

It only shortens the wait before the first attempt: the runner also scans the spool, so an
announcement lost to a full pipe or a dead runner delays a message, never loses it. Writes of
one id are far below PIPE_BUF, so they are atomic and lines never interleave.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable


class Announcer:
    """Both ends of the pipe; create before forking, then each process keeps the end it uses."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.write_fd, False)
        os.set_blocking(self.read_fd, False)
        self._pending = b""

    def announce(self, queue_id: str) -> None:
        """Tell the runner about `queue_id`; never blocks (a full pipe drops the hint)."""
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            os.write(self.write_fd, queue_id.encode("ascii") + b"\n")

    def receive(self, deliver: Callable[[str], None]) -> None:
        """Read what is in the pipe and pass each complete id to `deliver` (non-blocking)."""
        while True:
            try:
                chunk = os.read(self.read_fd, 65536)
            except BlockingIOError:
                return
            if not chunk:
                return
            lines = (self._pending + chunk).split(b"\n")
            self._pending = lines.pop()
            for line in lines:
                with contextlib.suppress(UnicodeDecodeError):
                    deliver(line.decode("ascii"))

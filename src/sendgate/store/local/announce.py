"""A pipe from the acceptor processes to the delivery runner carrying ids of newly queued messages.

Part of the local queue backend: it only shortens the wait before the first attempt, since the
runner's queue handle also scans the spool; an announcement lost to a full pipe or a dead runner
delays a message, never loses it. A line is an id, or an id, a space and the message's envelope
as stored (one line of JSON), which spares the runner reading it back from disk; a line longer
than PIPE_BUF goes without its envelope, so every write is atomic and lines never interleave.

Security: the runner parses an announced envelope as strictly as a stored one, and falls back
to the spool when it cannot (the announcement is a hint, the spool is the truth).
"""

from __future__ import annotations

import contextlib
import os
import select

from sendgate.store.envelope import is_queue_id


class AnnouncePipe:
    """Both ends of the pipe: make it before forking; each process then keeps the end it uses."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.write_fd, False)
        os.set_blocking(self.read_fd, False)

    def writer(self) -> AnnounceWriter:
        """The acceptors' end; closes the reading end in this process."""
        os.close(self.read_fd)
        return AnnounceWriter(self.write_fd)

    def reader(self) -> AnnounceReader:
        """The runner's end; closes the writing end in this process."""
        os.close(self.write_fd)
        return AnnounceReader(self.read_fd)

    def close(self) -> None:
        """Close both ends (the supervisor keeps them open for the children it may restart)."""
        for fd in (self.read_fd, self.write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


class AnnounceWriter:
    """Writes ids; never blocks (a full pipe drops the hint)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def announce(self, queue_id: str, envelope: bytes | None = None) -> None:
        line = queue_id.encode("ascii")
        if envelope is not None and len(line) + len(envelope) + 2 <= select.PIPE_BUF:
            line += b" " + envelope
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            os.write(self.fd, line + b"\n")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


class AnnounceReader:
    """Reads ids without blocking; `fd` turns readable when some are waiting."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._pending = b""

    def take(self) -> list[tuple[str, bytes | None]]:
        """The well-formed ids written since the last call, each with the envelope line
        announced with it (unparsed), if any; a partial line waits for its end."""
        ids: list[tuple[str, bytes | None]] = []
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            lines = (self._pending + chunk).split(b"\n")
            self._pending = lines.pop()
            for line in lines:
                head, _, envelope = line.partition(b" ")
                with contextlib.suppress(UnicodeDecodeError):
                    text = head.decode("ascii")
                    if is_queue_id(text):
                        ids.append((text, envelope or None))
        return ids

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)

"""Pipes from the acceptor processes to the delivery runners carrying ids of newly queued messages.

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
from collections.abc import Sequence

from sendgate.store.envelope import is_queue_id, queue_id_share


class AnnouncePipe:
    """One pipe per delivery runner: make them before forking; each process then keeps the
    ends it uses. With several runners, an id goes to the pipe of the runner whose share of the
    queue it is in (`queue_id_share`)."""

    def __init__(self, runners: int = 1) -> None:
        self.read_fds: list[int] = []
        self.write_fds: list[int] = []
        try:
            for _ in range(runners):
                read_fd, write_fd = os.pipe()
                self.read_fds.append(read_fd)
                self.write_fds.append(write_fd)
                os.set_blocking(write_fd, False)
                os.set_blocking(read_fd, False)
        except OSError:
            self.close()
            raise

    def writer(self) -> AnnounceWriter:
        """The acceptors' end; closes every reading end in this process."""
        for fd in self.read_fds:
            os.close(fd)
        return AnnounceWriter(self.write_fds)

    def reader(self, runner: int = 0) -> AnnounceReader:
        """Runner `runner`'s end; closes every other end in this process."""
        for fd in self.write_fds + self.read_fds[:runner] + self.read_fds[runner + 1 :]:
            os.close(fd)
        return AnnounceReader(self.read_fds[runner])

    def close(self) -> None:
        """Close every end (the supervisor keeps them open for the children it may restart)."""
        for fd in self.read_fds + self.write_fds:
            with contextlib.suppress(OSError):
                os.close(fd)


class AnnounceWriter:
    """Writes ids; never blocks (a full pipe drops the hint)."""

    def __init__(self, fds: Sequence[int]) -> None:
        self.fds = tuple(fds)

    def announce(self, queue_id: str, envelope: bytes | None = None) -> None:
        self.announce_many([(queue_id, envelope)])

    def announce_many(self, items: Sequence[tuple[str, bytes | None]]) -> None:
        """Announce a group: its lines go out in as few writes as PIPE_BUF allows (each write a
        system call in the committing thread, and a wake-up of the runner)."""
        fds = self.fds
        chunks: list[list[bytes]] = [[] for _ in fds]
        sizes = [0] * len(fds)
        for queue_id, envelope in items:
            line = queue_id.encode("ascii")
            if envelope is not None and len(line) + len(envelope) + 2 <= select.PIPE_BUF:
                line += b" " + envelope
            line += b"\n"
            k = 0 if len(fds) == 1 else queue_id_share(queue_id, len(fds))
            if sizes[k] + len(line) > select.PIPE_BUF:
                self._write(fds[k], chunks[k])
                chunks[k], sizes[k] = [], 0
            chunks[k].append(line)
            sizes[k] += len(line)
        for fd, chunk in zip(fds, chunks, strict=True):
            if chunk:
                self._write(fd, chunk)

    @staticmethod
    def _write(fd: int, lines: list[bytes]) -> None:
        # At most PIPE_BUF octets: written whole or not at all, never mixed with another's.
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            os.write(fd, b"".join(lines))

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)


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

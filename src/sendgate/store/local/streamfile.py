"""The spool's streamed file: one large message whose body was written as it arrived.

The body goes to disk before the envelope and the (fixed-up, signed) header section exist, so
they follow it. Layout: ``SGSTREAM1`` LF, the body, then the envelope as one JSON line, a LF
and the header section (together: the *tail*), a footer line ``SGTAIL <body length> <tail
length>`` (16 hex digits each), and the trailer line of `batchfile` (``SGEND <crc32> <boot
id>``, the CRC-32 of everything before it). The record a reader gets (`read_record`) is what a
single-message file holds: envelope line, LF, header section, body.

The file is one of `store.local.fresh`'s, so its name is durable before the first byte is
written, and one fdatasync at the end makes the whole message durable; its link into queue/ is
synced in the background, and `check` lets `Spool.sweep` restore a link a power cut lost.

Security: read back after crashes, so the footer is parsed strictly (exact size, hex digits,
lengths that add up to the file's); anything else is reported as corrupt.
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Callable
from contextlib import suppress

from sendgate.errors import SpoolError
from sendgate.fsutil import write_all
from sendgate.store.envelope import Envelope
from sendgate.store.local import batchfile
from sendgate.store.local.batchfile import TRAILER
from sendgate.store.local.fresh import name_token

MAGIC = b"SGSTREAM1\n"
FOOTER = b"SGTAIL "
FOOTER_SIZE = len(FOOTER) + 16 + 1 + 16 + 1
_FOOTER_RE = re.compile(rb"SGTAIL ([0-9a-f]{16}) ([0-9a-f]{16})\n")
_END_MAX = FOOTER_SIZE + len(TRAILER) + 8 + 1 + 36 + 1 + 16 + 1  # footer and trailer at most


def is_streamed(head: bytes) -> bool:
    """Tell whether a queue file starting with `head` is a streamed file."""
    return head.startswith(MAGIC)


class StreamedBody:
    """A body being written into a fresh spool file (the `BodyFile` of `store.queue`).

    Not thread-safe: one writer, then `finish` (from any one thread) or `discard`.
    """

    def __init__(self, path: str, *, on_discard: Callable[[str], None]) -> None:
        """Open the (empty) fresh file at `path` and write the magic line; OSError as they do."""
        self.path = path
        self.size = 0  # body octets written
        self._on_discard = on_discard
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        self._crc = 0
        try:
            self._write(MAGIC)
        except BaseException:
            self.discard()
            raise

    def write(self, data: bytes) -> None:
        """Append body octets; OSError as the write fails (the body is then unusable)."""
        self._write(data)
        self.size += len(data)

    def _write(self, data: bytes) -> None:
        if self._fd is None:
            raise OSError(9, "body file closed")  # EBADF: written after finish or discard
        write_all(self._fd, data)
        self._crc = zlib.crc32(data, self._crc)

    def finish(self, envelope: Envelope, head: bytes) -> None:
        """Write the tail, footer and trailer, fdatasync and close; OSError as they fail."""
        line = envelope.to_json()
        tail_size = len(line) + 1 + len(head)
        footer = b"%s%016x %016x\n" % (FOOTER, self.size, tail_size)
        parts = [line, b"\n", head, footer]
        crc = batchfile.crc_of(parts, self._crc)
        parts.append(batchfile.trailer_line(crc, name_token(self.path)))
        fd = self._fd
        if fd is None:
            raise OSError(9, "body file closed")
        write_all(fd, parts)
        os.fdatasync(fd)
        self._fd = None
        os.close(fd)

    def committed(self) -> None:
        """The file is queued now: `discard` must leave it alone."""
        self.path = ""

    def discard(self) -> None:
        """Close and remove the file (nothing of it was acknowledged); never raises."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with suppress(OSError):
                os.close(fd)
        if self.path:
            path, self.path = self.path, ""
            self._on_discard(path)


def _layout(read: Callable[[int, int], bytes], size: int) -> tuple[int, int, int]:
    """(body length, tail length, footer offset) of a streamed file; SpoolError if malformed."""
    start = max(len(MAGIC), size - _END_MAX)
    end = read(start, size - start)
    at = end.rfind(FOOTER)
    footer = _FOOTER_RE.match(end, at) if at >= 0 else None
    if footer is None or batchfile.TRAILER_RE.fullmatch(end, footer.end()) is None:
        raise SpoolError("bad streamed file footer")
    body, tail = int(footer[1], 16), int(footer[2], 16)
    offset = start + at
    if len(MAGIC) + body + tail != offset:
        raise SpoolError("streamed file lengths do not add up")
    return body, tail, offset


def read_record(fd: int, size: int, *, envelope_only: bool = False) -> bytes:
    """The record (envelope line, LF, message) of the streamed file open at `fd`.

    With `envelope_only` it stops after the header section. OSError as the reads fail,
    SpoolError when the file is malformed or cut short.
    """
    body, tail, _ = _layout(lambda offset, length: os.pread(fd, length, offset), size)
    record = os.pread(fd, tail, len(MAGIC) + body)
    if envelope_only:
        return record
    data = os.pread(fd, body, len(MAGIC))
    if len(record) != tail or len(data) != body:
        raise SpoolError("streamed file cut short")
    return record + data


def check_file(fd: int, size: int, token: str | None = None) -> tuple[list[str], str] | None:
    """The queue id and the boot id of a whole streamed file, or None for anything else.

    Whole means: the footer's lengths add up, the envelope line parses, and the trailer's
    CRC-32 matches everything before it (a write cut short by a crash fails this).
    """

    def read(offset: int, length: int) -> bytes:
        return os.pread(fd, length, offset)

    try:
        body, tail, footer = _layout(read, size)
    except SpoolError:
        return None
    boot = batchfile.trailer_boot(read, footer + FOOTER_SIZE, size, token)
    if boot is None:
        return None
    line = read(len(MAGIC) + body, tail).partition(b"\n")[0]
    try:
        queue_id = Envelope.from_json(line).queue_id
    except SpoolError:
        return None
    return [queue_id], boot

"""The spool's batch file: several queued messages in one file, each name in queue/ a hard link.

A group commit writes the messages that arrived together into one file, syncs it once, and
links it into ``queue/`` once per message. Creating and syncing one file per message costs far
more on ext4 than one per batch (an inode allocation and a journal commit each); the links keep
the spool's rule that a message is queued if and only if ``queue/<id>`` exists, and the file
system frees the batch when the last of its messages is unlinked.

Layout: a first line ``SGBATCH1 <n>`` (n: 4 hex digits), then n index lines ``<id> <offset>
<length>`` (16 hex digits each) of exactly `ENTRY_SIZE` bytes, then the records. A record is
what a single-message queue file holds: the envelope as one JSON line, a LF, the message bytes.

A batch written into a fresh file (`store.local.fresh`) ends with a trailer line ``SGEND
<crc32> <boot id> <token>``: the kernel's boot id when it was written, the 16 hex digits that
end the fresh file's name, and the CRC-32 of everything before the trailer followed by the id,
a space and the token. Readers of records never look at it; `check` does, when `Spool.sweep`
finds a fresh file a crash left behind: only a whole batch is restored, only under the name it
was written under (a recycled file emptied just before a power cut may still hold its last
batch, under a new name), and only after a reboot (in the same boot every link made before the
crash is still there, and a missing one was delivered). Trailers without a token (written
before recycling) are accepted under any name.

Security: the file is ours, but it is read back after crashes, so the header is parsed strictly
(exact sizes, hex digits, records inside the file); anything else is reported as corrupt.
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from sendgate.errors import SpoolError
from sendgate.store.envelope import Envelope

MAGIC = b"SGBATCH1 "
FIRST_LINE_SIZE = len(MAGIC) + 5  # "SGBATCH1 " + 4 hex digits + LF
ENTRY_SIZE = 18 + 1 + 16 + 1 + 16 + 1  # id, offset, length, separators
HEADER_READ = 64 * 1024  # one read covers the header of any batch the spool writes
MAX_MESSAGES = (HEADER_READ - FIRST_LINE_SIZE) // ENTRY_SIZE  # 1236: the header fits that read
_ENTRY_RE = re.compile(rb"([0-7][0-9A-HJKMNP-TV-Z]{17}) ([0-9a-f]{16}) ([0-9a-f]{16})\n")
TRAILER = b"SGEND "
TRAILER_RE = re.compile(rb"SGEND ([0-9a-f]{8}) ([0-9a-f-]{36}|-)(?: ([0-9a-f]{16}))?\n")
_BOOT_ID = "/proc/sys/kernel/random/boot_id"
_boot: str | None = None  # this boot's id, once read


def is_batch(head: bytes) -> bool:
    """Tell whether a queue file starting with `head` is a batch (else it holds one record)."""
    return head.startswith(MAGIC)


def boot_id() -> str:
    """This boot's id (Linux), or "-" where the kernel does not tell (then every boot differs).

    A failed read is not remembered: a passing error (no file descriptor left) must not turn
    every later batch of this process into one that is restored after any crash.
    """
    global _boot
    if _boot is None:
        try:
            with open(_BOOT_ID, "rb") as file:
                value = file.read().strip().decode("ascii")
        except (OSError, UnicodeDecodeError):
            return "-"
        if not re.fullmatch(r"[0-9a-f-]{36}", value):
            return "-"
        _boot = value
    return _boot


def crc_of(parts: Sequence[bytes], crc: int = 0) -> int:
    """The CRC-32 of `parts` one after another, continuing from `crc`."""
    for part in parts:
        crc = zlib.crc32(part, crc)
    return crc


def trailer_line(crc: int, token: str | None) -> bytes:
    """The ``SGEND`` line ending a file whose content before it has CRC-32 `crc`, written
    under the fresh name ending in `token` (None: a trailer naming no file)."""
    tail = boot_id().encode("ascii")
    if token is not None:
        tail += b" " + token.encode("ascii")
    return b"%s%08x %s\n" % (TRAILER, zlib.crc32(tail, crc), tail)


def encode(items: Sequence[tuple[Envelope, bytes]], *, trailer: bool = False) -> list[bytes]:
    """The parts of a batch file holding `items` (written with one writev, never joined).

    With `trailer` the parts end with an ``SGEND`` line naming no file (the spool appends one
    naming the fresh file once it has taken it).
    """
    if not 0 < len(items) <= MAX_MESSAGES:
        raise ValueError(f"a batch holds 1 to {MAX_MESSAGES} messages, not {len(items)}")
    records = [(envelope.queue_id, envelope.to_json()) for envelope, _ in items]
    offset = FIRST_LINE_SIZE + ENTRY_SIZE * len(items)
    header = [MAGIC + b"%04x\n" % len(items)]
    body: list[bytes] = []
    for (queue_id, line), (_, message) in zip(records, items, strict=True):
        length = len(line) + 1 + len(message)
        header.append(b"%s %016x %016x\n" % (queue_id.encode("ascii"), offset, length))
        body += (line, b"\n", message)
        offset += length
    parts = header + body
    if trailer:
        parts.append(trailer_line(crc_of(parts), None))
    return parts


def check(data: bytes, token: str | None = None) -> tuple[list[str], str] | None:
    """The queue ids and the boot id of a whole batch with a trailer, or None for anything else.

    Whole means: a well-formed header, records one after another to the trailer, nothing after
    the trailer, and the trailer's CRC-32 matching. A write cut short by a crash fails this.
    With `token` (of the file's name), a trailer naming another token fails it too.
    """
    return _check(lambda offset, length: data[offset : offset + length], len(data), token)


def check_file(path: str | Path, token: str | None = None) -> tuple[list[str], str] | None:
    """`check` for the file at `path`, read in chunks (a batch can hold gigabytes)."""
    with open(path, "rb", buffering=0) as file:
        fd = file.fileno()

        def read(offset: int, length: int) -> bytes:
            return os.pread(fd, length, offset)

        return _check(read, os.fstat(fd).st_size, token)


_CHUNK = 1 << 20
_TRAILER_MAX = len(TRAILER) + 8 + 1 + 36 + 1 + 16 + 1


def _check(
    read: Callable[[int, int], bytes], size: int, token: str | None
) -> tuple[list[str], str] | None:
    head = read(0, min(size, HEADER_READ))
    ids: list[str] = []
    try:
        end = _index_end(head)
        for queue_id, offset, length in _entries(head, end):
            if offset != end:
                return None
            ids.append(queue_id.decode("ascii"))
            end += length
    except SpoolError:
        return None
    boot = trailer_boot(read, end, size, token)
    return None if boot is None else (ids, boot)


def trailer_boot(
    read: Callable[[int, int], bytes], end: int, size: int, token: str | None = None
) -> str | None:
    """The boot id of the trailer from `end` to `size`, if it is one, its CRC-32 matches the
    `end` octets before it (read in chunks) and it names no token other than `token` (when
    given); else None."""
    if not 0 < size - end <= _TRAILER_MAX:
        return None
    line = TRAILER_RE.fullmatch(read(end, size - end))
    if line is None:
        return None
    if token is not None and line[3] is not None and line[3].decode("ascii") != token:
        return None
    crc = 0
    for offset in range(0, end, _CHUNK):
        crc = zlib.crc32(read(offset, min(_CHUNK, end - offset)), crc)
    tail = line[2] if line[3] is None else line[2] + b" " + line[3]
    if int(line[1], 16) != zlib.crc32(tail, crc):
        return None
    return line[2].decode("ascii")


def _index_end(head: bytes) -> int:
    """Where a batch's index ends (its records start); SpoolError unless all of it is in `head`."""
    first = head[:FIRST_LINE_SIZE]
    count_hex = first[len(MAGIC) : -1]
    if not (
        first.startswith(MAGIC)
        and first.endswith(b"\n")
        and re.fullmatch(rb"[0-9a-f]{4}", count_hex)
    ):
        raise SpoolError("bad batch header")
    end = FIRST_LINE_SIZE + int(count_hex, 16) * ENTRY_SIZE
    if end == FIRST_LINE_SIZE or end > len(head):
        raise SpoolError("bad batch header")
    return end


def _entries(head: bytes, end: int) -> Iterator[tuple[bytes, int, int]]:
    """The index entries before `end`, one at a time: (queue id, offset, length).

    SpoolError at the first malformed one (the ones before it are yielded already).
    """
    for start in range(FIRST_LINE_SIZE, end, ENTRY_SIZE):
        match = _ENTRY_RE.fullmatch(head, start, start + ENTRY_SIZE)
        if match is None:
            raise SpoolError("bad batch index entry")
        yield match[1], int(match[2], 16), int(match[3], 16)


def locate(head: bytes, queue_id: str, size: int) -> tuple[int, int]:
    """Offset and length of `queue_id`'s record in a batch file of `size` bytes.

    `head` is the file's first `HEADER_READ` bytes (or all of it). SpoolError when the header
    is malformed, names a record outside the file, or does not list `queue_id`.
    """
    end = _index_end(head)
    wanted = queue_id.encode("ascii")
    for listed, offset, length in _entries(head, end):
        if listed != wanted:
            continue
        if offset < end or offset + length > size:
            raise SpoolError("batch index entry outside the file")
        return offset, length
    raise SpoolError(f"batch does not hold {queue_id}")


def read_record(path: str | Path, queue_id: str, *, envelope_only: bool = False) -> bytes:
    """The record of `queue_id` in queue file `path`, a single-message file or a batch.

    With `envelope_only` the result may stop after the envelope line (enough to read it).
    Raises OSError as the reads do (FileNotFoundError: not queued), SpoolError when the file
    is a batch that does not hold the record whole.
    """
    with open(path, "rb", buffering=0) as file:
        return read_record_from(file, file.read(HEADER_READ), queue_id, envelope_only=envelope_only)


def read_record_from(
    file: BinaryIO, head: bytes, queue_id: str, *, envelope_only: bool = False
) -> bytes:
    """`read_record` for a file open at `file`, whose first `HEADER_READ` bytes are `head`."""
    if not is_batch(head):
        if envelope_only and b"\n" in head:
            return head
        return head + file.read()
    fd = file.fileno()
    offset, length = locate(head, queue_id, os.fstat(fd).st_size)
    if offset + length <= len(head):
        return head[offset : offset + length]
    if envelope_only:
        chunk = os.pread(fd, min(length, HEADER_READ), offset)
        if b"\n" in chunk:
            return chunk
    record = os.pread(fd, length, offset)
    if len(record) != length:
        raise SpoolError("batch record cut short")
    return record

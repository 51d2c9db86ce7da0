"""Message content as it arrives: held in memory while small, streamed to a sink once large.

A message of up to `SPILL_AT` octets is kept in memory and checked once at its end, as before.
Past that, its header section stays in memory (the MSA rules read and extend it) and the body
goes to a `BodySink` (the spool) in blocks of whole lines, each block checked as it passes:
dot-unstuffing (DATA), bare CR or LF, lines over 998 octets, the size limit. So a session holds
at most about `SPILL_AT` octets of a message, however large it is (the header section, up to
`HEAD_MAX`, and at most one block of unchecked lines).

The Session stays free of I/O: the shell hands it a factory that opens a sink. A sink's write
may raise OSError (a full disk): the message is then refused at its end, with 452 4.3.1 when
storage is full and 451 4.3.0 otherwise, and the sink is discarded.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

SPILL_AT = 256 * 1024  # octets of a message held in memory before the body goes to a sink
BLOCK = 64 * 1024  # octets of lines gathered before they are checked and written
# A header section longer than this is refused once its message goes past SPILL_AT (Postfix
# keeps 100 KiB of header by default and moves the rest into the body; an MSA may refuse).
HEAD_MAX = 1024 * 1024
# The most one session holds of a message: its header section and a block of lines, or a
# whole message just under SPILL_AT and the read that takes it over.
SESSION_HOLD_MAX = HEAD_MAX + 2 * SPILL_AT
# A partial line longer than this, still without its CRLF, is over 998 octets once unstuffed
# (one octet of dot-stuffing, one CR waiting for its LF): refused without holding more of it.
_PARTIAL_MAX = 998 + 2 + 1
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class ContentProblem(Enum):
    """Why a complete message is refused (in memory: checked once, after its end)."""

    TOO_BIG = "too_big"
    BARE_NEWLINE = "bare_newline"
    LONG_LINE = "long_line"
    NO_FINAL_CRLF = "no_final_crlf"
    NO_MEMORY = "no_memory"  # dropped by the shell: the server's memory budget was spent
    HEADER_TOO_BIG = "header_too_big"  # a spilled message's header section over HEAD_MAX
    NO_SPACE = "no_space"  # the sink's storage is full
    WRITE_FAILED = "write_failed"  # the sink could not be opened or written


class BodySink(Protocol):
    """Where a large message's body goes (the spool): written in order, then owned by the
    handler of the message (committed, or discarded), or discarded by the Session."""

    def write(self, data: bytes) -> None:
        """Append `data`; OSError as the storage fails (nothing is retried)."""
        ...

    def discard(self) -> None:
        """Let go of what was written; idempotent, never raises."""
        ...


SinkFactory = Callable[[], BodySink]


@dataclass(frozen=True, slots=True)
class Content:
    """A complete message: the bytes (None when refused) and why it was refused.

    For a spilled message `data` is the header section with the empty line that ends it, and
    `body` holds the rest (`size` counts both).
    """

    data: bytes | None
    size: int
    problem: ContentProblem | None
    body: BodySink | None = None


class Spilled:
    """The checked part of a large message: its header section in memory, its body in a sink.

    Fed blocks of whole lines (each ending with CRLF, except a BDAT message's last), already
    dot-unstuffed. The first problem found stops the writing; `problem` tells which.
    """

    def __init__(self, open_sink: SinkFactory, max_size: int) -> None:
        self._open_sink = open_sink
        self._max_size = max_size
        self.head = b""  # the header section so far; complete once `sink` is open
        self.sink: BodySink | None = None
        self.size = 0  # unstuffed octets checked so far
        self.problem: ContentProblem | None = None

    @property
    def held(self) -> int:
        return len(self.head)

    def take(self, block: bytes, *, last: bool = False) -> None:
        """Check `block` and pass it on (to the head, then the sink)."""
        self.size += len(block)  # callers stop at the first problem: none is set here
        problem = lines_problem(block, final=last)
        if problem is None and self.size > self._max_size:
            problem = ContentProblem.TOO_BIG
        if problem is not None:
            self.fail(problem)
            return
        sink = self.sink
        if sink is None:
            sink, block = self._fill_head(block)
            if sink is None or not block:
                return
        try:
            sink.write(block)
        except OSError as exc:
            self.fail(_storage_problem(exc))

    def _fill_head(self, block: bytes) -> tuple[BodySink | None, bytes]:
        """Add `block` to the header section; once it ends, open the sink: (sink, body start)."""
        head = self.head + block
        # Where the header section ends (the rule of `sendgate.headers.header_end`, which smtp/
        # may not import): at a leading empty line, or at the first empty line.
        if head.startswith(b"\r\n"):
            end = 0
        else:
            found = head.find(b"\r\n\r\n")
            end = found + 2 if found >= 0 else -1
        if (end + 2 if end >= 0 else len(head)) > HEAD_MAX:
            self.fail(ContentProblem.HEADER_TOO_BIG)
            return None, b""
        if end < 0:  # no empty line yet
            self.head = head
            return None, b""
        self.head = head[: end + 2]
        try:
            self.sink = self._open_sink()
        except OSError as exc:
            self.fail(_storage_problem(exc))
            return None, b""
        return self.sink, head[end + 2 :]

    def fail(self, problem: ContentProblem | None) -> None:
        """Stop here: refuse the message (for `problem`), let go of what was written."""
        if problem is not None and self.problem is None:
            self.problem = problem
        self.head = b""
        self.discard()

    def discard(self) -> None:
        if self.sink is not None:
            self.sink.discard()
            self.sink = None

    def finish(self) -> Content:
        """The result once the last block was taken."""
        if self.problem is None and self.sink is None:
            # Everything fitted in the head: only a message that has no empty line. Keep it
            # whole (the caller checks it as any small message).
            return Content(self.head, self.size, None)
        if self.problem is not None:
            self.discard()
            return Content(None, self.size, self.problem)
        body, self.sink = self.sink, None
        return Content(self.head, self.size, None, body)


def _storage_problem(exc: OSError) -> ContentProblem:
    return ContentProblem.NO_SPACE if exc.errno in _FULL_ERRNOS else ContentProblem.WRITE_FAILED


# The long-line check splits the content in windows of about this size, so that it never
# holds a list of every line of a large message.
_LINE_WINDOW = 1 << 20


def has_long_line(data: bytes) -> bool:
    """True if a line (CRLF-separated) is over 998 octets.

    C-level splits beat a regex here (`[^\r\n]{999}` backtracks at every offset); each window
    ends at a CRLF, so no line is cut, and a window never grows by more than one line.
    """
    start, size = 0, len(data)
    while start < size:
        end = start + _LINE_WINDOW
        if end >= size:
            end = size
        else:
            crlf = data.find(b"\r\n", end - 1)  # one that straddles the edge ends the window
            stop = size if crlf < 0 else crlf
            if stop - end > 998:
                return True
            end = stop
        if max(map(len, data[start:end].split(b"\r\n"))) > 998:
            return True
        start = end + 2
    return False


def lines_problem(data: bytes, *, final: bool) -> ContentProblem | None:
    """A bare CR or LF in `data`, no CRLF at its end (when `final`) or a line over 998
    octets, in that order of precedence; None when the lines are clean. (Only BDAT content
    can end mid-line; RFC 5322 lines end with CRLF, and relaying would add one.)

    The common case, content ending in CRLF and up to `_LINE_WINDOW` octets, takes one
    C-level split: each line break is one octet (a bare CR or LF) or two (CRLF), so they are
    all CRLF exactly when the content is the lines' lengths plus two octets per line.
    """
    if data.endswith(b"\r\n") and len(data) <= _LINE_WINDOW:
        lengths = list(map(len, data.splitlines()))  # at CRLF, lone CR and lone LF
        if len(data) != sum(lengths) + 2 * len(lengths):
            return ContentProblem.BARE_NEWLINE
        if len(data) > 998 and max(lengths) > 998:
            return ContentProblem.LONG_LINE
        return None
    crlf = data.count(b"\r\n")
    if data.count(b"\n") != crlf or data.count(b"\r") != crlf:
        return ContentProblem.BARE_NEWLINE
    if final and data and not data.endswith(b"\r\n"):
        return ContentProblem.NO_FINAL_CRLF
    if len(data) > 998 and has_long_line(data):
        return ContentProblem.LONG_LINE
    return None


def dot_unstuff(raw: bytes) -> bytes:
    """Remove the leading "." of every line that has one (RFC 5321 4.5.2)."""
    # The first line has no CRLF before it; the others' dots go in one replace (no prefixed
    # copy of the whole message).
    first = raw.startswith(b".")
    if b"\r\n." in raw:
        raw = raw.replace(b"\r\n.", b"\r\n")
    return raw[1:] if first else raw


class ContentBuffer:
    """The content of one message as it arrives, in any pieces.

    Held in memory (raw, as received) until it passes `spill_at` with a sink factory given;
    from then on whole lines go through `Spilled`. `stuffed`: DATA content, dot-unstuffed
    here (BDAT content is not stuffed). The owner checks a held message at its end.
    """

    def __init__(
        self,
        max_size: int,
        *,
        stuffed: bool,
        open_sink: SinkFactory | None,
        spill_at: int = SPILL_AT,
    ) -> None:
        self._stuffed = stuffed
        self._open_sink = open_sink
        self._spill_at = spill_at
        self._max_size = max_size
        self._chunks: list[bytes] = []
        self._pending = bytearray()  # raw octets after the last whole line given to `_spilled`
        self._spilled: Spilled | None = None
        self.held = 0  # octets of this message in memory

    @property
    def spilled(self) -> bool:
        return self._spilled is not None

    def add(self, data: bytes) -> None:
        spilled = self._spilled
        if spilled is None:
            self._chunks.append(data)
            self.held += len(data)
            if self.held > self._spill_at and self._open_sink is not None:
                self._spilled = spilled = Spilled(self._open_sink, self._max_size)
                self._pending = bytearray(b"".join(self._chunks))
                self._chunks = []
                self._pass_lines(spilled)
            return
        if spilled.problem is not None:  # counted, not kept
            spilled.size += len(data)
            return
        self._pending += data
        if len(self._pending) >= BLOCK:
            self._pass_lines(spilled)
        self.held = spilled.held + len(self._pending)

    def _pass_lines(self, spilled: Spilled) -> None:
        pending = self._pending
        crlf = pending.rfind(b"\r\n")
        cut = crlf + 2 if crlf >= 0 else 0
        if len(pending) - cut > _PARTIAL_MAX:
            self._pending = bytearray()
            spilled.size += len(pending)
            spilled.fail(ContentProblem.LONG_LINE)
        elif cut:
            block = bytes(pending[:cut])
            del pending[:cut]
            spilled.take(dot_unstuff(block) if self._stuffed else block)
        self.held = spilled.held + len(self._pending)

    def drop(self) -> None:
        """Let go of the content (no memory for it): what follows is counted, not kept."""
        self._chunks = []
        self._pending = bytearray()
        self.held = 0
        if self._spilled is not None:
            self._spilled.fail(ContentProblem.NO_MEMORY)

    def discard(self) -> None:
        """Let go of the content and of any sink (the transaction ended without it)."""
        self._chunks = []
        self._pending = bytearray()
        self.held = 0
        if self._spilled is not None:
            self._spilled.fail(None)

    def raw(self, trim: int = 0) -> bytes:
        """The held content as received, less its last `trim` octets (not spilled only)."""
        assert self._spilled is None
        raw = b"".join(self._chunks)
        self._chunks = []  # one copy of the content at a time, as far as possible
        self.held = 0
        return raw[: len(raw) - trim] if trim else raw

    def finish_spilled(self, trim: int = 0) -> Content:
        """The result of a spilled message, less the last `trim` raw octets (a terminator's)."""
        spilled = self._spilled
        assert spilled is not None
        pending = bytes(self._pending[: len(self._pending) - trim])
        self._pending = bytearray()
        self.held = 0
        if spilled.problem is None:
            spilled.take(dot_unstuff(pending) if self._stuffed else pending, last=True)
        else:
            spilled.size += len(pending)
        return spilled.finish()

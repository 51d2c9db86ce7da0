"""Message content decoding: the DATA terminator, dot-unstuffing, CRLF and line-length checks.

Security: the bytes are the client's message. DATA ends only at CRLF "." CRLF (RFC 5321 4.1.1.4);
a bare CR or LF anywhere makes the message refused (SMTP smuggling defence), lines over 998
octets are refused (RFC 5321 4.5.3.1.6), and at most `max_size` octets are ever held in memory:
past that the content is counted, not kept (and none at all once the shell has dropped it for
want of memory). All scans are C-level passes (bytes.find, count, split over bounded windows)
so cost stays linear in the message size and the copies made at the end are few and short-lived.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

_TERMINATOR = b"\r\n.\r\n"
# Raw DATA carries dot-stuffing, so it may run slightly over the limit that applies after
# unstuffing; keep this much slack before giving up on holding the bytes.
_STUFFING_SLACK = 64 * 1024
# The long-line check splits the content in windows of about this size, so that it never
# holds a list of every line of a large message.
_LINE_WINDOW = 1 << 20


class ContentProblem(Enum):
    """Why a complete message is refused (checked once, after its end)."""

    TOO_BIG = "too_big"
    BARE_NEWLINE = "bare_newline"
    LONG_LINE = "long_line"
    NO_FINAL_CRLF = "no_final_crlf"
    NO_MEMORY = "no_memory"  # dropped by the shell: the server's memory budget was spent


@dataclass(frozen=True, slots=True)
class Content:
    """A complete message body: the bytes (None when refused) and why it was refused."""

    data: bytes | None
    size: int
    problem: ContentProblem | None


def check_content(data: bytes, size: int, max_size: int) -> Content:
    """Validate a message as it will be stored: size, CRLF-only line endings, line length."""
    if size > max_size:
        return Content(None, size, ContentProblem.TOO_BIG)
    crlf = data.count(b"\r\n")
    if data.count(b"\n") != crlf or data.count(b"\r") != crlf:
        return Content(None, size, ContentProblem.BARE_NEWLINE)
    if data and not data.endswith(b"\r\n"):
        # Only BDAT can end mid-line; RFC 5322 lines end with CRLF, and relaying would add one.
        return Content(None, size, ContentProblem.NO_FINAL_CRLF)
    if size > 998 and _has_long_line(data):
        return Content(None, size, ContentProblem.LONG_LINE)
    return Content(data, size, None)


def _has_long_line(data: bytes) -> bool:
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


def dot_unstuff(raw: bytes) -> bytes:
    """Remove the leading "." of every line that has one (RFC 5321 4.5.2)."""
    # The first line has no CRLF before it; the others' dots go in one replace (no prefixed
    # copy of the whole message).
    first = raw.startswith(b".")
    if b"\r\n." in raw:
        raw = raw.replace(b"\r\n.", b"\r\n")
    return raw[1:] if first else raw


def dot_stuff(content: bytes) -> bytes:
    """Inverse of `dot_unstuff`: double the leading "." of every line (for clients and tests)."""
    return (b"\r\n" + content).replace(b"\r\n.", b"\r\n..")[2:]


class DataReader:
    """Collects DATA content up to the CRLF.CRLF terminator, across any chunking."""

    def __init__(self, max_size: int) -> None:
        self._max_size = max_size
        self._limit = max_size + _STUFFING_SLACK
        self._chunks: list[bytes] = []
        self._total = 0
        self.held = 0  # octets kept in memory
        self._dropped = False
        # The content is searched as if preceded by CRLF, so ".\r\n" at the very start ends it.
        self._tail = b"\r\n"

    def drop(self) -> None:
        """Let go of the content (the shell's memory budget is spent): the message is refused."""
        self._dropped = True
        self._chunks = []
        self.held = 0

    def feed(self, data: bytes) -> tuple[int, Content | None]:
        """Consume bytes; return (octets consumed, Content once the terminator was seen)."""
        window = self._tail + data
        end = window.find(_TERMINATOR)
        if end < 0:
            self._keep(data)
            self._tail = window[-4:]
            return len(data), None
        # window[end:end+2] is the CRLF that ends the last content line; it belongs to the content.
        cut = end + 2 - len(self._tail)
        consumed = end + len(_TERMINATOR) - len(self._tail)
        if cut >= 0:
            self._keep(data[:cut])
            trim = 0
        else:
            # The content ended inside the previous chunk: bytes kept after its end ("." or ".\r")
            # are part of the terminator.
            trim = -cut
        # At most len(".\r") octets past the limit may be trimmed: `_keep` holds them too.
        size = self._total - trim
        self.held = 0  # what is kept now goes to the Content (or nowhere)
        if size > self._limit:
            return consumed, Content(None, size, ContentProblem.TOO_BIG)
        if self._dropped:
            return consumed, Content(None, size, ContentProblem.NO_MEMORY)
        raw = b"".join(self._chunks)
        self._chunks = []  # one copy of the content at a time, as far as possible
        if trim:
            raw = raw[: len(raw) - trim]
        content = dot_unstuff(raw)
        del raw
        return consumed, check_content(content, len(content), self._max_size)

    def _keep(self, data: bytes) -> None:
        self._total += len(data)
        if self._total <= self._limit + 2 and not self._dropped:
            self._chunks.append(data)
            self.held += len(data)

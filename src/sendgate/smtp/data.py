"""Message content decoding: the DATA terminator, dot-unstuffing, CRLF and line-length checks.

Security: the bytes are the client's message. DATA ends only at CRLF "." CRLF (RFC 5321 4.1.1.4);
a bare CR or LF anywhere makes the message refused (SMTP smuggling defence), lines over 998
octets are refused (RFC 5321 4.5.3.1.6), and at most `max_size` octets are ever held in memory:
past that the content is counted, not kept (and none at all once the shell has dropped it for
want of memory). With a sink factory, a message past `spill.SPILL_AT` goes to the sink as it
arrives (`sendgate.smtp.spill`), checked block by block. All scans are C-level passes
(bytes.find, count, split over bounded windows) so cost stays linear in the message size and
the copies made at the end are few and short-lived.
"""

from __future__ import annotations

from sendgate.smtp.spill import (
    SPILL_AT,
    Content,
    ContentBuffer,
    ContentProblem,
    SinkFactory,
    dot_unstuff,
    lines_problem,
)

__all__ = [
    "Content",
    "ContentProblem",
    "DataReader",
    "check_content",
    "dot_stuff",
    "dot_unstuff",
]

_TERMINATOR = b"\r\n.\r\n"
# Raw DATA carries dot-stuffing, so it may run slightly over the limit that applies after
# unstuffing; keep this much slack before giving up on holding the bytes.
_STUFFING_SLACK = 64 * 1024


def check_content(data: bytes, size: int, max_size: int) -> Content:
    """Validate a message as it will be stored: size, CRLF-only line endings, line length."""
    if size > max_size:
        return Content(None, size, ContentProblem.TOO_BIG)
    problem = lines_problem(data, final=True)
    if problem is not None:
        return Content(None, size, problem)
    return Content(data, size, None)


def dot_stuff(content: bytes) -> bytes:
    """Inverse of `dot_unstuff`: double the leading "." of every line (for clients and tests)."""
    return (b"\r\n" + content).replace(b"\r\n.", b"\r\n..")[2:]


class DataReader:
    """Collects DATA content up to the CRLF.CRLF terminator, across any chunking."""

    def __init__(
        self, max_size: int, open_sink: SinkFactory | None = None, *, spill_at: int = SPILL_AT
    ) -> None:
        self._max_size = max_size
        self._limit = max_size + _STUFFING_SLACK
        self._buffer = ContentBuffer(max_size, stuffed=True, open_sink=open_sink, spill_at=spill_at)
        self._total = 0
        self._dropped = False
        # The content is searched as if preceded by CRLF, so ".\r\n" at the very start ends it.
        self._tail = b"\r\n"

    @property
    def held(self) -> int:
        """Octets of the content kept in memory."""
        return self._buffer.held

    def drop(self) -> None:
        """Let go of the content (the shell's memory budget is spent): the message is refused."""
        self._dropped = True
        self._buffer.drop()

    def discard(self) -> None:
        """Let go of the content and of any sink it went to (the transaction ended)."""
        self._buffer.discard()

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
        buffer = self._buffer
        if size > self._limit or self._dropped:
            buffer.discard()
            problem = ContentProblem.NO_MEMORY if self._dropped else ContentProblem.TOO_BIG
            return consumed, Content(None, size, problem)
        if buffer.spilled:
            return consumed, buffer.finish_spilled(trim)
        content = dot_unstuff(buffer.raw(trim))
        return consumed, check_content(content, len(content), self._max_size)

    def _keep(self, data: bytes) -> None:
        self._total += len(data)
        if not self._dropped and (self._total <= self._limit + 2 or self._buffer.spilled):
            self._buffer.add(data)

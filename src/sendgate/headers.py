"""Where a message's header section ends: the one rule message, delivery and the CLI share.

A message is CRLF lines; its header section runs up to the first empty line. A message that
starts with an empty line has no header section; one without an empty line is all header
(a BDAT message may even end without a final CRLF).

Security: the content is a client's message; this only searches it for CRLF CRLF, so any bytes
are safe to pass. It imports only the standard library (delivery/ may use it; see the import
rules).
"""

from __future__ import annotations


def header_end(content: bytes) -> int:
    """Offset just past the last header line's CRLF, where the empty line ending it starts.

    0 when there is no header section; len(content) when no empty line ends it.
    """
    if content.startswith(b"\r\n"):
        return 0
    end = content.find(b"\r\n\r\n")
    return len(content) if end < 0 else end + 2


def header_section(content: bytes) -> bytes:
    """The header lines of `content` with their CRLFs, without the empty line that ends them."""
    return content[: header_end(content)]

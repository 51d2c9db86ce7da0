"""The DKIM body hash (relaxed canonicalization, SHA-256) of a body that arrives in pieces.

A spilled message's body goes to the spool as it arrives and is never held whole, so its hash
is taken here block by block; the signer (`DkimSigner.sign_head`) then signs the header section
with it. The result equals dkimpy's `canonicalize_body` + SHA-256 of the whole body (RFC 6376
3.4.4: trailing white space of each line removed, runs of white space made one SP, empty lines
at the end ignored, an empty body hashed as empty).
"""

from __future__ import annotations

import hashlib
import re

_TRAILING_WSP = re.compile(rb"[\t ]+\r\n")
# Runs that change: a lone space stays as it is, so it is not even matched (several times
# faster on ordinary text than matching every space).
_WSP = re.compile(rb"\t[\t ]*| [\t ]+")
_RUN = 32 * 1024


class RelaxedBodyHash:
    """SHA-256 of the relaxed canonical form of a body fed as blocks of whole CRLF lines."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._empty_lines = 0  # empty lines seen after the last line that was not empty

    def update(self, block: bytes) -> None:
        """Add `block`: whole lines, each ending with CRLF (the spool's blocks always are)."""
        if not block:
            return
        canon = block
        if b" \r\n" in canon or b"\t\r\n" in canon:
            canon = _TRAILING_WSP.sub(b"\r\n", canon)
        if b"\t" in canon or b"  " in canon:
            canon = _WSP.sub(b" ", canon)
        # No bare CR or LF is ever accepted, so stripping CR and LF strips whole empty lines.
        text_end = len(canon.rstrip(b"\r\n"))
        if text_end == 0:
            self._empty_lines += len(canon) // 2
            return
        while self._empty_lines:  # in bounded pieces: a body may be megabytes of empty lines
            run = min(self._empty_lines, _RUN)
            self._hash.update(b"\r\n" * run)
            self._empty_lines -= run
        self._hash.update(memoryview(canon)[: text_end + 2])
        self._empty_lines = (len(canon) - text_end - 2) // 2

    def digest(self) -> bytes:
        return self._hash.digest()

"""xtext (RFC 3461 section 4): how DSN and AUTH= parameter values travel on a command line.

Printable ASCII other than "+" and "=" stands for itself; any other octet is "+" and two
upper-case hex digits. Decoding is strict: a lower-case or missing hex digit, a "+" at the end,
a space or a non-ASCII character is malformed, never guessed at.
"""

from __future__ import annotations

import re

XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})+")
_HEXCHAR = re.compile(r"\+([0-9A-F]{2})")


class XtextError(ValueError):
    """The text is not well-formed xtext (or decodes to something other than ASCII)."""


def decode(text: str) -> str:
    """The ASCII text `text` encodes; XtextError when it is not well-formed xtext of ASCII."""
    if not XTEXT.fullmatch(text):
        raise XtextError(f"not xtext: {text!r}")
    decoded = _HEXCHAR.sub(lambda found: chr(int(found.group(1), 16)), text)
    if not decoded.isascii():
        raise XtextError(f"xtext encodes a non-ASCII octet: {text!r}")
    return decoded


def encode(text: str) -> str:
    """`text` (ASCII) as xtext; ValueError for a non-ASCII character or an empty text."""
    if not text or not text.isascii():
        raise ValueError(f"only non-empty ASCII text has an xtext form, not {text!r}")
    return "".join(
        char if "!" <= char <= "~" and char not in "+=" else f"+{ord(char):02X}" for char in text
    )

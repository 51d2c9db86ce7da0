"""The values of the DSN extension (RFC 3461): NOTIFY, ORCPT and ENVID, checked and decoded.

A grammar module both sides share (like smtp.address): the Session parses the parameters with
it, the envelope stores them, and delivery passes them on and reports them. Pure; xtext
decoding is strict (see smtp.xtext).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sendgate.smtp import xtext

ENVID_MAX = 100  # RFC 3461 4.4, counted on the xtext as sent
ORCPT_MAX = 500  # RFC 3461 4.2
NOTIFY_WORDS = ("SUCCESS", "FAILURE", "DELAY")  # the order NOTIFY values are kept in
_ADDRESS_TYPE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")  # an atom (RFC 3461 4.2)
_PRINTABLE = re.compile(r"[\x20-\x7e]+")


@dataclass(frozen=True, slots=True)
class RcptParameters:
    """The RCPT TO parameters of RFC 3461; the defaults mean "not given"."""

    notify: tuple[str, ...] | None = None  # ("NEVER",), or NOTIFY_WORDS members in that order
    orcpt: str | None = None  # "addr-type;xtext" as received (its address is checked xtext)


def notify_words(value: str) -> tuple[str, ...] | None:
    """NOTIFY's words in canonical order, or None when malformed (NEVER stands alone)."""
    words = value.upper().split(",")
    if words == ["NEVER"]:
        return ("NEVER",)
    if len(set(words)) != len(words) or not set(words) <= set(NOTIFY_WORDS):
        return None
    return tuple(word for word in NOTIFY_WORDS if word in words)


def envelope_id(value: str) -> str | None:
    """The ENVID the xtext `value` encodes (printable ASCII), or None when malformed."""
    return _decoded(value, ENVID_MAX)


def is_envelope_id(text: str) -> bool:
    """Whether `text` may be a decoded ENVID: 1 to ENVID_MAX printable ASCII characters."""
    return len(text) <= ENVID_MAX and _PRINTABLE.fullmatch(text) is not None


def original_recipient(value: str) -> tuple[str, str] | None:
    """An ORCPT value "addr-type;xtext" as (addr-type, decoded address), or None."""
    kind, semicolon, address = value.partition(";")
    if not semicolon or not _ADDRESS_TYPE.fullmatch(kind):
        return None
    decoded = _decoded(address, ORCPT_MAX - len(kind) - 1)
    return None if decoded is None else (kind, decoded)


def _decoded(value: str, limit: int) -> str | None:
    if len(value) > limit:
        return None
    try:
        text = xtext.decode(value)
    except xtext.XtextError:
        return None
    return text if _PRINTABLE.fullmatch(text) else None

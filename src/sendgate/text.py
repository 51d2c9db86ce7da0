"""Escaping and time formatting: how text is made safe for each place sendgate writes it.

Each function is named for where its output goes, and that place decides the rule: a terminal
(`printable`), a log line (`log_value`, `log_timestamp`), the delivery state and logs
(`one_line`), a remote reply kept whole (`reply_text`), a header field (`header_host`), a
delivery status notification (`dsn_address`, `dsn_lines`, `dsn_ascii`, `mail_date`) or a
listing (`iso_utc`). Pick by the destination, not by where the text came from. Two rules live
elsewhere on purpose: smtp/ imports only the standard library and keeps its own reply checks,
and the configuration renderer keeps its TOML string quoting next to the TOML it writes.

Security: every input here may be hostile (client addresses, EHLO names, header bytes, remote
replies). Each function's output is one line (or, for `reply_text` and `dsn_lines`, lines split
only where the function says), holds no control character, no line or paragraph separator and
no bidi override unless escaped, and is bounded where a limit is given. This module only maps
strings; it has no state and imports only the standard library.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from email.utils import format_datetime

# Characters in a host name or address literal that may go into a header field as they are.
_HEADER_HOST_UNSAFE = re.compile(r"[^A-Za-z0-9.\-_:\[\]]")
_MAX_HOST = 255
# Log values json.dumps leaves raw although they break lines or drive terminals.
_LOG_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029]")
_LOG_BARE = re.compile(r"[A-Za-z0-9_.:@/+\-\[\]<>,]+")
# Control characters (C0, DEL, C1), line/paragraph separators, bidi overrides and isolates
# (they can make text display as something else), and lone surrogates (not encodable).
_DSN_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_ONE_LINE_LIMIT = 1000


def printable(text: str, *, keep_tabs: bool = True) -> str:
    """For a person's terminal: characters it would act on become Python-style escapes.

    Controls, line separators and bidi overrides show as ``\\x1b``, ``\\u202e`` and the like;
    everything printable stays, so non-ASCII addresses remain readable. Tabs are kept unless
    `keep_tabs` is false (folded header lines start with one).
    """
    if text.isprintable():
        return text
    return "".join(
        char
        if char.isprintable() or (keep_tabs and char == "\t")
        else char.encode("unicode_escape").decode("ascii")
        for char in text
    )


def iso_utc(timestamp: float) -> str:
    """For listings: a unix time as ISO 8601 UTC to the second, e.g. 2024-05-01T12:00:00Z."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def utc_minute(timestamp: float) -> str:
    """For people: a unix time to the minute in UTC, e.g. 2024-05-01 12:00 UTC."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(timestamp))


def log_timestamp(timestamp: float) -> str:
    """For log lines: ISO 8601 UTC to the millisecond, e.g. 2024-05-01T12:00:00.250Z."""
    millis = int(timestamp * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp)) + f".{millis:03d}Z"


def log_value(text: str) -> str:
    """For a key=value log line: bare when harmless, else a JSON string with everything escaped.

    A bare value holds only letters, digits and ``_.:@/+-[]<>,``, so it can neither end the
    field nor forge another; anything else is quoted so that one event stays one line.
    """
    if _LOG_BARE.fullmatch(text):
        return text
    # json.dumps escapes quotes, backslashes and C0 controls (CR/LF included); DEL, C1 controls
    # and the Unicode line separators it leaves raw would still break lines or drive terminals.
    quoted = json.dumps(text, ensure_ascii=False)
    return _LOG_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", quoted)


def one_line(text: str) -> str:
    """For the delivery state and logs: a remote reply as one printable line, bounded.

    Line breaks become " / " and other unprintable characters a space; at most 1000 characters.
    """
    if text.isprintable():  # the usual reply: nothing to replace (one call, not one per char)
        return text[:_ONE_LINE_LIMIT]
    cleaned = "".join(ch if ch.isprintable() else " " for ch in text.replace("\n", " / "))
    return cleaned[:_ONE_LINE_LIMIT]


def reply_text(text: str, limit: int) -> str:
    """For a remote reply kept with its lines: "\\n" stays, anything else unprintable is "?".

    Cut to `limit` characters, then "..." marks the cut.
    """
    kept = text[:limit]
    if kept.isprintable():  # the usual one-line reply: as it is
        return kept + "..." if len(text) > limit else kept
    cleaned = "".join(c if c == "\n" or c.isprintable() else "?" for c in kept)
    return cleaned + "..." if len(text) > limit else cleaned


def header_host(name: str, replacement: str) -> str:
    """For a host name written into a header field (Received, DSN): safe characters only.

    Every character but ASCII letters, digits and ``.-_:[]`` (enough for names and address
    literals) becomes `replacement`; the result is cut to 255 characters.
    """
    return _HEADER_HOST_UNSAFE.sub(replacement, name)[:_MAX_HOST]


def dsn_address(address: str, octets: int) -> str:
    """For an address in a DSN: unsafe characters (controls, bidi, surrogates) shown as "?".

    Cut to `octets` UTF-8 octets, never inside a character.
    """
    cleaned = _DSN_UNSAFE.sub("?", address)
    encoded = cleaned.encode("utf-8")
    if len(encoded) <= octets:
        return cleaned
    return encoded[:octets].decode("utf-8", "ignore")


def dsn_lines(text: str) -> list[str]:
    """For reply text in a DSN: clean non-empty lines, unsafe characters dropped.

    Lone surrogates become U+FFFD before the text is split at line boundaries; tabs become
    spaces, runs of white space one space.
    """
    lines = _SURROGATE.sub("\ufffd", text).splitlines()
    cleaned = (" ".join(_DSN_UNSAFE.sub("", line.replace("\t", " ")).split()) for line in lines)
    return [line for line in cleaned if line]


def dsn_ascii(text: str) -> str:
    """For message/delivery-status (ASCII only): non-ASCII as RFC 6533 ``\\x{HEX}``."""
    return "".join(c if c.isascii() else f"\\x{{{ord(c):X}}}" for c in text)


def mail_date(timestamp: float) -> str:
    """For a Date-like header field: a unix time as an RFC 5322 date in UTC."""
    return format_datetime(datetime.fromtimestamp(timestamp, UTC))

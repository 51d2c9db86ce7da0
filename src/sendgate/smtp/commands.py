"""Command-line grammar: verb and argument splitting, MAIL/RCPT/BDAT parameters, line limits.

Security: every line is client input. Lines are bytes up to CRLF; the verb must be ASCII letters,
the argument valid UTF-8 without control characters. Length limits follow RFC 5321 4.5.3.1.4
(512 octets), raised for MAIL/RCPT by the extensions offered (RFC 1870 SIZE +26, RFC 6152 BODY +14,
RFC 6531 SMTPUTF8 +10, RFC 4954 AUTH= +500, RFC 3461 RET and ENVID +100 (its count; ours allows
the longest legal pair, +130 with RFC 8689 REQUIRETLS); RFC 3461 NOTIFY and ORCPT on RCPT fit in
the same limit) and to 12288 octets for AUTH (RFC 4954 section 4).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sendgate.smtp import replies, xtext
from sendgate.smtp.dsn import RcptParameters, envelope_id, notify_words, original_recipient
from sendgate.smtp.replies import Reply

COMMAND_LINE_MAX = 512
MAIL_LINE_MAX = COMMAND_LINE_MAX + 26 + 14 + 10 + 500 + 130
AUTH_LINE_MAX = 12288
# Longest line buffered before it is known to be too long for any command.
LINE_BUFFER_MAX = AUTH_LINE_MAX

_VERB = re.compile(rb"[A-Za-z]{1,16}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ESMTP_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_ESMTP_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e]+")
_SIZE_VALUE = re.compile(r"[0-9]{1,20}")
_BDAT = re.compile(r"([0-9]{1,20})(?: +(LAST))? *", re.IGNORECASE | re.ASCII)


def line_limit(verb: str) -> int:
    """The longest command line (CRLF included) RFC 5321 and its extensions allow for `verb`."""
    if verb in ("MAIL", "RCPT"):
        return MAIL_LINE_MAX
    if verb == "AUTH":
        return AUTH_LINE_MAX
    return COMMAND_LINE_MAX


@dataclass(frozen=True, slots=True)
class Command:
    """A syntactically sound command line: upper-cased verb and its (decoded) argument."""

    verb: str
    argument: str


def parse_line(line: bytes) -> Command | Reply:
    """Split a command line (without CRLF) into verb and argument, or give the error reply."""
    verb, _, rest = line.partition(b" ")
    if not _VERB.fullmatch(verb):
        return replies.UNRECOGNIZED
    try:
        argument = rest.decode("utf-8")
    except UnicodeDecodeError:
        return replies.NON_ASCII_COMMAND
    if _CONTROL.search(argument):
        return replies.NON_ASCII_COMMAND
    return Command(verb.decode("ascii").upper(), argument.strip(" "))


@dataclass(frozen=True, slots=True)
class MailParameters:
    """The MAIL FROM parameters sendgate understands (RFC 1870, 6152, 6531, 4954, 3461, 8689)."""

    size: int | None = None
    body: str = "7BIT"
    smtputf8: bool = False
    ret: str | None = None  # RFC 3461 RET: "FULL" or "HDRS"
    envid: str | None = None  # RFC 3461 ENVID, xtext-decoded (printable ASCII)
    requiretls: bool = False  # RFC 8689


def _parameters(text: str) -> list[tuple[str, bool, str]] | Reply:
    """Split `KEY[=VALUE]` parameters into (upper-cased key, has "=", value); refuse malformed
    or repeated ones."""
    items: list[tuple[str, bool, str]] = []
    seen: set[str] = set()
    # Split on SP only: str.split() would also take Unicode spaces (U+00A0, U+3000) as one.
    for item in text.split(" "):
        if not item:
            continue
        key, eq, value = item.partition("=")
        if not _ESMTP_KEYWORD.fullmatch(key) or (eq and not _ESMTP_VALUE.fullmatch(value)):
            return replies.SYNTAX_ERROR
        # Upper-cased only once known to be ASCII: "\u017fIZE".upper() is "SIZE".
        key = key.upper()
        if key in seen:
            return replies.SYNTAX_ERROR
        seen.add(key)
        items.append((key, bool(eq), value))
    return items


def parse_mail_parameters(text: str, max_size: int, *, tls: bool = False) -> MailParameters | Reply:
    """Parse the parameters of MAIL FROM; unknown or repeated ones are refused.

    REQUIRETLS is offered only over TLS (`tls`), so without it the parameter is refused.
    """
    size: int | None = None
    body = "7BIT"
    smtputf8 = requiretls = False
    ret: str | None = None
    envid: str | None = None
    items = _parameters(text)
    if isinstance(items, Reply):
        return items
    for key, eq, value in items:
        if key == "SIZE":
            if not _SIZE_VALUE.fullmatch(value):
                return replies.SYNTAX_ERROR
            size = int(value)
            if size > max_size:
                return replies.MESSAGE_TOO_BIG
        elif key == "BODY":
            body = value.upper()
            if body not in ("7BIT", "8BITMIME"):
                return replies.PARAMETER_NOT_SUPPORTED
        elif key in ("SMTPUTF8", "REQUIRETLS"):
            if eq:
                return replies.SYNTAX_ERROR
            if key == "SMTPUTF8":
                smtputf8 = True
            elif not tls:
                return replies.REQUIRETLS_NEEDS_TLS
            else:
                requiretls = True
        elif key == "AUTH":
            # RFC 4954 5: accepted for compatibility; we trust only our own authentication.
            if value != "<>" and not xtext.XTEXT.fullmatch(value):
                return replies.SYNTAX_ERROR
        elif key == "RET":
            ret = value.upper()
            if ret not in ("FULL", "HDRS"):
                return replies.SYNTAX_ERROR
        elif key == "ENVID":
            envid = envelope_id(value)
            if envid is None:
                return replies.SYNTAX_ERROR
        else:
            return replies.PARAMETER_NOT_SUPPORTED
    return MailParameters(size, body, smtputf8, ret, envid, requiretls)


def parse_rcpt_parameters(text: str) -> RcptParameters | Reply:
    """Parse the parameters of RCPT TO (RFC 3461 NOTIFY and ORCPT); others are refused."""
    notify: tuple[str, ...] | None = None
    orcpt: str | None = None
    items = _parameters(text)
    if isinstance(items, Reply):
        return items
    for key, _, value in items:
        if key == "NOTIFY":
            notify = notify_words(value)
            if notify is None:
                return replies.SYNTAX_ERROR
        elif key == "ORCPT":
            if original_recipient(value) is None:
                return replies.SYNTAX_ERROR
            orcpt = value
        else:
            return replies.PARAMETER_NOT_SUPPORTED
    return RcptParameters(notify, orcpt)


def parse_bdat(argument: str) -> tuple[int, bool] | None:
    """`BDAT <size> [LAST]` -> (size, last), or None when malformed."""
    match = _BDAT.fullmatch(argument)
    if match is None:
        return None
    return int(match.group(1)), match.group(2) is not None

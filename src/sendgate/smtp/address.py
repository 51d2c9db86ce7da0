"""The one strict parser of mail addresses and host names: SMTP paths (RFC 5321, RFC 6531), header
mailboxes, and the host-name grammar every other module checks names with.

Security: everything parsed here comes from the client (MAIL/RCPT arguments, From:/Sender:
header fields). Only what RFC 5321 section 4.1.2 allows is accepted, with UTF-8 local parts and
U-label domains only when SMTPUTF8 was requested; lengths are capped per RFC 5321 section
4.5.3.1. The result is a canonical `Address` that the sender policy compares; no other module
parses addresses.

Host names: `is_ldh_label`, `is_domain_name` and `is_host_name` are the one grammar of DNS names
in sendgate (config, DKIM, MX targets, MTA-STS, DSNs). They only answer yes or no, never
normalise: callers that want canonical names lower-case them first.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass
from email.errors import HeaderParseError, NonASCIILocalPartDefect
from email.headerregistry import AddressHeader, HeaderRegistry
from typing import cast

MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256
MAX_HOST_NAME = 253  # a DNS name as text without the final dot (255 octets on the wire)
# Comments nested deeper than this in From:/Sender: are refused before the stdlib parser sees
# them: it recurses per level (RecursionError at a few hundred). Real clients nest none.
MAX_COMMENT_DEPTH = 32
_MAX_LABEL = 63

# RFC 5321 atext (RFC 5322 3.2.3) as a character class, ASCII part.
_ATEXT = r"A-Za-z0-9!#$%&'*+\-/=?^_`{|}~"
_DOT_STRING_ASCII = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*")
_DOT_STRING_UTF8 = re.compile(rf"[{_ATEXT}\u0080-\U0010ffff]+(?:\.[{_ATEXT}\u0080-\U0010ffff]+)*")
# qtextSMTP / quoted-pairSMTP contents (printable ASCII, space included).
_QUOTED_ASCII = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*)"')
_QUOTED_UTF8 = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*)"')
# RFC 1123 2.1: letters, digits and hyphens, 1 to 63 of them, no hyphen at either end.
_LDH_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_LDH_LABEL_UNDERSCORE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_UNQUOTE = re.compile(r"\\(.)")


class AddressError(ValueError):
    """The text is not an address RFC 5321 allows; `non_ascii` marks a missing SMTPUTF8."""

    def __init__(self, reason: str, *, non_ascii: bool = False) -> None:
        super().__init__(reason)
        self.non_ascii = non_ascii


@dataclass(frozen=True, slots=True)
class Address:
    """A canonical mailbox: the unquoted local part as given, and the lower-cased domain."""

    local: str
    domain: str

    def __str__(self) -> str:
        return f"{quote_local(self.local)}@{self.domain}"

    @property
    def is_ascii(self) -> bool:
        return self.local.isascii() and self.domain.isascii()


def quote_local(local: str) -> str:
    """The local part as written in a path: quoted only when a dot-string cannot hold it."""
    if _DOT_STRING_UTF8.fullmatch(local):
        return local
    return '"' + re.sub(r'(["\\])', r"\\\1", local) + '"'


def _check_non_ascii(text: str, smtputf8: bool) -> None:
    if not smtputf8 and not text.isascii():
        raise AddressError("non-ASCII address without SMTPUTF8", non_ascii=True)


def _utf8_label_ok(label: str) -> bool:
    """A U-label: letters, marks, digits and hyphens only; no controls, spaces or symbols."""
    if label.startswith("-") or label.endswith("-"):
        return False
    for ch in label:
        if ch.isascii():
            if not (ch.isalnum() or ch == "-"):
                return False
        elif unicodedata.category(ch)[0] not in "LMN":
            return False
    # The A-label (punycode) form is what must fit in 63 octets on the wire.
    return len(b"xn--" + label.encode("punycode")) <= _MAX_LABEL


def is_ldh_label(label: str, *, underscore: bool = False) -> bool:
    """True for one host-name label: 1 to 63 ASCII letters, digits and inner hyphens.

    `underscore` also lets "_" stand where a letter may: host names as found in DNS (MX
    targets) have them, though RFC 1123 does not.
    """
    return (_LDH_LABEL_UNDERSCORE if underscore else _LDH_LABEL).fullmatch(label) is not None


def is_domain_name(name: str, *, underscore: bool = False) -> bool:
    """True for host-name labels joined by dots, at most 253 characters, without a final dot.

    Labels of digits only are allowed anywhere, as in RFC 5321's Domain, so "192.0.2.1" passes;
    `is_host_name` is the check for a name that must not read as an address.
    """
    return len(name) <= MAX_HOST_NAME and all(
        is_ldh_label(label, underscore=underscore) for label in name.split(".")
    )


def is_host_name(name: str, *, underscore: bool = False) -> bool:
    """True for a domain name whose last label is not all digits, so never an IPv4 address.

    RFC 1123 2.1 and RFC 3696 2: a top-level domain is never numeric.
    """
    return is_domain_name(name, underscore=underscore) and not name.rpartition(".")[2].isdigit()


def parse_domain(text: str, *, smtputf8: bool) -> str:
    """Validate a domain or address literal; return its canonical (lower-case) form."""
    _check_non_ascii(text, smtputf8)
    if text.startswith("["):
        return _parse_literal(text)
    # Validate the canonical form, so that what we return always parses again.
    text = text.lower()
    if not text or len(text.encode()) > MAX_DOMAIN:
        raise AddressError("bad domain length")
    for label in text.split("."):
        if label.isascii():
            if not is_ldh_label(label):
                raise AddressError("bad domain label")
        elif not _utf8_label_ok(label):
            raise AddressError("bad internationalised domain label")
    return text


def _parse_literal(text: str) -> str:
    if not text.endswith("]"):
        raise AddressError("unterminated address literal")
    inner = text[1:-1]
    if "%" in inner:  # RFC 5321 IPv6-addr has no zone identifier; ipaddress would accept one
        raise AddressError("bad address literal")
    try:
        if inner[:5].lower() == "ipv6:":
            return f"[IPv6:{ipaddress.IPv6Address(inner[5:]).compressed}]"
        if re.fullmatch(r"[0-9.]+", inner):
            return f"[{ipaddress.IPv4Address(inner)}]"
    except ValueError as exc:
        raise AddressError("bad address literal") from exc
    raise AddressError("unsupported address literal")


def parse_local(text: str, *, smtputf8: bool) -> str:
    """Validate a local part (dot-string or quoted-string); return it unquoted."""
    _check_non_ascii(text, smtputf8)
    if text.startswith('"'):
        match = (_QUOTED_UTF8 if smtputf8 else _QUOTED_ASCII).fullmatch(text)
        if match is None:
            raise AddressError("bad quoted local part")
        local = _UNQUOTE.sub(r"\1", match.group(1))
        if not local:
            raise AddressError("empty local part")
    elif (_DOT_STRING_UTF8 if smtputf8 else _DOT_STRING_ASCII).fullmatch(text):
        local = text
    else:
        raise AddressError("bad local part")
    if len(local.encode()) > MAX_LOCAL_PART:
        raise AddressError("local part too long")
    return local


def parse_mailbox(text: str, *, smtputf8: bool = False) -> Address:
    """Parse `Local-part "@" (Domain / address-literal)` exactly (no angle brackets)."""
    at = _split_at(text)
    return Address(
        parse_local(text[:at], smtputf8=smtputf8), parse_domain(text[at + 1 :], smtputf8=smtputf8)
    )


def _split_at(text: str) -> int:
    """Index of the "@" that separates local part and domain (quoted "@"s are skipped)."""
    if text.startswith('"'):
        i = 1
        while i < len(text):
            if text[i] == "\\":
                i += 2
                continue
            if text[i] == '"':
                break
            i += 1
        at = text.find("@", i)
    else:
        at = text.find("@")
    if at <= 0:
        raise AddressError("missing @domain")
    return at


def split_path(argument: str) -> tuple[str, str]:
    """Split `<path> params` into the bracketed path and the rest (quoted ">" is skipped)."""
    if not argument.startswith("<"):
        raise AddressError("path must be in angle brackets")
    quoted = False
    i = 1
    while i < len(argument):
        ch = argument[i]
        if ch == "\\" and quoted:
            i += 2
            continue
        if ch == '"':
            quoted = not quoted
        elif ch == ">" and not quoted:
            rest = argument[i + 1 :]
            if rest and not rest.startswith(" "):
                raise AddressError("junk after path")
            return argument[: i + 1], rest.strip(" ")
        i += 1
    raise AddressError("unterminated path")


def parse_path(path: str, *, smtputf8: bool, allow_null: bool) -> Address | None:
    """Parse `<[A-d-l:]Mailbox>` (or `<>` when allowed, giving None); source routes are ignored."""
    if len(path.encode()) > MAX_PATH:
        raise AddressError("path too long")
    inner = path[1:-1]
    if not inner:
        if allow_null:
            return None
        raise AddressError("null path not allowed here")
    if inner.startswith("@"):
        colon = inner.find(":")
        if colon < 0:
            raise AddressError("bad source route")
        for hop in inner[:colon].split(","):
            if not hop.startswith("@"):
                raise AddressError("bad source route")
            parse_domain(hop[1:], smtputf8=smtputf8)
        inner = inner[colon + 1 :]
    return parse_mailbox(inner, smtputf8=smtputf8)


_HEADER_REGISTRY = HeaderRegistry()
# What nearly every client writes: an addr-spec, or <addr-spec> after a display name of plain
# atoms or a plain quoted string. Recognised without the stdlib's tokeniser (it was a tenth of
# an accepted message's CPU); anything else (comments, escapes, encoded words, groups, obsolete
# forms, non-ASCII) takes the full parse. The addr-spec is checked by `parse_mailbox` either way.
_PLAIN_ADDR = rf"([{_ATEXT}]+(?:\.[{_ATEXT}]+)*@[A-Za-z0-9.-]+)"
_PLAIN_NAME = rf'(?:[{_ATEXT}]+(?: [{_ATEXT}]+)*|"[\x20\x21\x23-\x5b\x5d-\x7e]*") ?'
_PLAIN_MAILBOX = re.compile(rf"{_PLAIN_ADDR}|(?:{_PLAIN_NAME})?<{_PLAIN_ADDR}>")


def _comment_depth(value: str) -> int:
    """The deepest nesting of RFC 5322 comments, outside quoted strings, escapes counted."""
    depth = deepest = 0
    quoted = escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"' and depth == 0:
            quoted = not quoted
        elif quoted:
            continue
        elif char == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif char == ")" and depth:
            depth -= 1
    return deepest


def parse_header_mailboxes(name: str, value: str, *, smtputf8: bool = True) -> list[Address]:
    """Mailboxes of a From:/Sender: field body (RFC 5322 mailbox-list), strictly.

    The stdlib's RFC 5322 parser tokenises display names, comments and encoded words; any defect
    it reports (but a UTF-8 local part, which `smtputf8` decides), any group syntax, or any
    addr-spec our SMTP parser would refuse is an error.
    """
    plain = _PLAIN_MAILBOX.fullmatch(value)
    if plain is not None and "=?" not in value:
        return [parse_mailbox(plain[1] or plain[2], smtputf8=smtputf8)]
    return parse_header_mailboxes_fully(name, value, smtputf8=smtputf8)


def parse_header_mailboxes_fully(name: str, value: str, *, smtputf8: bool = True) -> list[Address]:
    """`parse_header_mailboxes` without the shortcut for plain values (their reference)."""
    if _comment_depth(value) > MAX_COMMENT_DEPTH:
        raise AddressError("address header nested too deeply")
    # The stdlib parser raises more than HeaderParseError on some malformed values; it recurses
    # once per nested comment, hence the depth check first, and RecursionError as a backstop.
    try:
        header = _HEADER_REGISTRY(name, value)
    except (
        HeaderParseError, AttributeError, IndexError, TypeError, ValueError, RecursionError,
    ) as exc:  # fmt: skip
        raise AddressError("unparsable address header") from exc
    if any(not isinstance(d, NonASCIILocalPartDefect) for d in header.defects):
        raise AddressError("malformed address header")
    result: list[Address] = []
    # The registry builds AddressHeader subclasses for address fields, typed as BaseHeader.
    for group in cast(AddressHeader, header).groups:
        if group.display_name is not None:
            raise AddressError("group syntax not allowed")
        for mailbox in group.addresses:
            if not mailbox.domain or not mailbox.username:
                raise AddressError("mailbox without local part or domain")
            local = mailbox.username
            if not _DOT_STRING_UTF8.fullmatch(local):
                local = quote_local(local)
            result.append(parse_mailbox(f"{local}@{mailbox.domain}", smtputf8=smtputf8))
    if not result:
        raise AddressError("no mailbox in header")
    return result

"""Seed inputs for the fuzz targets, made at run time from the dialog transcripts and valid inputs.

Nothing here is committed as a corpus: `write` puts each target's seeds into a directory the
caller owns. Seeds follow the targets' input layout (`engine.Provider`): payload at the front,
then one length byte per read (last read first), then the option bytes (first option last).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.fuzz.targets import ERROR_LIMITS, RECIPIENT_LIMITS, SESSION_SIZES

from sendgate.config.render import render_example

TESTS = Path(__file__).resolve().parent.parent
TRANSCRIPTS = TESTS / "dialogs" / "transcripts"
BAD_CONFIGS = TESTS / "configs" / "bad"
_MACRO = re.compile(r"\{plain-(\w+)\}")


def with_options(payload: bytes, *options: int) -> bytes:
    """An input whose options (in the order the target reads them) follow `payload`."""
    return payload + bytes(reversed(options))


def chunked(pieces: Sequence[bytes], largest: int, *options: int) -> bytes:
    """An input that `Provider.chunks(largest)` reads back as `pieces` (long ones split)."""
    reads = [
        piece[start : start + largest]
        for piece in pieces
        for start in range(0, len(piece), largest)
    ]
    lengths = bytes(len(read) - 1 for read in reversed(reads))
    return b"".join(reads) + lengths + bytes(reversed(options))


def plain_response(username: str, password: str, authzid: str = "") -> str:
    """An AUTH PLAIN response (RFC 4616) in base64."""
    return base64.b64encode(f"{authzid}\0{username}\0{password}".encode()).decode()


def _b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


@dataclass(frozen=True)
class Dialog:
    """What the client sends in one transcript, one read per `>`/`>>` line, and its settings."""

    name: str
    sends: tuple[bytes, ...]
    settings: dict[str, int]


def _unescape(text: str) -> bytes:
    """The transcripts' `>>` escapes (\\r \\n \\t \\\\ \\xHH) to bytes."""
    return text.encode("latin-1").decode("unicode_escape").encode("latin-1")


def dialogs() -> list[Dialog]:
    found = []
    for path in sorted(TRANSCRIPTS.glob("*.txt")):
        sends: list[bytes] = []
        settings: dict[str, int] = {}
        for raw in path.read_text().splitlines():
            line = _MACRO.sub(
                lambda m: plain_response(f"{m[1]}@example.test", "fuzz-password"), raw
            )
            if line.startswith(">> "):
                sends.append(_unescape(line[3:]))
            elif line.startswith("> "):
                sends.append(line[2:].encode() + b"\r\n")
            elif line.startswith("set "):
                key, _, value = line[4:].partition("=")
                settings[key] = int(value)
        found.append(Dialog(path.stem, tuple(sends), settings))
    return found


def client_lines() -> list[bytes]:
    """Every CRLF-terminated line the transcripts send, without its CRLF."""
    lines: list[bytes] = []
    for dialog in dialogs():
        for send in dialog.sends:
            lines += send.split(b"\r\n")[:-1]
    return lines


def _nearest(choices: Sequence[int], value: int) -> int:
    return min(range(len(choices)), key=lambda i: abs(choices[i] - value))


# --- per target ---

_EXTRA_LINES = (
    b"EHLO [192.0.2.1]",
    b"HELO client.example",
    b"MAIL FROM:<a@example.org> SIZE=1000 BODY=8BITMIME SMTPUTF8 AUTH=<>",
    b"MAIL FROM:<a@example.org> AUTH=alice+2Bexample.org",
    b'RCPT TO:<"q \\" x"@example.org>',
    b"BDAT 100 LAST",
    b"BDAT 0",
    b"AUTH PLAIN =",
    b"VRFY postmaster",
    b"EXPN list",
    b"SIZE=100 BODY=7BIT",
    b"0 last",
    b"MAIL FROM:<a@example.org> RET=HDRS ENVID=QQ+2B1 REQUIRETLS",
    b"RCPT TO:<b@example.org> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;b+2Bx@example.org",
    b"NOTIFY=NEVER ORCPT=utf-8;j\\x{00F6}rg@example.org",
)


def commands() -> list[bytes]:
    lines = [*client_lines(), *_EXTRA_LINES]
    return [
        with_options(line, 3, whole, tls) for line in lines for whole in (0, 1) for tls in (0, 1)
    ]


_PATHS = (
    "<alice@example.org>",
    "<alice@example.org> SIZE=100",
    "<>",
    '<"a b"@example.org>',
    '<"a\\"b"@example.org>',
    "<@a.example,@b.example:user@c.example>",
    "<user@[IPv6:2001:db8::1]>",
    "<user@[192.0.2.1]>",
    "<jörg@bücher.example>",
    "<postmaster>",
)
_HOST_NAMES = ("mx1.example.com", "_dmarc.example.org", "192.0.2.1", "a-b.c", "xn--bcher-kva.ch")
_HEADERS = (
    "alice@example.org",
    "Alice <alice@example.org>",
    '"Bob B." <bob@example.net>',
    "=?utf-8?q?J=C3=B6rg?= <j@example.org>",
    "a@example.org, b@example.org",
    "Team: a@example.org;",
    "(comment) alice@example.org",
)


def address() -> list[bytes]:
    arguments = [
        line.split(b":", 1)[1]
        for line in client_lines()
        if line.upper().startswith((b"MAIL FROM:", b"RCPT TO:"))
    ]
    arguments += [path.encode() for path in _PATHS]
    seeds = []
    for argument in arguments:
        seeds += [with_options(argument, mode | utf8) for mode in (0, 8 | 2) for utf8 in (0, 1)]
    seeds += [with_options(name.encode(), 16 | under) for name in _HOST_NAMES for under in (0, 4)]
    return seeds


def header() -> list[bytes]:
    return [with_options(value.encode(), utf8) for value in _HEADERS for utf8 in (0, 1)]


def sasl() -> list[bytes]:
    plain = plain_response("alice@example.test", "fuzz-password").encode()
    user, password = _b64("alice@example.test"), _b64("fuzz-password")
    plain_id, login = 0, 1
    return [
        with_options(plain, plain_id, 1),
        with_options(plain, plain_id, 0),
        with_options(b"=", plain_id, 1),
        with_options(b"*", plain_id, 0),
        with_options(user + b"\r\n" + password, login, 0),
        with_options(user + b"\r\n" + password, login, 1),
        with_options(user + b"\r\n*", login, 1),
        with_options(b"CRAM-MD5", 2, 0),
    ]


_CONTENTS = (
    b".\r\n",
    b"Subject: x\r\n\r\n..dot\r\n.\r\n",
    b"a\r\n.\r",
    b"bare\nlf\r\n.\r\n",
    b"x" * 1000 + b"\r\n.\r\n",
    b"no end",
)


def data() -> list[bytes]:
    contents = [send for dialog in dialogs() for send in dialog.sends if b"\r\n.\r\n" in send]
    contents += _CONTENTS
    return [chunked([content], 64, size) for content in contents for size in (1, 3)]


def session() -> list[bytes]:
    seeds = []
    for dialog in dialogs():
        limits = (
            _nearest(SESSION_SIZES, dialog.settings.get("max_message_size", 25 * 1024 * 1024))
            + 4 * _nearest(RECIPIENT_LIMITS, dialog.settings.get("max_recipients", 100))
            + 12 * _nearest(ERROR_LIMITS, dialog.settings.get("max_errors", 10))
        )
        for flags in (16, 16 | 2 | 1, 0):
            seeds.append(chunked(dialog.sends, 256, flags, limits))
    return seeds


_REPLIES = (
    b"220 mx.example.net ESMTP\r\n",
    b"250-mx.example.net\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250 8BITMIME\r\n",
    b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n",
    b"550 5.1.1 <bob@example.org>: Recipient address rejected\r\n",
    b"451-4.3.0 try\r\n451 4.3.0 later\r\n",
    b"421 4.7.0 closing\r\n",
    b"250 ok\n",
    b"552\r\n",
)


def reply() -> list[bytes]:
    return [chunked([text], 256) for text in _REPLIES] + [chunked(list(_REPLIES), 256)]


_POLICIES = (
    b"version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\n"
    b"mx: backupmx.example.com\r\nmax_age: 604800\r\n",
    b"version: STSv1\nmode: testing\nmx: MX.Example.Org\nmax_age: 86400\next_key: some value\n",
    b"version: STSv1\r\nmode: none\r\nmax_age: 99999999999\r\n",
)
_TXT_RECORDS = (
    b"v=STSv1; id=20160831085700Z;",
    b"v=spf1 -all\nv=STSv1;id=abc123",
    b"v=STSv1; id=1; ext.name=value",
)


def mtasts() -> list[bytes]:
    return [with_options(policy, 0) for policy in _POLICIES] + [
        with_options(txt, 1) for txt in _TXT_RECORDS
    ]


def config() -> list[bytes]:
    example = render_example(
        "mail.example.com", ["127.0.0.1:587"], ["127.0.0.1:465"], "cert.pem", "key.pem"
    )
    minimal = (
        'hostname = "mail.example.com"\n\n[tls]\n'
        'certificates = [{ cert = "cert.pem", key = "key.pem" }]\n'
    )
    bad = [path.read_bytes() for path in sorted(BAD_CONFIGS.glob("*.toml"))]
    return [example.encode(), minimal.encode(), *bad]


SEEDS: dict[str, Callable[[], list[bytes]]] = {
    "commands": commands,
    "address": address,
    "header": header,
    "sasl": sasl,
    "data": data,
    "session": session,
    "reply": reply,
    "mtasts": mtasts,
    "config": config,
}


# libFuzzer dictionaries: the grammar's keywords, and characters that case mapping or str.split()
# treat as ASCII (U+017F and U+0131 upper-case to S and I, U+212A and U+0130 lower-case to k
# and i, NBSP and U+3000 are white space), the usual traps of a parser of ASCII text in str.
_UNICODE = ("\u017f", "\u0131", "\u212a", "\u0130", "\u00df", "\ufb05", "\u00a0", "\u3000")
_WORDS: dict[str, tuple[str, ...]] = {
    "commands": (
        *("MAIL FROM:<", "RCPT TO:<", "SIZE=", "BODY=8BITMIME", "SMTPUTF8", "AUTH=<>"),
        *("RET=HDRS", "ENVID=", "REQUIRETLS", "NOTIFY=", "SUCCESS,", "ORCPT=rfc822;", "+2B"),
        *("BDAT ", " LAST", "DATA", "EHLO ", "STARTTLS", "AUTH PLAIN ", "QUIT"),
    ),
    "address": ("<", ">", "@", "[IPv6:", "]", '"', "\\", "xn--", "postmaster", ":", ","),
    "header": ("=?utf-8?q?", "?=", "<", ">", "@", ",", ";", ":", "(", ")", '"'),
    "sasl": ("=", "*", "\r\n", "AGFsaWNlAHB3"),
    "data": ("\r\n.\r\n", "\r\n..", "\r\n", "\r", "\n"),
    "session": (
        *("MAIL FROM:<a@b>", "RCPT TO:<c@d>", "SIZE=", "BDAT ", " LAST", "DATA\r\n"),
        *("\r\n.\r\n", "EHLO x\r\n", "STARTTLS\r\n", "AUTH PLAIN ", "RSET\r\n"),
    ),
    "reply": ("250-", "250 ", "550 5.1.1 ", "421 ", "\r\n"),
    "mtasts": (
        *("version: STSv1", "mode: ", "enforce", "testing", "none", "mx: ", "*."),
        *("max_age: ", "v=STSv1", "; id=", "\r\n"),
    ),
    "config": ("[tls]", "[listen]", "[delivery]", "hostname = ", " = [", "{ ", " }", '"""'),
}


def dictionary(name: str) -> str:
    """Target `name`'s libFuzzer dictionary (one quoted token a line, UTF-8 bytes escaped)."""
    tokens = [*_WORDS[name], *_UNICODE]
    return "".join(
        '"' + "".join(f"\\x{byte:02x}" for byte in token.encode()) + '"\n' for token in tokens
    )


def write(name: str, directory: Path) -> int:
    """Write the seeds of target `name` into `directory`, named by content; return how many."""
    directory.mkdir(parents=True, exist_ok=True)
    seeds = SEEDS[name]()
    for seed in seeds:
        (directory / hashlib.sha1(seed).hexdigest()).write_bytes(seed)  # noqa: S324 - a name
    return len(seeds)

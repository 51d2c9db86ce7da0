"""`sendgate sendmail [OPTIONS] [RECIPIENT...]`, and `sendmail` as a link to sendgate.

The command line cron, PHP's mail(), git send-email and scripts give /usr/sbin/sendmail: the
message on standard input, handed to the running server over its sendmail socket
(`sendmail.socket`; $SENDGATE_SENDMAIL_SOCKET, else `DEFAULT_SOCKET`). The server knows the
caller from the socket (its user id) and sends as the account set up for it, with that
account's addresses and limits. Nothing is queued here: a server that cannot be reached is a
temporary failure (exit 75) for the caller to retry, as a full queue is for sendmail.

Options: `-t` (recipients from To:, Cc: and Bcc:, and Bcc: removed), `-i` and `-oi` (a line
holding only "." does not end the message), `-f ADDRESS` / `-r ADDRESS` (the envelope sender,
else the account), `-F NAME` (the name in a From: line added when the message has none),
and the delivery report requests of RFC 3461 as Postfix's sendmail takes them: `-N never` or
`-N success,delay,failure` (NOTIFY for every recipient), `-R full|hdrs` (RET), `-V ENVID`;
accepted and ignored: `-bm`, `-oXXX`, `-B TYPE`, `-v`, `-X`. Exit codes are
sysexits.h's: 0, 64 usage, 65 message refused, 67 recipient refused, 69 unavailable, 75 try
again later, 77 not allowed.

The configuration is not read: it is the server's (mode 0600), and the callers are not.
"""

from __future__ import annotations

import argparse
import email.utils
import os
import re
import smtplib
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from sendgate.cli.command import Group
from sendgate.smtp import dsn, xtext

DEFAULT_SOCKET = "/run/sendgate/sendmail.sock"
ENVIRONMENT = "SENDGATE_SENDMAIL_SOCKET"
TIMEOUT = 60.0

EX_USAGE = 64
EX_DATAERR = 65
EX_NOUSER = 67
EX_UNAVAILABLE = 69
EX_TEMPFAIL = 75
EX_NOPERM = 77

_ACCOUNT = re.compile(r" as (\S+@\S+)$")
_FIELD = re.compile(rb"^([!-9;-~]+):", re.M)


class SendmailError(Exception):
    """What went wrong, and the exit status it means."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise SendmailError(EX_USAGE, message)


def _parser() -> _Parser:
    parser = _Parser(prog="sendmail", add_help=False)
    parser.add_argument("-t", action="store_true", dest="from_headers")
    parser.add_argument("-i", action="store_true", dest="no_dot")
    parser.add_argument("-f", "-r", dest="sender")
    parser.add_argument("-F", dest="full_name")
    parser.add_argument("-o", action="append", default=[], dest="options")
    parser.add_argument("-b", dest="mode", default="m")
    parser.add_argument("-N", dest="notify")
    parser.add_argument("-R", dest="ret")
    parser.add_argument("-V", dest="envid")
    for ignored in ("-B", "-X"):
        parser.add_argument(ignored)
    parser.add_argument("-v", action="store_true")
    parser.add_argument("recipients", nargs="*")
    return parser


@dataclass(frozen=True, slots=True)
class Prepared:
    """The message as it goes to the server (CRLF lines) and its recipients."""

    message: bytes
    recipients: tuple[str, ...]


def prepare(
    raw: bytes, recipients: Sequence[str], *, from_headers: bool, dot_ends: bool
) -> Prepared:
    """The message read from standard input, made ready to send; SendmailError (EX_USAGE)
    when it has nowhere to go.

    Line ends become CRLF; with `dot_ends` a line holding only "." ends it; with
    `from_headers` the To:, Cc: and Bcc: addresses are added and the Bcc: fields removed.
    """
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    kept: list[bytes] = []
    for line in lines:
        line = line.removesuffix(b"\r")
        if dot_ends and line == b".":
            break
        kept.append(line)
    split = kept.index(b"") if b"" in kept else len(kept)
    head, body = kept[:split], kept[split:]
    wanted = list(recipients)
    if from_headers:
        fields = _fields(head)
        for name, value in fields:
            if name in (b"to", b"cc", b"bcc"):
                text = value.decode("utf-8", "replace")
                wanted += [address for _, address in email.utils.getaddresses([text]) if address]
        head = [line for name, lines_ in _field_lines(head) if name != b"bcc" for line in lines_]
    unique = tuple(dict.fromkeys(address.strip() for address in wanted if address.strip()))
    if not unique:
        raise SendmailError(EX_USAGE, "no recipients (give them as arguments, or -t)")
    return Prepared(b"".join(line + b"\r\n" for line in [*head, *body]), unique)


def _field_lines(head: list[bytes]) -> list[tuple[bytes, list[bytes]]]:
    """The header lines grouped by field (a continuation line stays with its field)."""
    grouped: list[tuple[bytes, list[bytes]]] = []
    for line in head:
        match = _FIELD.match(line)
        if match is None and grouped:
            grouped[-1][1].append(line)
        else:
            grouped.append((match.group(1).lower() if match else b"", [line]))
    return grouped


def _fields(head: list[bytes]) -> list[tuple[bytes, bytes]]:
    """(lower-case name, unfolded value) of each header field."""
    found = []
    for name, lines in _field_lines(head):
        value = b" ".join(line.strip() for line in lines)
        found.append((name, value.partition(b":")[2].strip()))
    return found


def _with_from(message: bytes, sender: str, full_name: str | None) -> bytes:
    """`message` with a From: field first when it has none."""
    head = message.split(b"\r\n\r\n", 1)[0]
    if any(name == b"from" for name, _ in _fields(head.split(b"\r\n"))):
        return message
    value = email.utils.formataddr((full_name, sender)) if full_name else sender
    return f"From: {value}\r\n".encode() + message


class _LocalSmtp(smtplib.SMTP):
    """smtplib over the sendmail socket (a Unix socket)."""

    def __init__(self, path: str) -> None:
        self._path = path
        super().__init__(local_hostname="localhost", timeout=TIMEOUT)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        return sock


def _status(code: int, refused: int) -> int:
    return EX_TEMPFAIL if 400 <= code < 500 else refused


@dataclass(frozen=True, slots=True)
class Reports:
    """The RFC 3461 requests of -N, -R and -V, as MAIL and RCPT parameters."""

    mail: tuple[str, ...] = ()
    rcpt: tuple[str, ...] = ()


def reports(notify: str | None, ret: str | None, envid: str | None) -> Reports:
    """-N, -R and -V as SMTP parameters; SendmailError (EX_USAGE) for a value they cannot take."""
    mail: list[str] = []
    rcpt: list[str] = []
    if ret is not None:
        if ret.lower() not in ("full", "hdrs"):
            raise SendmailError(EX_USAGE, f"-R takes full or hdrs, not {ret!r}")
        mail.append("RET=" + ret.upper())
    if envid is not None:
        # As the server will check it: the xtext sent at most ENVID_MAX long.
        encoded = xtext.encode(envid) if envid and envid.isascii() else ""
        if dsn.envelope_id(encoded) is None:
            raise SendmailError(EX_USAGE, "-V takes 1 to 100 printable ASCII characters")
        mail.append("ENVID=" + encoded)
    if notify is not None:
        words = dsn.notify_words(",".join(w.strip() for w in notify.split(",")))
        if words is None:
            raise SendmailError(
                EX_USAGE, f"-N takes never, or some of success, delay, failure; not {notify!r}"
            )
        rcpt.append("NOTIFY=" + ",".join(words))
    return Reports(tuple(mail), tuple(rcpt))


def _send(
    path: str,
    prepared: Prepared,
    sender: str | None,
    full_name: str | None,
    requests: Reports = Reports(),
) -> None:
    try:
        client = _LocalSmtp(path)
        code, greeting = client.connect("localhost")
    except OSError as exc:
        raise SendmailError(
            EX_TEMPFAIL, f"cannot reach the server at {path}: {exc.strerror or exc}"
        ) from None
    with client:
        text = greeting.decode("utf-8", "replace")
        if code != 220:
            raise SendmailError(_status(code, EX_NOPERM), f"the server refused: {code} {text}")
        match = _ACCOUNT.search(text)
        sender = sender or (match.group(1) if match else None)
        if sender is None:
            raise SendmailError(EX_USAGE, "no sender: give -f ADDRESS")
        client.ehlo()
        code, reply = client.mail(sender, list(requests.mail))
        if code != 250:
            raise SendmailError(_status(code, EX_NOPERM), f"sender {sender}: {code} {_text(reply)}")
        for recipient in prepared.recipients:
            code, reply = client.rcpt(recipient, list(requests.rcpt))
            if code not in (250, 251):
                raise SendmailError(
                    _status(code, EX_NOUSER), f"recipient {recipient}: {code} {_text(reply)}"
                )
        message = _with_from(prepared.message, sender, full_name)
        code, reply = client.data(message)
        if code != 250:
            raise SendmailError(
                _status(code, EX_DATAERR), f"message refused: {code} {_text(reply)}"
            )


def _text(reply: bytes) -> str:
    return " ".join(reply.decode("utf-8", "replace").split())[:300]


def sendmail_main(argv: Sequence[str]) -> int:
    """Run the sendmail command line; the exit status (sysexits.h)."""
    try:
        args = _parser().parse_args(list(argv))
        if args.mode != "m":
            raise SendmailError(EX_USAGE, f"-b{args.mode} is not supported (only -bm)")
        dot_ends = not (args.no_dot or "i" in args.options)
        requests = reports(args.notify, args.ret, args.envid)
        raw = sys.stdin.buffer.read()
        prepared = prepare(raw, args.recipients, from_headers=args.from_headers, dot_ends=dot_ends)
        path = os.environ.get(ENVIRONMENT) or DEFAULT_SOCKET
        _send(path, prepared, args.sender, args.full_name, requests)
    except SendmailError as failure:
        print(f"sendmail: {failure}", file=sys.stderr)
        return failure.status
    except (smtplib.SMTPException, OSError) as exc:
        print(f"sendmail: the server went away: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    return 0


def _arguments(parser: argparse.ArgumentParser) -> None:
    # For the help text only: `cli.main` hands the arguments to `sendmail_main` unparsed.
    parser.add_argument("args", nargs="*", metavar="ARG", help="as sendmail takes them")


def run(args: argparse.Namespace) -> int:
    return sendmail_main(args.args)


GROUP = Group("sendmail", "hand a message to the server, as /usr/sbin/sendmail", _arguments, run)

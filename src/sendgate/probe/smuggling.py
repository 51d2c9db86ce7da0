"""With a login: SMTP smuggling end-of-data variants, and header From: of another domain.

Every message goes from the user to the user's own address, on a connection of its own.
A message carries one non-standard end-of-data sequence, then a real `<CRLF>.<CRLF>`, then a
NOOP, all in one write. A safe server sees one message (accepted or refused), then the NOOP:
two replies, the second the NOOP's 250. A server that takes the variant as the end answers the
message early, then the leftover `<CRLF>` and `.` lines as commands (5xx) before the NOOP: a
second reply that is not 250 is the proof, with no timing involved.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

from sendgate.findings import Finding, Severity
from sendgate.probe.target import Credentials, Target, connect, ehlo, lenient_context
from sendgate.probe.wire import Reply, Wire, WireError, shown_bytes

# Names as in the SMTP smuggling write-ups (SEC Consult, 2023), with the sequence each sends.
VARIANTS: tuple[tuple[str, bytes], ...] = (
    ("lf_dot_lf", b"\n.\n"),
    ("lf_dot_crlf", b"\n.\r\n"),
    ("crlf_dot_lf", b"\r\n.\n"),
    ("cr_dot_crlf", b"\r.\r\n"),
    ("cr_dot_cr", b"\r.\r"),
    ("crlf_dot_cr", b"\r\n.\r"),
)
_MOST_REPLIES = 6


class LoginError(WireError):
    pass


@dataclass(frozen=True, slots=True)
class Sent:
    """What one probe message got: the replies up to the NOOP's."""

    replies: tuple[Reply, ...]

    @property
    def smuggled(self) -> bool:
        """A command error before the NOOP's answer: the leftover lines were read as commands."""
        return len(self.replies) > 1 and self.replies[1].code // 100 == 5

    @property
    def unclear(self) -> bool:
        """Neither: e.g. the server closed (221, 421) instead of answering the NOOP."""
        return len(self.replies) > 1 and self.replies[1].code // 100 not in (2, 5)

    @property
    def accepted(self) -> bool:
        return bool(self.replies) and self.replies[0].code == 250


def smuggling_findings(target: Target, credentials: Credentials, address: str) -> list[Finding]:
    """Findings for each variant and for a foreign header From:, sent to `address` only."""
    findings: list[Finding] = []
    carried = []
    for name, sequence in VARIANTS:
        content = _message(address, address, name) + b"text" + sequence + b"\r\n.\r\n"
        try:
            sent = _send(target, credentials, address, content)
        except LoginError as exc:
            return [_login_failed(exc)]
        except WireError as exc:
            findings.append(
                Finding(
                    "probe.smuggling_untested",
                    Severity.INFO,
                    f"end-of-data variant {name} not tested: the session broke off",
                    str(exc),
                )
            )
            continue
        shown = " ; ".join(reply.shown() for reply in sent.replies)
        if sent.smuggled:
            findings.append(
                Finding(
                    f"probe.smuggling_{name}",
                    Severity.CRITICAL,
                    f"{shown_bytes(sequence)} ends a message (SMTP smuggling): forged mail can "
                    "be hidden inside an authenticated one",
                    f"DATA ending in text{shown_bytes(sequence)}<CR><LF>.<CR><LF> then NOOP: "
                    f"{shown}",
                    "accept only <CR><LF>.<CR><LF> as the end of data (Postfix: "
                    "smtpd_forbid_bare_newline = normalize)",
                )
            )
        elif sent.unclear:
            findings.append(
                Finding(
                    "probe.smuggling_unclear",
                    Severity.INFO,
                    f"end-of-data variant {name}: the server neither answered the NOOP nor "
                    "read the rest as commands",
                    f"DATA ending in text{shown_bytes(sequence)}<CR><LF>.<CR><LF> then NOOP: "
                    f"{shown}",
                )
            )
        if sent.accepted and not sent.smuggled:
            carried.append(name)
    if carried:
        findings.append(
            Finding(
                "probe.bare_line_ending_accepted",
                Severity.WARNING,
                "messages with bare CR or LF are accepted and passed on: a next hop that reads "
                "them as line ends can be smuggled to",
                f"accepted with these sequences inside: {', '.join(carried)}",
                "refuse bare CR and LF in DATA (RFC 5321 2.3.8)",
            )
        )
    findings.extend(_foreign_from(target, credentials, address))
    return findings


def _foreign_from(target: Target, credentials: Credentials, address: str) -> list[Finding]:
    domain = address.rpartition("@")[2].lower()
    other = "example.net" if domain == "example.com" else "example.com"
    forged = f"probe@{other}"
    try:
        sent = _send(target, credentials, address, _message(forged, address, "header From"))
    except LoginError as exc:
        return [_login_failed(exc)]
    except WireError as exc:
        return [
            Finding(
                "probe.header_from_untested",
                Severity.INFO,
                "header From: not tested: the session broke off",
                str(exc),
            )
        ]
    if not sent.accepted:
        return []
    return [
        Finding(
            "probe.header_from_unchecked",
            Severity.CRITICAL,
            f"a logged-in user can send with a header From: of another domain ({other}): "
            "phishing with a stolen password is easy",
            f"MAIL FROM:<{address}>, header From: <{forged}>: {sent.replies[0].shown()}",
            "check the header From: against the login's addresses (Postfix: "
            "reject_sender_login_mismatch covers only the envelope)",
        )
    ]


def _message(sender: str, recipient: str, what: str) -> bytes:
    lines = [
        f"From: <{sender}>",
        f"To: <{recipient}>",
        f"Subject: sendgate probe ({what}); safe to delete",
        f"Date: {format_datetime(datetime.now(UTC))}",
        f"Message-ID: <{uuid.uuid4().hex}@sendgate-probe.invalid>",
        "",
        "This message was sent by `sendgate probe` to test how the server reads mail.",
        "",
    ]
    return "\r\n".join(lines).encode()


def _send(target: Target, credentials: Credentials, address: str, content: bytes) -> Sent:
    """Log in on a new connection and send `content` (which ends as the test needs) + NOOP."""
    wire = _login(target, credentials)
    try:
        for command in (f"MAIL FROM:<{address}>", f"RCPT TO:<{address}>"):
            reply = wire.command(command)
            if reply.code != 250:
                raise WireError(f"{command}: {reply.shown()}")
        reply = wire.command("DATA")
        if reply.code != 354:
            raise WireError(f"DATA: {reply.shown()}")
        if not content.endswith(b"\r\n.\r\n"):
            content += b".\r\n"
        wire.send(content + b"NOOP\r\n")
        replies = [wire.reply()]
        while len(replies) < _MOST_REPLIES:
            try:
                replies.append(wire.reply())
            except WireError:
                break  # closed after its answer to the message: nothing was smuggled
            if replies[-1].code == 250:
                break
        return Sent(tuple(replies))
    finally:
        wire.close()


def _login(target: Target, credentials: Credentials) -> Wire:
    wire, _ = connect(target)
    try:
        if not target.implicit_tls:
            ehlo(wire)
            reply = wire.command("STARTTLS")
            if reply.code != 220:
                raise WireError(f"STARTTLS: {reply.shown()}")
            wire.starttls(lenient_context(), target.sni)
        ehlo(wire)
        token = f"\0{credentials.user}\0{credentials.password}".encode()
        reply = wire.command("AUTH PLAIN " + base64.b64encode(token).decode("ascii"))
        if reply.code != 235:
            raise LoginError(f"AUTH PLAIN as {credentials.user}: {reply.shown()}")
    except BaseException:
        wire.close()
        raise
    return wire


def _login_failed(exc: LoginError) -> Finding:
    return Finding(
        "probe.login_failed",
        Severity.WARNING,
        "the login given with --auth failed: the checks that need one were not run",
        str(exc),
        "check the user name and password",
    )

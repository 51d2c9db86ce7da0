"""Sign-in notices: a short message to an account's own address when it logs in from a new network.

Built and queued like a bounce (null sender, BOUNCE_USER, signed for the host name when it has a
DKIM key), so nothing answers it and delivery treats it like any message sendgate sends itself.
Switched globally (``[sign_in_notice].enabled``) and per account (`UserSettings.sign_in_notice`),
and rate-limited per account so that an attacker hopping networks cannot flood the mailbox.

Security: the client's EHLO name (and, defensively, every other value shown) comes from the
network. Values only go into the body, never into a header field; they are made printable
ASCII (controls and non-ASCII as escapes), capped, and wrapped into short lines, so they can
neither add a header nor break the message's structure.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sendgate.config.schema import SignInNoticeConfig
from sendgate.delivery.bounce import DsnWriter, crlf_lines, wrap
from sendgate.dkim.signer import DkimSigner
from sendgate.errors import SendgateError
from sendgate.log import BoundLog, EventLog
from sendgate.policy.keys import notice_key
from sendgate.store.limits import LimitStore
from sendgate.store.queue import QueueStore
from sendgate.store.users import UserRecord
from sendgate.text import dsn_ascii, mail_date, printable

DAY = 86400.0
SUBJECT = "New sign-in to your mail account"
_WIDTH = 78  # octets per body line (RFC 5322 section 2.1.1 recommends 78)
_MAX_VALUE = 255  # characters of one client-supplied value shown
_LABEL = 18  # width of the "Client name:" column


@dataclass(frozen=True, slots=True)
class SignIn:
    """What the notice tells about one login; every value but `username` may be hostile."""

    username: str
    network: str
    client_ip: str
    client_name: str | None
    tls_version: str | None
    app_password: str | None
    at: float


class SignInNotices:
    """Decides, builds, signs and queues sign-in notices (blocking: run it in the I/O pool)."""

    def __init__(
        self,
        hostname: str,
        queue: QueueStore,
        limits: LimitStore,
        signer: DkimSigner | None,
        config: SignInNoticeConfig,
        clock: Callable[[], float],
        log: EventLog | BoundLog,
    ) -> None:
        self._hostname = hostname
        self._queue = queue
        self._limits = limits
        self._writer = DsnWriter(queue, hostname, signer)
        self._config = config
        self._clock = clock
        self._log = log

    def wanted(self, user: UserRecord) -> bool:
        """Whether `user` gets notices: on globally and not turned off for the account."""
        return self._config.enabled and user.settings.sign_in_notice is not False

    def send(
        self,
        user: UserRecord,
        *,
        network: str,
        client_ip: str,
        client_name: str | None,
        tls_version: str | None,
        app_password: str | None,
    ) -> str | None:
        """Queue a notice of this login to the account's address; its queue id, or None.

        None when notices are off for the account, its daily budget is spent, or the notice
        could not be queued (logged; a notice never fails the login it reports).
        """
        if not self.wanted(user):
            return None
        try:
            verdict = self._limits.take(notice_key(user.username), self._config.per_day, DAY)
            if not verdict.allowed:
                self._log.event(
                    "sign_in_notice_skipped", user=user.username, network=network, reason="limit"
                )
                return None
            now = self._clock()
            queue_id = self._queue.new_id()
            login = SignIn(
                user.username, network, client_ip, client_name, tls_version, app_password, now
            )
            message = build_notice(login, hostname=self._hostname, queue_id=queue_id)
            queued = self._writer.queue_message(
                queue_id, user.username, message, now, not user.username.isascii()
            )
        except SendgateError as exc:
            self._log.event(
                "sign_in_notice_error", "error", user=user.username, network=network, error=str(exc)
            )
            return None
        if queued.signing_problem is not None:
            self._log.event("dkim_error", "error", queue_id=queue_id, error=queued.signing_problem)
        self._log.event("sign_in_notice", user=user.username, network=network, queue_id=queue_id)
        return queue_id


def build_notice(login: SignIn, *, hostname: str, queue_id: str) -> bytes:
    """The complete CRLF message telling `login.username` about the login; pure."""
    body = _body(login, hostname)
    header = [
        f"From: Mail System <MAILER-DAEMON@{hostname}>",
        f"To: <{login.username}>",
        f"Subject: {SUBJECT}",
        f"Date: {mail_date(login.at)}",
        f"Message-ID: <{queue_id}@{hostname}>",
        "MIME-Version: 1.0",
        "Auto-Submitted: auto-generated",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: " + ("7bit" if body.isascii() else "8bit"),
    ]
    return crlf_lines(header) + b"\r\n" + body


def shown(value: str) -> str:
    """A client-supplied value as printable ASCII: escapes for the rest, at most 255 characters."""
    escaped = dsn_ascii(printable(value, keep_tabs=False))
    return escaped if len(escaped) <= _MAX_VALUE else escaped[: _MAX_VALUE - 3] + "..."


def _body(login: SignIn, hostname: str) -> bytes:
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(login.at))
    facts = [
        ("When:", when),
        ("Network:", shown(login.network)),
        ("Client address:", shown(login.client_ip)),
        ("Client name:", shown(login.client_name) if login.client_name else "(none given)"),
        ("TLS:", shown(login.tls_version) if login.tls_version else "none (not encrypted)"),
    ]
    if login.app_password is not None:
        facts.append(("App password:", shown(login.app_password)))
    lines = _paragraph(
        f"Someone has just signed in to your mail account {login.username} on {hostname} "
        "from a network it had not been used from before."
    )
    lines.append("")
    for name, value in facts:
        pieces = wrap(value, _WIDTH - _LABEL - 2) or [""]
        lines.append(f"  {name:<{_LABEL}}{pieces[0]}")
        lines += [" " * (_LABEL + 2) + piece for piece in pieces[1:]]
    lines.append("")
    lines += _paragraph("If this was you, there is nothing to do.")
    lines.append("")
    lines += _paragraph("If it was not you, someone else knows a password of this account:")
    lines += _item(
        "have the password changed (the administrator runs "
        f"'sendgate user passwd {login.username}');"
    )
    if login.app_password is not None:
        label = shown(login.app_password)
        lines += _item(
            "have the app password revoked ('sendgate user app-password remove "
            f"{login.username} {label}');"
        )
    else:
        lines += _item(
            "if it was an app password, have it revoked "
            "('sendgate user app-password remove USER LABEL');"
        )
    lines += _item("contact your administrator.")
    return crlf_lines(lines)


def _paragraph(text: str) -> list[str]:
    return wrap(text, _WIDTH)


def _item(text: str) -> list[str]:
    pieces = wrap(text, _WIDTH - 4)
    return ["  - " + pieces[0], *("    " + piece for piece in pieces[1:])]

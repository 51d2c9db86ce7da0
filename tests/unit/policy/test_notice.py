"""Tests for sendgate.policy.notice: who gets a sign-in notice, what it says, how it is sent."""

from __future__ import annotations

import io
from collections.abc import Iterator
from email import policy
from email.parser import BytesParser, Parser
from pathlib import Path

import dkim
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.clock import FakeClock

from sendgate.config.schema import SignInNoticeConfig
from sendgate.delivery.bounce import BOUNCE_USER
from sendgate.dkim.keys import generate_key, load_keys
from sendgate.dkim.signer import DkimSigner
from sendgate.log import EventLog
from sendgate.message import summarize
from sendgate.policy.notice import SUBJECT, SignIn, SignInNotices, build_notice, shown
from sendgate.store.local.limits import LocalLimitStore
from sendgate.store.local.queue import LocalQueueStore
from sendgate.store.users import UserRecord, UserSettings

HOST = "mail.example.org"
USER = "alice@example.org"
QUEUE_ID = "0ABCDEFGHJKMNPQRST"
HEADER_NAMES = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Auto-Submitted",
    "Content-Type",
    "Content-Transfer-Encoding",
]


def user(name: str = USER, notice: bool | None = None) -> UserRecord:
    return UserRecord(name, "$argon2id$x", (name,), 1, UserSettings(sign_in_notice=notice))


class Rig:
    """A notice sender on a real local queue and limit store, with a fake clock and a log."""

    def __init__(self, root: Path, config: SignInNoticeConfig, signer: DkimSigner | None) -> None:
        self.clock = FakeClock()
        self.queue = LocalQueueStore(root / "spool", clock=self.clock)
        self.limits = LocalLimitStore(root / "limits.db", clock=self.clock)
        self.stream = io.StringIO()
        log = EventLog(self.stream, clock=self.clock)
        self.notices = SignInNotices(HOST, self.queue, self.limits, signer, config, self.clock, log)

    def send(
        self,
        account: UserRecord | None = None,
        *,
        client_name: str | None = "laptop.example.net",
        app_password: str | None = None,
    ) -> str | None:
        return self.notices.send(
            account or user(),
            network="192.0.2.0/24",
            client_ip="192.0.2.7",
            client_name=client_name,
            tls_version="TLSv1.3",
            app_password=app_password,
        )

    def log_lines(self) -> list[str]:
        return self.stream.getvalue().splitlines()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    made = Rig(tmp_path, SignInNoticeConfig(per_day=3), None)
    yield made
    made.limits.close()


def make_rig(tmp_path: Path, **config: bool | int) -> Rig:
    return Rig(tmp_path, SignInNoticeConfig(**config), None)  # type: ignore[arg-type]


def body_lines(message: bytes) -> list[bytes]:
    return message.partition(b"\r\n\r\n")[2].split(b"\r\n")


def test_a_notice_is_queued_from_the_null_sender_to_the_account(rig: Rig) -> None:
    queue_id = rig.send()
    assert queue_id is not None
    assert rig.queue.ids() == [queue_id]
    envelope = rig.queue.envelope(queue_id)
    assert (envelope.sender, envelope.recipients, envelope.user) == ("", (USER,), BOUNCE_USER)
    assert envelope.received_at == rig.clock.now
    assert (envelope.smtputf8, envelope.body) == (False, "7BIT")
    message = rig.queue.message(queue_id)
    assert envelope.size == len(message)
    assert b"DKIM-Signature" not in message


def test_the_notice_parses_and_passes_the_submission_header_rules(rig: Rig) -> None:
    queue_id = rig.send(app_password="phone")
    assert queue_id is not None
    message = rig.queue.message(queue_id)
    parsed = BytesParser(policy=policy.default).parsebytes(message)
    assert list(parsed.keys()) == HEADER_NAMES
    assert parsed["From"].addresses[0].addr_spec == f"MAILER-DAEMON@{HOST}"
    assert parsed["To"].addresses[0].addr_spec == USER
    assert parsed["Subject"] == SUBJECT
    assert parsed["Message-ID"] == f"<{queue_id}@{HOST}>"
    assert parsed["Date"].datetime.timestamp() == rig.clock.now
    assert parsed.get_content_type() == "text/plain"
    assert parsed.get_content_charset() == "utf-8"
    assert parsed["Content-Transfer-Encoding"] == "7bit"
    assert not parsed.defects
    summary = summarize(message, smtputf8=False)
    assert [str(a) for a in summary.from_] == [f"MAILER-DAEMON@{HOST}"]
    assert summary.has_message_id
    assert summary.has_date
    assert summary.header_end == message.index(b"\r\n\r\n") + 2


def test_the_notice_says_what_happened_and_what_to_do(rig: Rig) -> None:
    queue_id = rig.send(app_password="phone")
    assert queue_id is not None
    message = rig.queue.message(queue_id)
    text = message.partition(b"\r\n\r\n")[2].decode("ascii")
    flat = " ".join(text.split())
    assert f"your mail account {USER} on {HOST}" in flat
    assert "When: 2027-01-15 08:00:00 UTC" in flat
    assert "Network: 192.0.2.0/24" in flat
    assert "Client address: 192.0.2.7" in flat
    assert "Client name: laptop.example.net" in flat
    assert "TLS: TLSv1.3" in flat
    assert "App password: phone" in flat
    assert f"sendgate user passwd {USER}" in flat
    assert f"sendgate user app-password remove {USER} phone" in flat
    assert "contact your administrator" in flat
    assert all(len(line) <= 78 for line in body_lines(message))
    assert message.isascii()


def test_without_an_app_password_or_client_name_the_notice_says_so(rig: Rig) -> None:
    queue_id = rig.send(client_name=None)
    assert queue_id is not None
    flat = " ".join(rig.queue.message(queue_id).decode("ascii").split())
    assert "App password:" not in flat
    assert "Client name: (none given)" in flat
    assert "sendgate user app-password remove USER LABEL" in flat


def test_no_tls_is_shown_as_not_encrypted() -> None:
    login = SignIn(USER, "192.0.2.0/24", "192.0.2.7", "pc", None, None, 1_800_000_000.0)
    flat = " ".join(build_notice(login, hostname=HOST, queue_id=QUEUE_ID).decode().split())
    assert "TLS: none (not encrypted)" in flat


def test_a_sent_notice_is_logged(rig: Rig) -> None:
    queue_id = rig.send()
    assert rig.log_lines() == [
        f"ts=2027-01-15T08:00:00.000Z level=info event=sign_in_notice user={USER} "
        f"network=192.0.2.0/24 queue_id={queue_id}"
    ]


def test_notices_are_limited_per_account_per_day(rig: Rig) -> None:
    sent = [rig.send() for _ in range(3)]
    assert None not in sent
    assert rig.send() is None
    assert len(rig.queue.ids()) == 3
    assert rig.log_lines()[-1].endswith(
        f"event=sign_in_notice_skipped user={USER} network=192.0.2.0/24 reason=limit"
    )
    # Another account has its own budget.
    assert rig.send(user("bob@example.org")) is not None
    # The budget refills continuously: one notice every day/3.
    rig.clock.advance(86400 / 3 - 1)
    assert rig.send() is None
    rig.clock.advance(1)
    assert rig.send() is not None
    assert rig.send() is None


def test_the_limit_key_ignores_the_case_of_the_name(rig: Rig) -> None:
    for _ in range(3):
        assert rig.send() is not None
    assert rig.send(user(USER.upper())) is None


@pytest.mark.parametrize(
    ("enabled", "setting", "sent"),
    [
        (True, None, True),
        (True, True, True),
        (True, False, False),
        (False, None, False),
        (False, True, False),
        (False, False, False),
    ],
)
def test_notices_follow_the_global_and_the_account_switch(
    tmp_path: Path, enabled: bool, setting: bool | None, sent: bool
) -> None:
    rig = make_rig(tmp_path, enabled=enabled)
    queue_id = rig.send(user(notice=setting))
    assert (queue_id is not None) == sent
    assert len(rig.queue.ids()) == int(sent)
    assert len(rig.log_lines()) == int(sent)
    # A notice that was not wanted spends none of the budget.
    assert rig.limits.take(f"notice:{USER}", 5, 86400).remaining == (3 if sent else 4)
    rig.limits.close()


def test_a_notice_is_signed_for_the_host_name(tmp_path: Path) -> None:
    key_dir = tmp_path / "dkim"
    generate_key(key_dir, HOST, "sg1", "rsa")
    [key] = load_keys(key_dir)
    rig = Rig(tmp_path, SignInNoticeConfig(), DkimSigner([key]))
    queue_id = rig.send()
    assert queue_id is not None
    stored = rig.queue.message(queue_id)
    assert stored.startswith(b"DKIM-Signature:")
    assert b"d=mail.example.org" in stored.partition(b"\r\n\r\n")[0]
    published = {b"sg1._domainkey.mail.example.org.": key.public_record.encode()}
    assert dkim.verify(stored, dnsfunc=lambda name, timeout=5: published.get(name))
    rig.limits.close()


def test_a_key_for_another_domain_leaves_the_notice_unsigned(tmp_path: Path) -> None:
    key_dir = tmp_path / "dkim"
    generate_key(key_dir, "example.net", "sg1", "rsa")
    rig = Rig(tmp_path, SignInNoticeConfig(), DkimSigner(load_keys(key_dir)))
    queue_id = rig.send()
    assert queue_id is not None
    assert rig.queue.message(queue_id).startswith(b"From:")
    rig.limits.close()


def test_a_notice_the_queue_refuses_is_logged_and_not_an_error(rig: Rig, tmp_path: Path) -> None:
    (tmp_path / "spool" / "tmp").rename(tmp_path / "aside")
    (tmp_path / "spool" / "tmp").write_bytes(b"")
    assert rig.send() is None
    assert rig.queue.ids() == []
    [line] = rig.log_lines()
    assert "level=error event=sign_in_notice_error" in line
    assert f"user={USER} network=192.0.2.0/24 error=" in line


def test_a_non_ascii_account_gets_an_smtputf8_notice(rig: Rig) -> None:
    name = "jürgen@example.org"
    queue_id = rig.send(user(name))
    assert queue_id is not None
    envelope = rig.queue.envelope(queue_id)
    assert (envelope.recipients, envelope.smtputf8, envelope.body) == ((name,), True, "8BITMIME")
    message = rig.queue.message(queue_id)
    summary = summarize(message, smtputf8=True)
    assert summary.has_message_id
    assert summary.has_date
    # SMTPUTF8 headers are raw UTF-8, which only the str parser decodes.
    parsed = Parser(policy=policy.default).parsestr(message.decode("utf-8"))
    assert parsed["Content-Transfer-Encoding"] == "8bit"
    assert parsed["To"].addresses[0].addr_spec == name
    assert all(len(line) <= 78 for line in body_lines(message))


def test_hostile_values_are_escaped_and_cut() -> None:
    assert shown("evil\r\nBcc: x@y") == "evil\\r\\nBcc: x@y"
    assert shown("caf\u00e9\u202e") == "caf\\x{E9}\\u202e"
    assert len(shown("a" * 1000)) == 255
    assert shown("a" * 1000).endswith("...")


ANY_TEXT = st.text(st.characters(codec="utf-8"), max_size=600) | st.text("\r\n :ab<>=", max_size=80)


@settings(deadline=None, max_examples=150)
@given(name=ANY_TEXT, label=ANY_TEXT, tls=ANY_TEXT, address=ANY_TEXT)
def test_no_client_value_can_change_the_header_or_the_line_rules(
    name: str, label: str, tls: str, address: str
) -> None:
    login = SignIn(USER, "192.0.2.0/24", address, name, tls, label, 1_800_000_000.0)
    message = build_notice(login, hostname=HOST, queue_id=QUEUE_ID)
    assert message.isascii()
    parsed = BytesParser(policy=policy.default).parsebytes(message)
    assert list(parsed.keys()) == HEADER_NAMES
    assert parsed["To"].addresses[0].addr_spec == USER
    summary = summarize(message, smtputf8=False)
    assert summary.header_end == message.index(b"\r\n\r\n") + 2
    body = message[summary.header_end + 2 :]
    assert body.endswith(b"\r\n")
    assert body.count(b"\r") == body.count(b"\n") == body.count(b"\r\n")
    assert all(len(line) <= 78 for line in body.split(b"\r\n"))

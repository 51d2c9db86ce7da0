"""Tests for sendgate.submission: the MSA rules, driven through a real Session with real parts.

A real SQLite user store, argon2 (cheap parameters), Authenticator, thread pool, spool and event
log; bytes go into an `smtp.session.Session` and each decision it raises is answered by the
connection handler under test, exactly as the I/O shell does.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import dkim
import pytest
from argon2 import PasswordHasher
from tests.support.session import TLS, b64, feed_async, plain, start

import sendgate
from sendgate.dkim.keys import generate_key, load_keys
from sendgate.dkim.signer import DkimSigner
from sendgate.log import EventLog
from sendgate.policy.auth import Authenticator
from sendgate.smtp import replies
from sendgate.smtp.data import dot_stuff
from sendgate.smtp.events import Event, StartTls
from sendgate.smtp.replies import Reply
from sendgate.smtp.session import Session, SessionSettings
from sendgate.store.envelope import Envelope
from sendgate.store.local import streamfile
from sendgate.store.local.queue import LocalQueueStore
from sendgate.store.local.users import LocalUserStore
from sendgate.submission import Submission

HOSTNAME = "mx.example.test"
NOW = 1_714_564_800.0
NOW_TEXT = "Wed, 01 May 2024 12:00:00 +0000"
CLIENT_IP = "192.0.2.1"
ALICE = "alice@example.org"
ALICE_PASSWORD = "alice-Pa55word-q7x3"
WRONG_PASSWORD = "guess-Pa55word-z9k1"
ADMIN = "admin@example.com"  # owns the whole domain example.org
ADMIN_PASSWORD = "admin-Pa55word-m4v8"
BODY_MARKER = b"BODY-MARKER-5e0c7a19"
BODY = b"Hello Bob,\r\n" + BODY_MARKER + b"\r\n.leading dot\r\n"
HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
_LOG_TOKEN = re.compile(r'([a-z_]+)=("(?:[^"\\]|\\.)*"|[^ "]+)(?: |$)')


@dataclass
class Backend:
    store: LocalUserStore
    queue: LocalQueueStore
    submission: Submission
    log: io.StringIO

    def events(self, name: str) -> list[dict[str, str]]:
        """The logged events called `name`, as field -> text."""
        found = []
        for line in self.log.getvalue().splitlines():
            fields = {key: _log_value(raw) for key, raw in _LOG_TOKEN.findall(line)}
            if fields.get("event") == name:
                found.append(fields)
        return found


def _log_value(raw: str) -> str:
    text: str = json.loads(raw) if raw.startswith('"') else raw
    return text


def build_backend(
    store: LocalUserStore,
    queue: LocalQueueStore,
    executor: Executor,
    *,
    received_client_ip: bool = False,
) -> Backend:
    stream = io.StringIO()
    submission = Submission(
        hostname=HOSTNAME,
        authenticator=Authenticator(store, HASHER, executor, 60.0, lambda: NOW),
        queue=queue,
        executor=executor,
        log=EventLog(stream, clock=lambda: NOW),
        clock=lambda: NOW,
        received_client_ip=received_client_ip,
    )
    return Backend(store, queue, submission, stream)


def create_store(path: Path) -> LocalUserStore:
    store = LocalUserStore(path)
    store.add_user(ALICE, HASHER.hash(ALICE_PASSWORD))
    store.add_address(ALICE, "alias@example.net")
    store.add_user(ADMIN, HASHER.hash(ADMIN_PASSWORD))
    store.add_address(ADMIN, "@example.org")
    return store


class Client:
    """One SMTP conversation with the handler under test (TLS already up, as on port 465)."""

    def __init__(
        self,
        backend: Backend,
        *,
        settings: SessionSettings | None = None,
        ehlo: str = "pc.local",
        spill: bool = False,
    ) -> None:
        self.handler = backend.submission.connection(CLIENT_IP, "c1")
        settings = settings or SessionSettings(hostname=HOSTNAME)
        if spill:  # large bodies streamed into the queue, as the I/O shell does
            self.session = Session(settings, TLS, open_sink=self.handler.open_body)
            self.session.data_to_send()
        else:
            self.session = start(settings, tls=True)
        assert self.say(f"EHLO {ehlo}").startswith("250 ")

    def _answer(self, event: Event) -> Reply | Awaitable[Reply]:
        return self.handler.handle(event, self.session)

    def send(self, data: bytes) -> list[str]:
        """Feed bytes; return the final line of every reply they caused."""
        return asyncio.run(feed_async(self.session, data, answer=self._answer)).finals

    def say(self, line: str) -> str:
        answers = self.send(line.encode() + b"\r\n")
        assert len(answers) == 1, answers
        return answers[0]

    def login(self, user: str, password: str, authzid: str = "") -> str:
        return self.say(f"AUTH PLAIN {plain(user, password, authzid)}")

    def submit(
        self,
        content: bytes,
        sender: str = ALICE,
        recipients: tuple[str, ...] = ("bob@example.net",),
        params: str = "",
    ) -> str:
        assert self.say(f"MAIL FROM:<{sender}>{params}").startswith("250 2.1.0")
        for recipient in recipients:
            assert self.say(f"RCPT TO:<{recipient}>").startswith("250 2.1.5")
        assert self.say("DATA").startswith("354")
        answers = self.send(dot_stuff(content) + b".\r\n")
        assert len(answers) == 1, answers
        return answers[0]


def message(
    from_: str = ALICE, *, extra: bytes = b"", message_id: bool = True, date: bool = True
) -> bytes:
    header = f"From: Alice <{from_}>\r\nTo: bob@example.net\r\nSubject: test\r\n".encode()
    if message_id:
        header += b"Message-ID: <m1@pc.local>\r\n"
    if date:
        header += b"Date: Tue, 30 Apr 2024 10:00:00 +0200\r\n"
    return header + extra + b"\r\n" + BODY


def code(reply: str) -> str:
    return reply[:9]


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        yield pool


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LocalUserStore]:
    users = create_store(tmp_path / "users.db")
    yield users
    users.close()


@pytest.fixture
def backend(tmp_path: Path, store: LocalUserStore, executor: ThreadPoolExecutor) -> Backend:
    return build_backend(store, LocalQueueStore(tmp_path / "spool"), executor)


@pytest.fixture
def alice(backend: Backend) -> Client:
    client = Client(backend)
    assert client.login(ALICE, ALICE_PASSWORD).startswith("235 2.7.0")
    return client


# --- AUTH ------------------------------------------------------------------------------------


def test_auth_ok(backend: Backend) -> None:
    client = Client(backend)
    assert client.login("Alice@Example.org", ALICE_PASSWORD) == (
        "235 2.7.0 Authentication successful"
    )
    assert client.handler.user is not None
    assert client.handler.user.username == ALICE
    [event] = backend.events("auth_ok")
    assert event["user"] == ALICE
    assert event["client"] == CLIENT_IP
    assert event["mechanism"] == "PLAIN"
    assert event["level"] == "info"


def test_auth_with_login_mechanism(backend: Backend) -> None:
    client = Client(backend)
    assert client.say("AUTH LOGIN").startswith("334 ")
    assert client.say(b64(ALICE)).startswith("334 ")
    assert client.say(b64(ALICE_PASSWORD)).startswith("235 2.7.0")
    assert backend.events("auth_ok")[0]["mechanism"] == "LOGIN"


@pytest.mark.parametrize("user", [ALICE, "nobody@example.org"], ids=["wrong-password", "unknown"])
def test_auth_failure_is_535_and_logged(backend: Backend, user: str) -> None:
    client = Client(backend)
    assert client.login(user, WRONG_PASSWORD) == "535 5.7.8 Authentication credentials invalid"
    [event] = backend.events("auth_fail")
    assert event["user"] == user
    assert event["client"] == CLIENT_IP
    assert event["level"] == "warning"
    assert client.handler.user is None
    assert backend.events("auth_ok") == []
    assert client.say(f"MAIL FROM:<{ALICE}>").startswith("530 5.7.0")


def test_authzid_of_someone_else_is_refused_like_a_bad_password(backend: Backend) -> None:
    client = Client(backend)
    assert code(client.login(ALICE, ALICE_PASSWORD, authzid=ADMIN)) == "535 5.7.8"
    assert client.handler.user is None
    assert backend.events("auth_fail")[0]["user"] == ALICE


def test_authzid_naming_oneself_is_fine(backend: Backend) -> None:
    client = Client(backend)
    assert code(client.login(ALICE, ALICE_PASSWORD, authzid="ALICE@example.org")) == "235 2.7.0"


def test_store_failure_is_a_temporary_failure(backend: Backend, store: LocalUserStore) -> None:
    client = Client(backend)
    store.close()
    assert client.login(ALICE, ALICE_PASSWORD) == "454 4.7.0 Temporary authentication failure"
    [event] = backend.events("auth_error")
    assert event["error"] == "StoreError"
    assert event["user"] == ALICE
    assert event["level"] == "error"
    assert client.handler.user is None


# --- MAIL FROM -------------------------------------------------------------------------------


@pytest.mark.parametrize("sender", [ALICE, "ALICE@EXAMPLE.ORG", "alias@example.net"])
def test_owned_envelope_sender_is_accepted(alice: Client, sender: str) -> None:
    assert alice.say(f"MAIL FROM:<{sender}>") == "250 2.1.0 Sender OK"


@pytest.mark.parametrize(
    "sender", ["bob@example.org", "alice@example.net", "alice@sub.example.org"]
)
def test_foreign_envelope_sender_is_refused(backend: Backend, alice: Client, sender: str) -> None:
    assert alice.say(f"MAIL FROM:<{sender}>") == (
        "553 5.7.1 Sender address not owned by authenticated user"
    )
    [event] = backend.events("rejected")
    assert event["reason"] == "sender_not_owned"
    assert event["sender"] == sender
    assert event["user"] == ALICE
    assert event["code"] == "553 5.7.1"


def test_null_sender_is_refused_for_a_login(backend: Backend, alice: Client) -> None:
    assert code(alice.say("MAIL FROM:<>")) == "553 5.7.1"
    assert backend.events("rejected")[0]["reason"] == "null_sender"


def test_domain_entry_grants_exactly_that_domain(backend: Backend) -> None:
    admin = Client(backend)
    assert code(admin.login(ADMIN, ADMIN_PASSWORD)) == "235 2.7.0"
    assert code(admin.say("MAIL FROM:<anyone@example.org>")) == "250 2.1.0"
    assert code(admin.say("RSET")) == "250 2.0.0"
    assert code(admin.say("MAIL FROM:<anyone@Example.ORG>")) == "250 2.1.0"
    assert code(admin.say("RSET")) == "250 2.0.0"
    assert code(admin.say("MAIL FROM:<anyone@sub.example.org>")) == "553 5.7.1"
    assert code(admin.say("MAIL FROM:<anyone@example.org.evil.test>")) == "553 5.7.1"
    assert code(admin.say(f"MAIL FROM:<{ADMIN}>")) == "250 2.1.0"


def test_domain_owner_may_use_it_in_the_header_too(backend: Backend) -> None:
    admin = Client(backend)
    assert code(admin.login(ADMIN, ADMIN_PASSWORD)) == "235 2.7.0"
    reply = admin.submit(message("news@example.org"), sender="news@example.org")
    assert reply.startswith("250 2.0.0 queued as ")


# --- header checks ---------------------------------------------------------------------------


def test_foreign_header_from_is_refused(backend: Backend, alice: Client) -> None:
    assert alice.submit(message("ceo@example.com")) == (
        "550 5.7.1 From header address not owned by authenticated user"
    )
    [event] = backend.events("rejected")
    assert event["reason"] == "from_not_owned"
    assert event["header_from"] == "ceo@example.com"
    assert backend.queue.ids() == []


def test_one_foreign_mailbox_in_from_is_enough_to_refuse(alice: Client) -> None:
    content = message(ALICE).replace(
        b"From: Alice <alice@example.org>", b"From: alice@example.org, ceo@example.com"
    )
    assert code(alice.submit(content)) == "550 5.7.1"


def test_foreign_sender_header_is_refused(backend: Backend, alice: Client) -> None:
    reply = alice.submit(message(extra=b"Sender: ceo@example.com\r\n"))
    assert reply == "550 5.7.1 Sender header address not owned by authenticated user"
    assert backend.events("rejected")[0]["reason"] == "sender_header_not_owned"


def test_owned_sender_header_does_not_excuse_a_foreign_from(alice: Client) -> None:
    content = message("ceo@example.com", extra=b"Sender: alice@example.org\r\n")
    assert code(alice.submit(content)) == "550 5.7.1"


def test_owned_from_and_sender_are_accepted(alice: Client) -> None:
    content = message("alias@example.net", extra=b"Sender: alice@example.org\r\n")
    assert alice.submit(content).startswith("250 2.0.0 queued as ")


def test_missing_from_is_refused(backend: Backend, alice: Client) -> None:
    content = b"To: bob@example.net\r\nSubject: anonymous\r\n\r\n" + BODY
    assert alice.submit(content) == "550 5.6.0 Message has no valid From header"
    assert backend.events("rejected")[0]["reason"] == "missing_from"


@pytest.mark.parametrize(
    ("header", "detail"),
    [
        (b"From: alice@example.org\r\nNot a header line\r\n", "malformed header line"),
        (b" folded first\r\nFrom: alice@example.org\r\n", "continuation line before any"),
        (b"From: alice@example.org\r\nFrom: ceo@example.com\r\n", "more than one From field"),
        (b"From: group: alice@example.org;\r\n", "unusable From field"),
        (b"From: Al\xff <alice@example.org>\r\n", "unusable From field"),
    ],
)
def test_bad_header_is_refused(backend: Backend, alice: Client, header: bytes, detail: str) -> None:
    assert alice.submit(header + b"\r\n" + BODY) == "550 5.6.0 Message headers are malformed"
    [event] = backend.events("rejected")
    assert event["reason"] == "bad_header"
    assert detail in event["detail"]
    assert backend.queue.ids() == []


def test_utf8_from_address_needs_smtputf8(alice: Client) -> None:
    content = "From: Älice <älice@example.org>\r\n\r\nbody\r\n".encode()
    assert code(alice.submit(content)) == "550 5.6.0"  # unusable without SMTPUTF8
    assert code(alice.submit(content, params=" SMTPUTF8")) == "550 5.7.1"  # usable, not hers


def test_session_goes_on_after_a_refused_message(backend: Backend, alice: Client) -> None:
    assert code(alice.submit(message("ceo@example.com"))) == "550 5.7.1"
    assert alice.submit(message()).startswith("250 2.0.0 queued as ")
    assert len(backend.queue.ids()) == 1


def test_unterminated_last_header_line_cannot_smuggle_a_from(
    backend: Backend, alice: Client
) -> None:
    content = message().removesuffix(b"\r\n" + BODY) + b"From: ceo@example.com"
    assert alice.say(f"MAIL FROM:<{ALICE}>").startswith("250")
    assert alice.say("RCPT TO:<bob@example.net>").startswith("250")
    answers = alice.send(f"BDAT {len(content)} LAST\r\n".encode() + content)
    assert [code(answer) for answer in answers] == ["550 5.6.0"]
    assert backend.queue.ids() == []


# --- the stored message ----------------------------------------------------------------------


def test_stored_message_is_received_plus_original(backend: Backend, alice: Client) -> None:
    content = message()
    reply = alice.submit(content)
    queue_id = reply.removeprefix("250 2.0.0 queued as ")
    assert backend.queue.ids() == [queue_id]
    assert backend.queue.message(queue_id) == (
        b"Received: from pc.local\r\n"
        b"\tby mx.example.test (sendgate) with ESMTPSA id " + queue_id.encode() + b"\r\n"
        b"\t(using TLSv1.3 with cipher TLS_AES_128_GCM_SHA256 (128 bits));\r\n"
        b"\t" + NOW_TEXT.encode() + b"\r\n" + content
    )


def test_missing_message_id_and_date_are_added(backend: Backend, alice: Client) -> None:
    content = message(message_id=False, date=False)
    queue_id = alice.submit(content).removeprefix("250 2.0.0 queued as ")
    stored = backend.queue.message(queue_id)
    received, rest = stored.split(b"\r\n\t" + NOW_TEXT.encode() + b"\r\n", 1)
    assert received.startswith(b"Received: from pc.local\r\n")
    header, body = content.split(b"\r\n\r\n", 1)
    added = re.fullmatch(
        re.escape(header + b"\r\n")
        + rb"Message-ID: <"
        + queue_id.encode()
        + rb"\.[0-9a-f]{12}@mx\.example\.test>\r\nDate: "
        + re.escape(NOW_TEXT.encode())
        + rb"\r\n\r\n"
        + re.escape(body),
        rest,
    )
    assert added is not None, rest


def test_hostile_ehlo_name_cannot_add_a_header(backend: Backend) -> None:
    client = Client(backend, ehlo="x;Bcc:(victim@example.com)")
    assert code(client.login(ALICE, ALICE_PASSWORD)) == "235 2.7.0"
    queue_id = client.submit(message()).removeprefix("250 2.0.0 queued as ")
    stored = backend.queue.message(queue_id)
    assert stored.startswith(b"Received: from x_Bcc:_victim_example.com_\r\n\tby ")
    assert b"\r\nBcc" not in stored


def test_client_ip_is_in_received_only_when_configured(
    tmp_path: Path, store: LocalUserStore, executor: ThreadPoolExecutor, backend: Backend
) -> None:
    with_ip = build_backend(
        store, LocalQueueStore(tmp_path / "spool2"), executor, received_client_ip=True
    )
    for current, shown in ((with_ip, True), (backend, False)):
        client = Client(current)
        assert code(client.login(ALICE, ALICE_PASSWORD)) == "235 2.7.0"
        queue_id = client.submit(message()).removeprefix("250 2.0.0 queued as ")
        first_line = current.queue.message(queue_id).split(b"\r\n", 1)[0]
        assert (first_line == b"Received: from pc.local ([192.0.2.1])") is shown
        assert (CLIENT_IP.encode() in current.queue.message(queue_id)) is shown


def test_envelope_records_the_transaction(backend: Backend, alice: Client) -> None:
    reply = alice.submit(
        message("alias@example.net"),
        sender="alias@example.net",
        recipients=("bob@example.net", "carol@example.com"),
        params=" BODY=8BITMIME SMTPUTF8",
    )
    queue_id = reply.removeprefix("250 2.0.0 queued as ")
    stored = backend.queue.message(queue_id)
    assert stored.startswith(b"Received: from pc.local\r\n")
    assert b" with UTF8SMTPSA id " in stored
    assert backend.queue.envelope(queue_id) == Envelope(
        queue_id=queue_id,
        sender="alias@example.net",
        recipients=("bob@example.net", "carol@example.com"),
        user=ALICE,
        received_at=NOW,
        size=len(stored),
        smtputf8=True,
        body="8BITMIME",
    )


def test_message_without_login_is_queued(backend: Backend) -> None:
    client = Client(backend, settings=SessionSettings(hostname=HOSTNAME, auth_required=False))
    assert client.say("MAIL FROM:<>") == "250 2.1.0 Sender OK"
    assert client.say("RCPT TO:<bob@example.net>").startswith("250")
    assert client.say("DATA").startswith("354")
    answers = client.send(dot_stuff(message("anyone@example.com")) + b".\r\n")
    assert answers[0].startswith("250 2.0.0 queued as ")


def test_starttls_is_left_to_the_io_shell(alice: Client) -> None:
    assert alice.handler.handle(StartTls(), alice.session) == replies.TLS_NOT_AVAILABLE


# --- spool failures --------------------------------------------------------------------------


def test_spool_io_error_is_451(backend: Backend, alice: Client, tmp_path: Path) -> None:
    queue = tmp_path / "spool" / "queue"
    queue.rmdir()
    queue.write_bytes(b"")  # now nothing can be written under queue/
    reply = alice.submit(message())
    assert reply == "451 4.3.0 Local error, message not accepted, try again later"
    [event] = backend.events("spool_error")
    assert "Not a directory" in event["error"]
    assert event["level"] == "error"
    assert backend.events("accepted") == []


# Runs inside a private mount namespace with a 64 KiB tmpfs at argv[1]: one message too big for
# it, then a small one (the failed put must have given its space back).
_FULL_DISK_CHILD = textwrap.dedent(
    """
    import json, runpy, sys
    namespace = runpy.run_path(sys.argv[1])
    print(json.dumps(namespace["submit_on_small_disk"](sys.argv[2], sys.argv[3])))
    """
)


def submit_on_small_disk(store_path: str, spool_root: str) -> dict[str, object]:
    """Child side of the full-disk test: a big and a small message through a spool on a tmpfs."""
    store = LocalUserStore(Path(store_path))
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            backend = build_backend(store, LocalQueueStore(Path(spool_root)), pool)
            client = Client(backend)
            assert client.login(ALICE, ALICE_PASSWORD).startswith("235 ")
            big = message().replace(b"\r\n\r\n", b"\r\n\r\n" + (b"z" * 998 + b"\r\n") * 200, 1)
            replies_seen = [client.submit(big), client.submit(message())]
            return {"replies": replies_seen, "log": backend.log.getvalue()}
    finally:
        store.close()


def test_full_disk_is_452(tmp_path: Path, store: LocalUserStore) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) for a private tiny file system")
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    mount = 'mount -t tmpfs -o size=64k tmpfs "$1"'
    probe = subprocess.run(
        ["unshare", "--mount", "sh", "-c", mount, "sh", str(mount_point)],
        capture_output=True,
        check=False,
        timeout=60,
    )
    if probe.returncode != 0:
        pytest.skip("needs permission to mount a tmpfs in a private mount namespace")
    script = f'{mount} && exec "$2" -c "$3" "$4" "$5" "$1/spool"'
    argv = ["sh", "-c", script, "sh", str(mount_point), sys.executable, _FULL_DISK_CHILD]
    argv += [__file__, str(tmp_path / "users.db")]
    src = str(Path(sendgate.__file__).parents[1])
    result = subprocess.run(
        ["unshare", "--mount", *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, "PYTHONPATH": src},
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    first, second = report["replies"]
    assert first == "452 4.3.1 Insufficient system storage, try again later"
    assert second.startswith("250 2.0.0 queued as ")
    assert "No space left on device" in report["log"]


# --- what the log says and never says --------------------------------------------------------


def test_log_records_outcomes_without_secrets_or_body(backend: Backend) -> None:
    client = Client(backend)
    assert code(client.login(ALICE, WRONG_PASSWORD)) == "535 5.7.8"
    assert code(client.login(ALICE, ALICE_PASSWORD)) == "235 2.7.0"
    queue_id = client.submit(message()).removeprefix("250 2.0.0 queued as ")
    assert code(client.submit(message("ceo@example.com"))) == "550 5.7.1"
    assert code(client.say("MAIL FROM:<ceo@example.com>")) == "553 5.7.1"

    [accepted] = backend.events("accepted")
    assert accepted["queue_id"] == queue_id
    assert accepted["user"] == ALICE
    assert accepted["client"] == CLIENT_IP
    assert accepted["recipients"] == "1"
    assert accepted["size"] == str(len(backend.queue.message(queue_id)))
    assert [event["reason"] for event in backend.events("rejected")] == [
        "from_not_owned",
        "sender_not_owned",
    ]
    [failed] = backend.events("auth_fail")
    assert (failed["user"], failed["client"]) == (ALICE, CLIENT_IP)

    log = backend.log.getvalue()
    assert ALICE_PASSWORD not in log
    assert WRONG_PASSWORD not in log
    assert BODY_MARKER.decode() not in log
    assert "Subject" not in log
    assert all(line.startswith("ts=") for line in log.splitlines())


# --- DKIM ------------------------------------------------------------------------------------


def _signed_backend(tmp_path: Path, store: LocalUserStore, executor: Executor) -> Backend:
    generate_key(tmp_path / "dkim", "example.org", "sel1")
    backend = build_backend(store, LocalQueueStore(tmp_path / "spool"), executor)
    backend.submission.queueing.signer = DkimSigner(load_keys(tmp_path / "dkim"))
    return backend


def test_message_is_dkim_signed_for_the_header_from_domain_before_spooling(
    tmp_path: Path, store: LocalUserStore, executor: ThreadPoolExecutor
) -> None:
    backend = _signed_backend(tmp_path, store, executor)
    client = Client(backend)
    assert client.login(ALICE, ALICE_PASSWORD).startswith("235")
    reply = client.submit(message())
    assert reply.startswith("250 2.0.0 queued as ")
    queue_id = reply.rsplit(" ", 1)[1]
    stored = backend.queue.message(queue_id)
    assert stored.startswith(b"DKIM-Signature: ")
    assert stored.endswith(b"\r\n\r\n" + BODY)
    assert backend.queue.envelope(queue_id).size == len(stored)
    [key] = load_keys(tmp_path / "dkim")
    record = key.public_record.encode()
    assert dkim.verify(stored, dnsfunc=lambda name, timeout=5: record)
    assert b" d=example.org;" in stored.split(b"\r\n\r\n", 1)[0].replace(b"\r\n", b"")
    [accepted] = backend.events("accepted")
    assert accepted["size"] == str(len(stored))


def test_message_from_a_domain_without_a_key_is_not_signed(
    tmp_path: Path, store: LocalUserStore, executor: ThreadPoolExecutor
) -> None:
    backend = _signed_backend(tmp_path, store, executor)
    client = Client(backend)
    assert client.login(ALICE, ALICE_PASSWORD).startswith("235")
    reply = client.submit(message("alias@example.net"), sender="alias@example.net")
    queue_id = reply.rsplit(" ", 1)[1]
    assert b"DKIM-Signature" not in backend.queue.message(queue_id)


# --- large messages, streamed into the queue ---------------------------------------------------

BIG_BODY = b"".join(b"line %06d of a large body, with  two spaces \r\n" % n for n in range(20_000))


def test_a_large_message_is_streamed_fixed_up_and_signed(
    tmp_path: Path, store: LocalUserStore, executor: ThreadPoolExecutor
) -> None:
    backend = _signed_backend(tmp_path, store, executor)
    client = Client(backend, spill=True)
    assert client.login(ALICE, ALICE_PASSWORD).startswith("235")
    sent = message(message_id=False) + BIG_BODY
    reply = client.submit(sent)
    assert reply.startswith("250 2.0.0 queued as ")
    queue_id = reply.rsplit(" ", 1)[1]
    stored = backend.queue.message(queue_id)
    queued = (tmp_path / "spool" / "queue" / queue_id).read_bytes()
    assert queued.startswith(streamfile.MAGIC + BODY + BIG_BODY[:1000])  # the body went first
    assert stored.endswith(b"\r\n\r\n" + BODY + BIG_BODY)
    head = stored.split(b"\r\n\r\n", 1)[0]
    assert head.startswith(b"DKIM-Signature: ")
    assert b"\r\nReceived: " in head
    assert b"\r\nMessage-ID: <" in head  # added to the header section kept in memory
    assert backend.queue.envelope(queue_id).size == len(stored)
    [key] = load_keys(tmp_path / "dkim")
    record = key.public_record.encode()
    assert dkim.verify(stored, dnsfunc=lambda name, timeout=5: record)
    [accepted] = backend.events("accepted")
    assert accepted["size"] == str(len(stored))


def test_a_refused_large_message_leaves_no_file_behind(
    tmp_path: Path, backend: Backend, store: LocalUserStore
) -> None:
    client = Client(backend, spill=True)
    assert client.login(ALICE, ALICE_PASSWORD).startswith("235")
    client.submit(message() + b"small\r\n")  # makes the stock of fresh files
    reply = client.submit(message("mallory@example.com") + BIG_BODY)
    assert code(reply) == "550 5.7.1"
    assert len(backend.queue.ids()) == 1  # the small one
    # The body was written to a fresh file, which is gone: what is left is the empty stock
    # and, until its link is synced, the small message's committed file (linked into queue/).
    left = [p for p in (tmp_path / "spool" / "fresh").iterdir() if p.stat().st_size]
    assert all(p.stat().st_nlink == 2 for p in left)

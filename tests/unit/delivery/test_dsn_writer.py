"""Tests for sendgate.delivery.bounce.DsnWriter: a DSN is built, signed and queued like mail."""

from __future__ import annotations

from pathlib import Path

import dkim
import pytest

from sendgate.delivery.bounce import BOUNCE_USER, DsnWriter, RecipientNotice
from sendgate.dkim.keys import generate_key, load_keys
from sendgate.dkim.signer import DkimSigner
from sendgate.errors import SpoolError
from sendgate.store.envelope import Envelope
from sendgate.store.local.queue import LocalQueueStore

HOST = "mail.example.org"
NOW = 1_800_000_000.0
ORIGINAL = b"From: <alice@example.org>\r\nSubject: hi\r\n\r\nbody\r\n"
NOTICE = RecipientNotice("bob@example.net", "failed", "5.1.1", "mx.example.net", "550 no", NOW)


def original(sender: str = "alice@example.org") -> Envelope:
    return Envelope("0ABCDEFGHJKMNPQRST", sender, ("bob@example.net",), "alice", NOW - 60, 50)


@pytest.fixture
def queue(tmp_path: Path) -> LocalQueueStore:
    return LocalQueueStore(tmp_path / "spool", clock=lambda: NOW)


def test_a_dsn_goes_to_the_sender_from_the_null_sender(queue: LocalQueueStore) -> None:
    queued = DsnWriter(queue, HOST, None).write(original(), [NOTICE], ORIGINAL, NOW, None)
    envelope = queued.envelope
    assert queue.ids() == [envelope.queue_id]
    assert queue.envelope(envelope.queue_id) == envelope
    assert (envelope.sender, envelope.recipients, envelope.user) == (
        "",
        ("alice@example.org",),
        BOUNCE_USER,
    )
    assert envelope.received_at == NOW
    stored = queue.message(envelope.queue_id)
    assert envelope.size == len(stored)
    assert f"Message-ID: <{envelope.queue_id}@{HOST}>".encode() in stored
    assert b"Final-Recipient: rfc822; bob@example.net" in stored
    assert queued.signing_problem is None
    assert b"DKIM-Signature" not in stored


def test_a_dsn_is_signed_for_the_reporting_host(queue: LocalQueueStore, tmp_path: Path) -> None:
    key_dir = tmp_path / "dkim"
    generate_key(key_dir, HOST, "sg1", "rsa")
    [key] = load_keys(key_dir)
    queued = DsnWriter(queue, HOST, DkimSigner([key])).write(
        original(), [NOTICE], ORIGINAL, NOW, None
    )
    stored = queue.message(queued.envelope.queue_id)
    assert stored.startswith(b"DKIM-Signature:")
    published = {b"sg1._domainkey.mail.example.org.": key.public_record.encode()}
    assert dkim.verify(stored, dnsfunc=lambda name, timeout=5: published.get(name))


def test_a_dsn_the_queue_refuses_is_an_error_for_the_caller(
    queue: LocalQueueStore, tmp_path: Path
) -> None:
    (tmp_path / "spool" / "tmp").rename(tmp_path / "aside")
    (tmp_path / "spool" / "tmp").write_bytes(b"")
    with pytest.raises(SpoolError):
        DsnWriter(queue, HOST, None).write(original(), [NOTICE], ORIGINAL, NOW, None)
    assert queue.ids() == []


def test_there_is_no_dsn_to_the_null_sender(queue: LocalQueueStore) -> None:
    with pytest.raises(ValueError, match="null sender"):
        DsnWriter(queue, HOST, None).write(original(""), [NOTICE], ORIGINAL, NOW, None)

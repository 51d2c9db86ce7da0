"""SIGKILL at random moments never loses or corrupts a message that got its 250.

Each iteration starts `sendgate serve` on the same data directory, lets client threads submit
messages (STARTTLS, AUTH, several per connection), kills the whole process group once a random
number of them got 250 (plus, sometimes, a random sliver of time: a deliberate race), then
checks the spool: every 250 is queued intact, every queued file is complete, and sweeping
leaves nothing behind. Every tenth iteration the sweep is left to the next server start, whose
`spool_swept` event must report what the test saw. Set SENDGATE_CRASH_SEED to replay a run.
"""

from __future__ import annotations

import os
import random
import re
import smtplib
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from tests.e2e.settings import UNLIMITED_SENDING

from sendgate.store.local.spool import Spool, whole_fresh_file

if TYPE_CHECKING:
    from tests.e2e.conftest import Instance, InstanceFactory, ServerFactory, ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ITERATIONS = 200  # SIGKILLs per run (the hardening issue asks for at least 200)
SWEEP_AT_START_EVERY = 10  # one iteration in ten leaves the sweep to the next server start
CLIENTS = 4
PER_CONNECTION = 5
MAX_KILL_AFTER = 20  # kill once this many (at most) messages got 250
ACCEPT_TIMEOUT = 30.0
_MESSAGE_ID = re.compile(rb"\r\nMessage-ID: <([^>]+)>\r\n")
_SWEPT = re.compile(
    r'event=spool_swept tmp_removed=(\d+) restored=(\d+) corrupt=("")? ?.*queued=(\d+)'
)


@dataclass
class Sent:
    """One message a client sent, and its queue id once the server answered 250."""

    message_id: str
    data: bytes
    recipients: tuple[str, ...]
    queue_id: str | None = None


class Load:
    """Client threads submitting messages until the server dies under them."""

    def __init__(self, running: ServerProcess, iteration: int, seed: int) -> None:
        self._running = running
        self._iteration = iteration
        self._seed = seed
        self._cond = threading.Condition()
        self.sent: dict[str, Sent] = {}
        self.accepted = 0
        self.unexpected: list[str] = []  # replies other than 250 before the kill
        self._alive = CLIENTS
        self._threads = [
            threading.Thread(target=self._client, args=(index,), name=f"crash-client-{index}")
            for index in range(CLIENTS)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self) -> None:
        for thread in self._threads:
            thread.join(ACCEPT_TIMEOUT)
            assert not thread.is_alive(), f"{thread.name} hangs after the kill"

    def wait_accepted(self, count: int) -> None:
        """Block until `count` messages got 250 (or every client has stopped)."""
        deadline = time.monotonic() + ACCEPT_TIMEOUT
        with self._cond:
            while self.accepted < count and self._alive and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())
            assert self.accepted >= count, (self.accepted, count, self.unexpected)

    def _compose(self, client: int, number: int, rng: random.Random) -> Sent:
        message_id = f"crash-{self._iteration}-{client}-{number}@example.test"
        recipients = tuple(
            f"r{client}-{number}-{index}@example.org" for index in range(rng.randint(1, 3))
        )
        # Sizes from a few hundred bytes to ~40 KB widen the window a kill can land in; one
        # message in ten is large (up to ~1 MB), its body streamed to the spool as it arrives.
        lines = rng.randint(1, 400) if rng.random() > 0.1 else rng.randint(3000, 12_000)
        body = b"".join(
            f"{message_id} line {line:05d} {'x' * 60}\r\n".encode() for line in range(lines)
        )
        header = (
            f"From: {self._running.instance.user}\r\nTo: {', '.join(recipients)}\r\n"
            f"Subject: crash test\r\nMessage-ID: <{message_id}>\r\n"
            f"Date: {format_datetime(datetime.now(UTC))}\r\n\r\n"
        )
        return Sent(message_id, header.encode() + body, recipients)

    def _client(self, index: int) -> None:
        rng = random.Random(self._seed * CLIENTS + index)
        number = 0
        try:
            while True:
                with self._running.smtp(timeout=ACCEPT_TIMEOUT) as client:
                    for _ in range(PER_CONNECTION):
                        sent = self._compose(index, number, rng)
                        number += 1
                        with self._cond:
                            self.sent[sent.message_id] = sent
                        self._submit(client, sent)
        except (OSError, smtplib.SMTPException):
            pass  # the server was killed: this client's work is over
        finally:
            with self._cond:
                self._alive -= 1
                self._cond.notify_all()

    def _submit(self, client: smtplib.SMTP, sent: Sent) -> None:
        replies = [client.mail(self._running.instance.user)]
        replies += [client.rcpt(rcpt) for rcpt in sent.recipients]
        replies.append(client.data(sent.data))
        with self._cond:
            for code, text in replies:
                if code != 250:
                    self.unexpected.append(f"{sent.message_id}: {code} {text!r}")
                    raise smtplib.SMTPException("unexpected reply")
            sent.queue_id = replies[-1][1].decode().rsplit(" ", 1)[-1]
            self.accepted += 1
            self._cond.notify_all()


def _check_queued(spool: Spool, queue_id: str, sent: Sent, user: str) -> None:
    """The queue file holds the Received field plus exactly the sent bytes, and its envelope."""
    envelope = spool.envelope(queue_id)
    stored = spool.message(queue_id)
    assert envelope.size == len(stored)
    assert (envelope.sender, envelope.user) == (user, user)
    assert envelope.recipients == sent.recipients
    assert stored.endswith(sent.data), f"{queue_id}: message is not complete"
    received = stored[: len(stored) - len(sent.data)]
    assert received.startswith(b"Received: ")
    assert f" id {queue_id}".encode() in received


def _check_spool(made: Instance, sent: dict[str, Sent], accepted: list[Sent]) -> int:
    """Check every queued message (before any sweep); return the partial writes left.

    Those are the entries in tmp/ and the fresh files holding a write cut short (not a whole
    batch or streamed file) that no link in queue/ keeps.
    """
    spool = made.spool()
    queued = set(spool.ids())
    for message in accepted:
        assert message.queue_id in queued, f"{message.message_id} got 250 but is not queued"
    for queue_id in queued:
        match = _MESSAGE_ID.search(spool.message(queue_id))
        assert match is not None, f"{queue_id}: no Message-ID"
        message_id = match.group(1).decode()
        if message_id in sent:  # earlier iterations' messages were checked then
            _check_queued(spool, queue_id, sent[message_id], made.user)
    partial = 0
    for path in (made.data_dir / "spool" / "fresh").iterdir():
        info = path.stat()
        if info.st_size and info.st_nlink == 1 and whole_fresh_file(path, info.st_size) is None:
            partial += 1
    return len(os.listdir(made.data_dir / "spool" / "tmp")) + partial


def _plant_interrupted_write(made: Instance) -> None:
    """Leave in tmp/ what a kill in the middle of a write leaves: a truncated spool file."""
    spool = made.spool()
    (made.data_dir / "spool" / "tmp" / spool.new_id()).write_bytes(b'{"body": "7BIT", "q')


def _check_swept(root: Path) -> None:
    assert os.listdir(root / "tmp") == []
    assert os.listdir(root / "corrupt") == []


def _start(server: ServerFactory, made: Instance, tmp_left: int, queued: int) -> ServerProcess:
    """Start a server; its startup sweep must report the `tmp_left` entries the test saw."""
    running = server(made)
    match = _SWEPT.search(running.wait_for(r"event=spool_swept ")[0])
    assert match is not None
    assert int(match.group(1)) == tmp_left
    assert match.group(2) == "0", "a kill without a reboot must not need links restored"
    assert match.group(3) == '""', "the startup sweep found corrupt queue files"
    assert int(match.group(4)) == queued
    _check_swept(made.data_dir / "spool")
    return running


def test_sigkill_never_loses_an_accepted_message(
    instance: InstanceFactory, server: ServerFactory
) -> None:
    base_seed = int(os.environ.get("SENDGATE_CRASH_SEED") or random.randrange(2**32))
    print(f"SENDGATE_CRASH_SEED={base_seed}")
    made = instance(UNLIMITED_SENDING)
    root = made.data_dir / "spool"
    accepted: list[Sent] = []
    tmp_left = 0  # tmp/ entries the next startup sweep must remove
    kills_with_tmp = 0
    for iteration in range(ITERATIONS):
        seed = base_seed + iteration
        rng = random.Random(seed)
        try:
            running = _start(server, made, tmp_left, len(made.queue_ids()))
            load = Load(running, iteration, seed)
            load.start()
            load.wait_accepted(rng.randint(0, MAX_KILL_AFTER))
            if rng.random() < 0.5:
                time.sleep(rng.uniform(0, 0.005))  # a deliberate race, not synchronisation
            running.kill()
            load.join()
            assert load.unexpected == []

            done = [sent for sent in load.sent.values() if sent.queue_id is not None]
            accepted += done
            tmp_left = _check_spool(made, load.sent, accepted)
            kills_with_tmp += tmp_left > 0
            if (iteration + 1) % SWEEP_AT_START_EVERY:
                result = Spool(root).sweep()  # what the next start would do
                assert (result.removed_partial, result.corrupt) == (tmp_left, ())
                assert result.unknown_entries == 0
                _check_swept(root)
                tmp_left = 0
            else:
                # Whether or not this kill hit a write, give the startup sweep one to remove.
                _plant_interrupted_write(made)
                tmp_left += 1
        except AssertionError as exc:
            exc.add_note(f"iteration {iteration}, seed {seed}; SENDGATE_CRASH_SEED={base_seed}")
            raise
    final = _start(server, made, tmp_left, len(made.queue_ids()))
    assert final.stop() == 0
    assert {sent.queue_id for sent in accepted} <= set(made.queue_ids())
    print(f"{len(accepted)} messages accepted; {kills_with_tmp} kills left a write in tmp/")

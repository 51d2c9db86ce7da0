"""Tests for sendgate.queueing: a group of accepted messages, one commit, separate outcomes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from tests.support.mail import make_envelope

from sendgate.dkim.keys import generate_key, load_keys
from sendgate.dkim.signer import DkimError, DkimSigner
from sendgate.errors import SpoolError
from sendgate.queueing import Queueing, Stored, StoreJob
from sendgate.store.local.queue import LocalQueueStore

MESSAGE = b"From: <alice@example.org>\r\nSubject: hi\r\n\r\nHello.\r\n"


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(2)
    yield pool
    pool.shutdown()


@pytest.fixture
def queue(tmp_path: Path) -> LocalQueueStore:
    return LocalQueueStore(tmp_path / "spool")


def job(queue: LocalQueueStore, message: bytes = MESSAGE, domain: str | None = None) -> StoreJob:
    return StoreJob(make_envelope(queue.new_id(), message), message, domain, None)


def test_a_group_is_queued_in_one_commit(
    queue: LocalQueueStore, executor: ThreadPoolExecutor, tmp_path: Path
) -> None:
    jobs = [job(queue), job(queue, b"Subject: two\r\n\r\nBye.\r\n")]
    outcomes = Queueing(queue, executor).store_many(jobs)
    assert outcomes == [Stored(len(j.message)) for j in jobs]
    queue.close()  # syncs the links and drops the file's fresh name
    for stored in jobs:
        assert queue.message(stored.envelope.queue_id) == stored.message
        # One batch file, linked once per message.
        assert (tmp_path / "spool" / "queue" / stored.envelope.queue_id).stat().st_nlink == 2


def test_a_message_that_cannot_be_signed_fails_alone(
    queue: LocalQueueStore, executor: ThreadPoolExecutor, tmp_path: Path
) -> None:
    generate_key(tmp_path / "dkim", "example.org", "sel1")
    queueing = Queueing(queue, executor, signer=DkimSigner(load_keys(tmp_path / "dkim")))
    empty, fine = job(queue, b"", "example.org"), job(queue, domain="example.org")
    failed, stored = queueing.store_many([empty, fine])
    assert isinstance(failed, DkimError)
    assert isinstance(stored, Stored)
    signed = queue.message(fine.envelope.queue_id)
    assert signed.startswith(b"DKIM-Signature: ")
    assert signed.endswith(MESSAGE)
    assert stored.size == len(signed)
    assert queue.ids() == [fine.envelope.queue_id]


def test_a_failed_commit_fails_every_message_of_its_group(
    queue: LocalQueueStore, executor: ThreadPoolExecutor
) -> None:
    taken = job(queue)
    queue.put(taken.envelope, taken.message)
    fresh = job(queue)
    outcomes = Queueing(queue, executor).store_many([fresh, taken])
    assert [type(o) for o in outcomes] == [SpoolError, SpoolError]
    assert queue.ids() == [taken.envelope.queue_id]


def test_store_from_the_event_loop_answers_each_message(
    queue: LocalQueueStore, executor: ThreadPoolExecutor
) -> None:
    queueing = Queueing(queue, executor)
    jobs = [job(queue) for _ in range(5)]

    async def main() -> list[Stored]:
        return await asyncio.gather(*(queueing.store(j) for j in jobs))

    assert asyncio.run(main()) == [Stored(len(MESSAGE))] * 5
    assert sorted(queue.ids()) == sorted(j.envelope.queue_id for j in jobs)

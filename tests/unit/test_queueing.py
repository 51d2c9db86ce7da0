"""Tests for sendgate.queueing: a group of accepted messages, one commit, separate outcomes."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dkim
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


# --- streamed bodies ---

HEAD = b"From: <alice@example.org>\r\nSubject: big\r\n\r\n"
BIG = b"a line of a large body\r\n" * 20_000


def streamed_job(queueing: Queueing, queue: LocalQueueStore) -> StoreJob:
    body = queueing.open_body()
    body.write(BIG)
    envelope = make_envelope(queue.new_id(), HEAD + BIG)
    return StoreJob(envelope, HEAD, "example.org", None, body)


def test_a_streamed_message_is_signed_from_its_streamed_hash(
    queue: LocalQueueStore, executor: ThreadPoolExecutor, tmp_path: Path
) -> None:
    generate_key(tmp_path / "dkim", "example.org", "sel1")
    signer = DkimSigner(load_keys(tmp_path / "dkim"))
    queueing = Queueing(queue, executor, signer=signer)
    streamed = streamed_job(queueing, queue)
    stored = asyncio.run(queueing.store(streamed))
    message = queue.message(streamed.envelope.queue_id)
    assert message.startswith(b"DKIM-Signature: ")
    assert message.endswith(HEAD + BIG)
    [key] = load_keys(tmp_path / "dkim")
    record = key.public_record.encode()
    assert dkim.verify(message, dnsfunc=lambda name, timeout=5: record)
    assert stored == Stored(len(message))
    assert queue.envelope(streamed.envelope.queue_id).size == len(message)


def test_a_body_begun_before_the_first_key_goes_unsigned(
    queue: LocalQueueStore, executor: ThreadPoolExecutor, tmp_path: Path
) -> None:
    signer = DkimSigner([])  # serve's signer before any key exists
    queueing = Queueing(queue, executor, signer=signer)
    streamed = streamed_job(queueing, queue)
    assert streamed.body is not None
    assert streamed.body.hash is None  # nothing to sign with: no hashing cost
    generate_key(tmp_path / "dkim", "example.org", "sel1")
    signer.replace(load_keys(tmp_path / "dkim"))  # a SIGHUP while the body streamed
    stored = asyncio.run(queueing.store(streamed))
    message = queue.message(streamed.envelope.queue_id)
    assert message == HEAD + BIG
    assert stored == Stored(len(message))
    # The next body is hashed and signed.
    following = streamed_job(queueing, queue)
    asyncio.run(queueing.store(following))
    assert queue.message(following.envelope.queue_id).startswith(b"DKIM-Signature: ")


def test_a_cancelled_store_of_a_streamed_message_still_finishes_in_its_thread(
    queue: LocalQueueStore,
    executor: ThreadPoolExecutor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    queueing = Queueing(queue, executor)
    streamed = streamed_job(queueing, queue)
    body = streamed.body
    assert body is not None
    entered, release = threading.Event(), threading.Event()
    real = queue.put_streamed

    def held_put(*args: object, **kwargs: object) -> None:
        entered.set()
        assert release.wait(10)
        real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(queue, "put_streamed", held_put)

    async def cancel_midway() -> None:
        task = asyncio.create_task(queueing.store(streamed))
        assert await asyncio.to_thread(entered.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        body.discard()  # what the submission's clean-up does: must not touch it now
        release.set()

    asyncio.run(cancel_midway())
    executor.shutdown(wait=True)
    assert queue.message(streamed.envelope.queue_id) == HEAD + BIG


def test_a_streamed_store_that_fails_removes_its_file(
    queue: LocalQueueStore, executor: ThreadPoolExecutor, tmp_path: Path
) -> None:
    queueing = Queueing(queue, executor)
    streamed = streamed_job(queueing, queue)
    assert streamed.body is not None
    path = streamed.body.file.file.path  # type: ignore[attr-defined]  # the spool's file
    bad = StoreJob(streamed.envelope, HEAD + b"x", None, None, streamed.body)  # size mismatch
    with pytest.raises(ValueError, match="size"):
        queueing.store_streamed(bad)
    assert not Path(path).exists()
    assert queue.ids() == []

"""Tests for the spool's group commit: `Spool.put_many` and the batch file it links into queue/."""

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.mail import make_envelope

from sendgate.errors import SpoolError, UnknownQueueIdError
from sendgate.store.envelope import Envelope, new_queue_id
from sendgate.store.local import batchfile
from sendgate.store.local.spool import Spool


def items(spool: Spool, *messages: bytes) -> list[tuple[Envelope, bytes]]:
    return [(make_envelope(spool.new_id(), m), m) for m in messages]


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool")


def test_put_many_queues_each_message_under_its_own_name(spool: Spool, tmp_path: Path) -> None:
    batch = items(spool, b"one\r\n", b"", b"three \xff\r\n.\r\n")
    spool.put_many(batch)
    spool.close()  # syncs the links and drops the file's fresh name
    queue = tmp_path / "spool" / "queue"
    assert spool.ids() == sorted(e.queue_id for e, _ in batch)
    for envelope, message in batch:
        assert spool.message(envelope.queue_id) == message
        assert spool.envelope(envelope.queue_id) == envelope
        # One file, one fsync: every name is a link to the same batch file.
        assert (queue / envelope.queue_id).stat().st_nlink == 3
    assert os.listdir(tmp_path / "spool" / "tmp") == []
    assert os.listdir(tmp_path / "spool" / "fresh") == []


def test_removing_messages_of_a_batch_keeps_the_others_until_the_last(
    spool: Spool, tmp_path: Path
) -> None:
    batch = items(spool, b"a\r\n", b"b\r\n")
    spool.put_many(batch)
    spool.close()
    first, second = (e.queue_id for e, _ in batch)
    spool.remove(first, durable=False)
    with pytest.raises(UnknownQueueIdError):
        spool.message(first)
    assert spool.message(second) == b"b\r\n"
    assert (tmp_path / "spool" / "queue" / second).stat().st_nlink == 1
    spool.remove(second)
    assert spool.ids() == []


def test_put_many_of_one_message_writes_a_batch_of_one(spool: Spool, tmp_path: Path) -> None:
    [(envelope, message)] = batch = items(spool, b"alone\r\n")
    spool.put_many(batch)
    data = (tmp_path / "spool" / "queue" / envelope.queue_id).read_bytes()
    assert batchfile.check(data) == ([envelope.queue_id], batchfile.boot_id())
    assert spool.message(envelope.queue_id) == message


def test_put_many_with_an_id_in_use_queues_none_of_them(spool: Spool, tmp_path: Path) -> None:
    [(taken, message)] = items(spool, b"first\r\n")
    spool.put(taken, message)
    batch = [*items(spool, b"new\r\n"), (taken, message), *items(spool, b"newer\r\n")]
    with pytest.raises(SpoolError, match="cannot commit spool file"):
        spool.put_many(batch)
    assert spool.ids() == [taken.queue_id]
    assert spool.message(taken.queue_id) == message  # never overwritten
    spool.close()
    assert os.listdir(tmp_path / "spool" / "tmp") == []
    assert os.listdir(tmp_path / "spool" / "fresh") == []


def test_put_many_whose_data_sync_fails_queues_none(
    spool: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool.put_many(items(spool, b"warm-up\r\n"))  # the fresh files exist
    queued = spool.ids()

    def broken_sync(_fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", broken_sync)
    with pytest.raises(SpoolError, match=r"cannot write spool file .*/fresh/\d+\.[0-9a-f]{16}: "):
        spool.put_many(items(spool, b"a\r\n", b"b\r\n"))
    assert spool.ids() == queued
    monkeypatch.undo()
    spool.close()
    assert os.listdir(tmp_path / "spool" / "fresh") == []
    assert os.listdir(tmp_path / "spool" / "tmp") == []


def test_a_batch_whose_record_is_missing_or_outside_is_set_aside_by_sweep(
    spool: Spool, tmp_path: Path
) -> None:
    batch = items(spool, b"a\r\n", b"b\r\n")
    spool.put_many(batch)
    first, second = (e.queue_id for e, _ in batch)
    path = tmp_path / "spool" / "queue" / first
    data = path.read_bytes()
    os.unlink(path)
    path.write_bytes(data[: batchfile.FIRST_LINE_SIZE + 2 * batchfile.ENTRY_SIZE])  # no records
    with pytest.raises(SpoolError, match=f"corrupt envelope .*{first}: batch index entry outside"):
        spool.envelope(first)
    recovery = spool.sweep()
    assert recovery.corrupt == (first,)
    assert spool.ids() == [second]
    assert spool.message(second) == b"b\r\n"


def test_a_big_record_past_the_first_read_is_read_whole(spool: Spool) -> None:
    big = b"x" * (batchfile.HEADER_READ * 2) + b"\r\n"
    batch = items(spool, b"small\r\n", big)
    spool.put_many(batch)
    envelope = batch[1][0]
    assert spool.envelope(envelope.queue_id) == envelope
    assert spool.message(envelope.queue_id) == big


_ids = st.integers(0, 2**40 - 1).map(lambda n: new_queue_id(1_714_564_800.0, n.to_bytes(5, "big")))


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(_ids, st.binary(max_size=300), min_size=1, max_size=20))
def test_every_record_of_an_encoded_batch_is_located(messages: dict[str, bytes]) -> None:
    batch = [(make_envelope(q, m), m) for q, m in messages.items()]
    data = b"".join(batchfile.encode(batch))
    assert batchfile.is_batch(data)
    for envelope, message in batch:
        offset, length = batchfile.locate(data, envelope.queue_id, len(data))
        assert data[offset : offset + length] == envelope.to_json() + b"\n" + message


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_a_malformed_batch_header_is_a_spool_error_never_a_crash(noise: bytes) -> None:
    queue_id = new_queue_id(1_714_564_800.0, b"\x00" * 5)
    data = batchfile.MAGIC + noise
    try:
        offset, length = batchfile.locate(data, queue_id, len(data))
    except SpoolError:
        return
    assert offset >= batchfile.FIRST_LINE_SIZE
    assert offset + length <= len(data)


@pytest.mark.parametrize(
    "header",
    [
        b"SGBATCH1 zz01\n",  # count not hex
        b"SGBATCH1 0000\n",  # no records
        b"SGBATCH1 0002\n",  # index cut short
        b"SGBATCH1 0001",  # first line without LF
    ],
)
def test_bad_batch_headers_are_refused(header: bytes) -> None:
    queue_id = new_queue_id(1_714_564_800.0, b"\x00" * 5)
    entry = b"%s %016x %016x\n" % (queue_id.encode(), 100, 1)
    data = header + entry + b"x" * 200
    with pytest.raises(SpoolError):
        batchfile.locate(data, queue_id, len(data))


def test_encode_refuses_an_empty_batch_and_one_whose_header_would_not_fit_one_read() -> None:
    with pytest.raises(ValueError, match="a batch holds 1 to"):
        batchfile.encode([])
    too_many = [
        (make_envelope(new_queue_id(1_714_564_800.0, n.to_bytes(5, "big")), b""), b"")
        for n in range(batchfile.MAX_MESSAGES + 1)
    ]
    with pytest.raises(ValueError, match="a batch holds 1 to"):
        batchfile.encode(too_many)


def test_the_largest_batch_is_read_back(spool: Spool) -> None:
    batch = items(spool, *(b"m%d\r\n" % n for n in range(batchfile.MAX_MESSAGES)))
    spool.put_many(batch)
    last = batch[-1][0]
    assert spool.message(last.queue_id) == batch[-1][1]
    assert spool.envelope(last.queue_id) == last


def test_a_batch_without_the_asked_record_is_refused() -> None:
    held = new_queue_id(1_714_564_800.0, b"\x00" * 5)
    other = new_queue_id(1_714_564_800.0, b"\x01" * 5)
    data = b"".join(batchfile.encode([(make_envelope(held, b"x\r\n"), b"x\r\n")]))
    with pytest.raises(SpoolError, match=f"batch does not hold {other}"):
        batchfile.locate(data, other, len(data))


def test_an_envelope_line_longer_than_the_first_read_is_read_whole(spool: Spool) -> None:
    recipients = tuple(f"rcpt{n}@example.org" for n in range(5000))  # about 110 KB of JSON
    envelope = make_envelope(spool.new_id(), b"hi\r\n", recipients=recipients)
    assert len(envelope.to_json()) > batchfile.HEADER_READ
    spool.put(envelope, b"hi\r\n")
    assert spool.envelope(envelope.queue_id) == envelope
    assert spool.message(envelope.queue_id) == b"hi\r\n"

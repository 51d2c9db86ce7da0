"""Tests for sendgate.store.local.announce: ids cross a pipe whole, in order, never blocking."""

from __future__ import annotations

import itertools
import os
import select
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sendgate.store.envelope import queue_id_share
from sendgate.store.local.announce import AnnouncePipe, AnnounceReader, AnnounceWriter

IDS = ["01HZZZZZZZZZZZZZZA", "01HZZZZZZZZZZZZZZB", "01HZZZZZZZZZZZZZZC"]


class Ends:
    """Both ends of one pipe in this process, as the acceptors and the runner hold them."""

    def __init__(self, pipe: AnnouncePipe) -> None:
        self.read_fd, self.write_fd = pipe.read_fds[0], pipe.write_fds[0]
        self.writer = AnnounceWriter(pipe.write_fds)
        self.reader = AnnounceReader(pipe.read_fds[0])

    def announce(self, queue_id: str) -> None:
        self.writer.announce(queue_id)


@pytest.fixture
def announcer() -> Iterator[Ends]:
    pipe = AnnouncePipe()
    try:
        yield Ends(pipe)
    finally:
        pipe.close()


def _ids(reader: AnnounceReader) -> list[str]:
    return [queue_id for queue_id, _ in reader.take()]


def _received(announcer: Ends) -> list[str]:
    return _ids(announcer.reader)


def test_announced_ids_arrive_in_order(announcer: Ends) -> None:
    for queue_id in IDS:
        announcer.announce(queue_id)
    assert _received(announcer) == IDS
    assert _received(announcer) == []  # each id once


def test_both_ends_are_non_blocking(announcer: Ends) -> None:
    assert not os.get_blocking(announcer.read_fd)
    assert not os.get_blocking(announcer.write_fd)


def test_receive_on_an_empty_pipe_returns_at_once(announcer: Ends) -> None:
    assert _received(announcer) == []


def test_a_partial_line_waits_for_its_end(announcer: Ends) -> None:
    os.write(announcer.write_fd, b"01HZZZZZZZ")
    assert _received(announcer) == []
    os.write(announcer.write_fd, b"ZZZZZZZA\n01HZZZZZZZZZZZZZZB\n01HZ")
    assert _received(announcer) == IDS[:2]
    os.write(announcer.write_fd, b"ZZZZZZZZZZZZZC\n")
    assert _received(announcer) == IDS[2:]


def test_a_line_that_is_not_a_queue_id_is_skipped(announcer: Ends) -> None:
    os.write(announcer.write_fd, b"\xff\xfe\n../../etc\n" + IDS[0].encode() + b"\n")
    assert _received(announcer) == [IDS[0]]


def test_receive_stops_at_end_of_file(announcer: Ends) -> None:
    announcer.announce(IDS[0])
    os.close(announcer.write_fd)  # every writer gone (e.g. the workers exited)
    assert _received(announcer) == [IDS[0]]
    assert _received(announcer) == []


def test_a_full_pipe_drops_ids_instead_of_blocking(announcer: Ends) -> None:
    line = len(IDS[0]) + 1
    capacity_guess = 1 << 20  # far beyond any default pipe buffer (64 KiB on Linux)
    for _ in range(capacity_guess // line):
        announcer.announce(IDS[0])  # raises or blocks on a bug; must do neither
    got = _received(announcer)
    assert 0 < len(got) < capacity_guess // line
    assert set(got) == {IDS[0]}  # only whole ids: each write is atomic
    announcer.announce(IDS[1])  # room again after the runner read
    assert _received(announcer) == [IDS[1]]


def test_a_gone_reader_does_not_hurt_the_writer(announcer: Ends) -> None:
    os.close(announcer.read_fd)
    announcer.announce(IDS[0])  # EPIPE is swallowed: the runner rescans the spool anyway


def test_concurrent_writers_never_interleave(announcer: Ends) -> None:
    per_thread = 400  # 4 x 400 x 19 bytes fit in the pipe: nothing is dropped
    names = [f"0{t}{'Z' * 11}{n:05d}" for t in range(4) for n in range(per_thread)]

    def write(start: int) -> None:
        for name in names[start : start + per_thread]:
            announcer.announce(name)

    threads = [threading.Thread(target=write, args=(t * per_thread,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    got = _received(announcer)
    assert sorted(got) == sorted(names)
    for t in range(4):  # each writer's ids stay in its own order
        mine = [name for name in got if name[1] == str(t)]
        assert mine == names[t * per_thread : (t + 1) * per_thread]


@given(
    ids=st.lists(st.from_regex(r"[0-7][0-9A-HJKMNP-TV-Z]{17}", fullmatch=True), max_size=20),
    cuts=st.lists(st.integers(0, 400), max_size=10),
)
def test_any_chunking_of_the_stream_gives_the_same_ids(ids: list[str], cuts: list[int]) -> None:
    stream = b"".join(queue_id.encode() + b"\n" for queue_id in ids)
    points = sorted({min(cut, len(stream)) for cut in cuts} | {0, len(stream)})
    pipe = AnnouncePipe()
    try:
        reader = AnnounceReader(pipe.read_fds[0])
        got: list[str] = []
        for start, end in itertools.pairwise(points):
            os.write(pipe.write_fds[0], stream[start:end])
            got.extend(_ids(reader))
        assert got == ids
    finally:
        pipe.close()


def test_each_process_keeps_only_its_end() -> None:
    pipe = AnnouncePipe()
    pid = os.fork()
    if pid == 0:  # the acceptor's side
        code = 1
        try:
            writer = pipe.writer()
            writer.announce(IDS[0])
            writer.close()
            code = 0
        finally:
            os._exit(code)
    reader = pipe.reader()
    try:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert _ids(reader) == [IDS[0]]
        assert os.read(reader.fd, 1) == b""  # every writer is gone: end of file, not EAGAIN
    finally:
        reader.close()


def test_an_envelope_line_travels_with_its_id(announcer: Ends) -> None:
    announcer.writer.announce(IDS[0], b'{"queue_id": "x"}')
    announcer.writer.announce(IDS[1])
    assert announcer.reader.take() == [(IDS[0], b'{"queue_id": "x"}'), (IDS[1], None)]


def test_an_envelope_too_long_for_one_atomic_write_is_left_out(announcer: Ends) -> None:
    announcer.writer.announce(IDS[0], b"x" * 5000)
    assert announcer.reader.take() == [(IDS[0], None)]


def test_with_several_runners_an_id_goes_to_the_pipe_of_its_share() -> None:
    pipe = AnnouncePipe(3)
    try:
        writer = AnnounceWriter(pipe.write_fds)
        readers = [AnnounceReader(fd) for fd in pipe.read_fds]
        ids = [f"01HZZZZZZZZZZZZZZ{c}" for c in "0123456789ABCDEFGHJKMNPQRSTVWXYZ"]
        for queue_id in ids:
            writer.announce(queue_id)
        got = [_ids(reader) for reader in readers]
        assert got == [[q for q in ids if queue_id_share(q, 3) == share] for share in range(3)]
        assert sorted(len(part) for part in got) == [10, 11, 11]  # 32 last characters, even
    finally:
        pipe.close()


def test_a_runner_keeps_only_its_own_reading_end() -> None:
    pipe = AnnouncePipe(2)
    pid = os.fork()
    if pid == 0:  # runner 1: runner 0's end and every writing end are closed here
        code = 1
        try:
            reader = pipe.reader(1)
            closed = [pipe.read_fds[0], *pipe.write_fds]
            for fd in closed:
                try:
                    os.fstat(fd)
                except OSError:
                    continue
                os._exit(2)
            code = 0 if reader.fd == pipe.read_fds[1] else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    pipe.close()
    assert os.waitstatus_to_exitcode(status) == 0


def _write_sizes(writer: AnnounceWriter, items: list[tuple[str, bytes | None]]) -> list[int]:
    """The sizes of the writes `announce_many` makes (os.write counted where the writer calls
    it)."""
    sizes: list[int] = []
    real = os.write

    def counting(fd: int, data: bytes) -> int:
        sizes.append(len(data))
        return real(fd, data)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sendgate.store.local.announce.os.write", counting)
        writer.announce_many(items)
    return sizes


def test_a_group_goes_out_in_one_write_per_pipe(announcer: Ends) -> None:
    items: list[tuple[str, bytes | None]] = [(IDS[0], b'{"a": 1}'), (IDS[1], None), (IDS[2], b"{}")]
    assert len(_write_sizes(announcer.writer, items)) == 1
    assert announcer.reader.take() == items


def test_a_large_group_is_cut_into_writes_of_at_most_pipe_buf(announcer: Ends) -> None:
    envelope = b"e" * 1000
    ids = [f"01HZZZZZZZZZZZZZ{n:02d}" for n in range(20)]
    sizes = _write_sizes(announcer.writer, [(queue_id, envelope) for queue_id in ids])
    assert all(size <= select.PIPE_BUF for size in sizes)
    assert len(sizes) == -(-20 * 1019 // (select.PIPE_BUF // 1019 * 1019))  # whole lines each
    assert announcer.reader.take() == [(queue_id, envelope) for queue_id in ids]


def test_a_group_with_several_runners_is_split_by_share() -> None:
    pipe = AnnouncePipe(2)
    try:
        writer = AnnounceWriter(pipe.write_fds)
        readers = [AnnounceReader(fd) for fd in pipe.read_fds]
        ids = [f"01HZZZZZZZZZZZZZZ{c}" for c in "0123456789"]
        sizes = _write_sizes(writer, [(queue_id, None) for queue_id in ids])
        assert len(sizes) == 2
        got = [_ids(reader) for reader in readers]
        assert got == [[q for q in ids if queue_id_share(q, 2) == share] for share in range(2)]
    finally:
        pipe.close()

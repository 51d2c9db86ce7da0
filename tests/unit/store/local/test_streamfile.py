"""Tests for streamed spool files: a large body written as it arrives, then queued in one sync."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.mail import make_envelope

from sendgate.errors import SpoolError
from sendgate.store.local import batchfile, fresh, streamfile
from sendgate.store.local.spool import Spool
from sendgate.store.local.streamfile import StreamedBody

OTHER_BOOT = "00000000-0000-4000-8000-000000000000"
HEAD = b"From: <alice@example.com>\r\nSubject: big\r\n\r\n"
BLOCK = b"0123456789 body line\r\n" * 3000


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    made = Spool(tmp_path / "spool")
    yield made
    made.close()


def fresh_names(spool_root: Path) -> set[str]:
    return {p.name for p in (spool_root / "fresh").iterdir()}


def stream(spool: Spool, blocks: int = 4) -> tuple[StreamedBody, bytes]:
    body = spool.new_body()
    for _ in range(blocks):
        body.write(BLOCK)
    return body, BLOCK * blocks


def test_put_streamed_syncs_once_and_links_into_queue(
    spool: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body, written = stream(spool)
    path = body.path
    assert Path(path).parent == tmp_path / "spool" / "fresh"
    syncs: list[int] = []
    real = os.fdatasync

    def counted(fd: int) -> None:
        syncs.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counted)
    queue_id = spool.new_id()
    spool.put_streamed(make_envelope(queue_id, HEAD + written), HEAD, body)
    assert len(syncs) == 1
    assert spool.message(queue_id) == HEAD + written
    assert spool.envelope(queue_id).size == len(HEAD + written)
    assert os.path.samefile(path, tmp_path / "spool" / "queue" / queue_id)
    body.discard()  # after the commit: leaves the queued file alone
    assert spool.message(queue_id) == HEAD + written


def test_the_file_layout_puts_the_envelope_and_head_after_the_body(spool: Spool) -> None:
    body, written = stream(spool, 1)
    queue_id = spool.new_id()
    path = body.path
    spool.put_streamed(make_envelope(queue_id, HEAD + written), HEAD, body)
    data = Path(path).read_bytes()
    assert data.startswith(streamfile.MAGIC + written)
    tail = data[len(streamfile.MAGIC) + len(written) :]
    line, _, rest = tail.partition(b"\n")
    assert queue_id.encode() in line
    assert rest.startswith(HEAD + streamfile.FOOTER)
    with open(path, "rb") as file:
        assert streamfile.check_file(file.fileno(), len(data)) == ([queue_id], batchfile.boot_id())


def test_a_discarded_body_removes_its_file(spool: Spool) -> None:
    body, _ = stream(spool)
    path = body.path
    body.discard()
    assert not os.path.exists(path)
    with pytest.raises(OSError, match="closed"):
        body.write(b"late\r\n")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_a_failed_sync_removes_the_file_and_queues_nothing(
    spool: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    body, written = stream(spool)
    path = body.path

    def broken(fd: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fdatasync", broken)
    with pytest.raises(SpoolError):
        spool.put_streamed(make_envelope(spool.new_id(), HEAD + written), HEAD, body)
    assert not os.path.exists(path)
    assert spool.ids() == []


def test_a_held_streamed_message_has_its_hold_before_its_link(spool: Spool, tmp_path: Path) -> None:
    body, written = stream(spool)
    queue_id = spool.new_id()
    spool.put_streamed(make_envelope(queue_id, HEAD + written), HEAD, body, hold="flagged: x")
    assert (tmp_path / "spool" / "hold" / queue_id).read_bytes() == b"flagged: x"


def finished_unlinked(spool: Spool, boot: str) -> tuple[str, bytes, str]:
    """A streamed file as a crash leaves it after its sync, before its link: (id, message, path)."""
    body, written = stream(spool)
    queue_id = spool.new_id()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(batchfile, "boot_id", lambda: boot)
        body.finish(make_envelope(queue_id, HEAD + written), HEAD)
    spool.close()  # its syncer stops; the file it never linked stays, as after a crash
    return queue_id, HEAD + written, body.path


def test_sweep_restores_the_link_a_reboot_lost(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    queue_id, message, _ = finished_unlinked(spool, OTHER_BOOT)
    restarted = Spool(tmp_path / "spool")
    recovery = restarted.sweep()
    assert (recovery.restored, recovery.removed_partial) == (1, 0)
    assert restarted.message(queue_id) == message
    assert fresh_names(tmp_path / "spool") == set()


def test_sweep_in_the_same_boot_restores_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    finished_unlinked(spool, batchfile.boot_id())
    restarted = Spool(tmp_path / "spool")
    recovery = restarted.sweep()
    assert restarted.ids() == []
    assert recovery.restored == 0


def test_a_streamed_file_is_restored_only_under_the_name_it_was_written_under(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "spool")
    _, _, path = finished_unlinked(spool, OTHER_BOOT)
    token = fresh.name_token(path)
    assert token is not None
    data = Path(path).read_bytes()
    with open(path, "rb") as file:
        assert streamfile.check_file(file.fileno(), len(data), token) is not None
        assert streamfile.check_file(file.fileno(), len(data), "0" * 16) is None
    # As a recycled file whose emptying a power cut undid: the same bytes under another name.
    Path(path).rename(Path(path).with_name(Path(path).name[:-16] + "0" * 16))
    restarted = Spool(tmp_path / "spool")
    assert restarted.sweep().restored == 0
    assert restarted.ids() == []


@pytest.mark.parametrize("cut", [1, 10, 45, 200, 60_000])
def test_sweep_removes_a_streamed_file_cut_short(tmp_path: Path, cut: int) -> None:
    spool = Spool(tmp_path / "spool")
    _, _, path = finished_unlinked(spool, OTHER_BOOT)
    size = os.path.getsize(path)
    os.truncate(path, size - cut)
    restarted = Spool(tmp_path / "spool")
    recovery = restarted.sweep()
    assert restarted.ids() == []
    assert recovery.removed_partial == 1
    assert fresh_names(tmp_path / "spool") == set()


def test_a_corrupt_footer_is_reported_not_trusted(spool: Spool, tmp_path: Path) -> None:
    body, written = stream(spool, 1)
    queue_id = spool.new_id()
    path = body.path
    spool.put_streamed(make_envelope(queue_id, HEAD + written), HEAD, body)
    data = bytearray(Path(path).read_bytes())
    at = data.rfind(streamfile.FOOTER)
    data[at + 7 : at + 8] = b"f"  # the body length no longer adds up
    queued = tmp_path / "spool" / "queue" / queue_id
    queued.unlink()
    queued.write_bytes(bytes(data))
    with pytest.raises(SpoolError, match="corrupt"):
        spool.message(queue_id)
    with open(queued, "rb") as file:
        assert streamfile.check_file(file.fileno(), len(data)) is None

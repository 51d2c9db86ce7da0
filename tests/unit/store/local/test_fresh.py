"""Tests for sendgate.store.local.fresh and the spool's commits into fresh files.

A group commit writes into a file whose name was synced before, so one fdatasync makes it
durable; the links into queue/ are synced in the background before the fresh name goes, and
`Spool.sweep` restores links a reboot lost from the fresh names a crash left.
"""

from __future__ import annotations

import errno
import itertools
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.mail import make_envelope

from sendgate.errors import SpoolError, SpoolFullError
from sendgate.fsutil import fsync_dir
from sendgate.store.envelope import Envelope, new_queue_id
from sendgate.store.local import batchfile, fresh
from sendgate.store.local.fresh import FreshFiles, owner
from sendgate.store.local.spool import Spool

NEVER = 3600.0  # a syncer interval no test waits for: syncs happen when a test asks
OTHER_BOOT = "00000000-0000-4000-8000-000000000000"


def items(spool: Spool, *messages: bytes) -> list[tuple[Envelope, bytes]]:
    return [(make_envelope(spool.new_id(), m), m) for m in messages]


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def fill_disk(monkeypatch: pytest.MonkeyPatch, refuse: Callable[[str, int], bool]) -> None:
    """Make `os.open` fail with ENOSPC wherever `refuse(path, flags)` says so."""
    real_open = os.open

    def full_open(path: str, flags: int, mode: int = 0o777) -> int:
        if refuse(str(path), flags):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", full_open)


def break_syncs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every directory sync of `store.local.fresh` fail with EIO."""

    def broken(_path: Path) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(fresh, "fsync_dir", broken)


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    for name in ("fresh", "queue"):
        (tmp_path / name).mkdir()
    return tmp_path / "fresh", tmp_path / "queue"


@pytest.fixture
def files(dirs: tuple[Path, Path]) -> FreshFiles:
    return FreshFiles(*dirs, interval=NEVER)


def test_a_taken_file_is_empty_private_and_its_name_was_synced_after_it_was_made(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh_dir, queue = dirs
    synced: list[set[str]] = []  # the names in fresh/ at each sync of it

    def recording_fsync_dir(path: Path) -> None:
        if path == fresh_dir:
            synced.append(set(names(fresh_dir)))
        fsync_dir(path)

    monkeypatch.setattr(fresh, "fsync_dir", recording_fsync_dir)
    files = FreshFiles(fresh_dir, queue, interval=NEVER)
    path = files.take()
    name = Path(path).name
    assert owner(name) == os.getpid()
    assert any(name in snapshot for snapshot in synced)
    info = os.stat(path)
    assert (info.st_size, info.st_mode & 0o777) == (0, 0o600)
    # The first take made a stock; the next ones make nothing.
    assert len(names(fresh_dir)) == fresh.FIRST
    for _ in range(fresh.FIRST - 1):
        files.take()
    assert len(names(fresh_dir)) == fresh.FIRST
    files.close()


def test_a_committed_name_stays_until_queue_is_synced(
    files: FreshFiles, dirs: tuple[Path, Path]
) -> None:
    fresh_dir, queue = dirs
    path = files.take()
    Path(path).write_bytes(b"group")
    os.link(path, queue / "link")
    files.committed(path)
    assert Path(path).exists()
    files.sync(make=3)
    assert not Path(path).exists()
    assert (queue / "link").read_bytes() == b"group"
    # The three new files joined the stock: the next takes make none.
    before = set(names(fresh_dir))
    for _ in range(fresh.FIRST - 1 + 3):
        files.take()
    assert set(names(fresh_dir)) == before
    files.close()


def test_a_failed_sync_keeps_the_committed_name_and_makes_nothing(
    files: FreshFiles, dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh_dir, _ = dirs
    path = files.take()
    files.committed(path)
    before = names(fresh_dir)

    break_syncs(monkeypatch)
    with pytest.raises(OSError, match="Input/output error"):
        files.sync(make=2)
    assert names(fresh_dir) == before
    monkeypatch.undo()
    files.sync()
    assert Path(path).name not in names(fresh_dir)
    files.close()


def test_the_syncer_syncs_commits_and_restocks_by_itself(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh_dir, queue = dirs
    files = FreshFiles(fresh_dir, queue, interval=0.0, spare=fresh.FIRST + 4)
    path = files.take()
    gone = threading.Event()
    real_rename = os.rename

    def rename(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        real_rename(source, target)
        if os.fspath(source) == path:
            gone.set()

    monkeypatch.setattr(os, "rename", rename)
    files.committed(path)
    assert gone.wait(30), "the syncer never gave up the committed name"
    # It made the stock whole again: spare files, none of them the committed one.
    ready = names(fresh_dir)
    assert Path(path).name not in ready
    assert len(ready) >= fresh.FIRST + 4  # more than the 15 left by the first take
    files.close()
    assert names(fresh_dir) == []


def _spend(files: FreshFiles, queue: Path, content: bytes, *links: str) -> tuple[str, int]:
    """A committed file holding `content`, linked as `links` in queue/, synced and spent."""
    path = files.take()
    Path(path).write_bytes(content)
    for link in links:
        os.link(path, queue / link)
    files.committed(path)
    files.sync()
    assert os.path.exists(path + fresh.SPENT)
    return path + fresh.SPENT, os.stat(path + fresh.SPENT).st_ino


def _fresh_names_of(fresh_dir: Path, inode: int) -> list[str]:
    return [
        p.name
        for p in fresh_dir.iterdir()
        if p.stat().st_ino == inode and not p.name.endswith(fresh.SPENT)
    ]


def test_a_spent_file_whose_messages_are_gone_is_recycled_empty_under_a_fresh_name(
    files: FreshFiles, dirs: tuple[Path, Path]
) -> None:
    fresh_dir, queue = dirs
    spent, inode = _spend(files, queue, b"batch", "one", "two")
    os.unlink(queue / "one")
    os.unlink(queue / "two")  # delivered: only the spent name keeps the file
    files.sync(make=1)
    assert not os.path.exists(spent)
    [name] = _fresh_names_of(fresh_dir, inode)
    assert owner(name) == os.getpid()
    recycled = files.take()  # the newest in the stock
    assert Path(recycled).name == name
    assert os.stat(recycled).st_size == 0
    files.discard(recycled)
    files.close()
    assert names(fresh_dir) == []


def test_a_spent_file_with_a_message_still_queued_is_kept_whole(
    files: FreshFiles, dirs: tuple[Path, Path]
) -> None:
    fresh_dir, queue = dirs
    spent, inode = _spend(files, queue, b"batch", "one", "two")
    os.unlink(queue / "one")
    files.sync(make=1)
    assert Path(spent).read_bytes() == b"batch"
    assert _fresh_names_of(fresh_dir, inode) == []
    files.close()
    assert (queue / "two").read_bytes() == b"batch"  # close drops the spent name alone


def test_spent_files_the_stock_does_not_need_are_removed_and_their_space_comes_back(
    files: FreshFiles, dirs: tuple[Path, Path]
) -> None:
    _, queue = dirs
    spent, _ = _spend(files, queue, b"x" * 100_000, "one")
    os.unlink(queue / "one")
    files.sync(make=0)
    assert not os.path.exists(spent)
    files.close()


def test_the_syncer_reaps_spent_files_without_any_commit(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh_dir, queue = dirs
    monkeypatch.setattr(fresh, "REAP_EVERY", 0.01)
    files = FreshFiles(fresh_dir, queue, interval=0.0, spare=2)
    path = files.take()
    Path(path).write_bytes(b"batch")
    os.link(path, queue / "one")
    files.committed(path)
    spent = path + fresh.SPENT
    assert wait_for(lambda: os.path.exists(spent))
    os.unlink(queue / "one")
    assert wait_for(lambda: not os.path.exists(spent))
    files.close()


def wait_for(condition: Callable[[], bool]) -> bool:
    event = threading.Event()
    for _ in range(3000):
        if condition():
            return True
        event.wait(0.01)  # polling the syncer's files: it signals nothing
    return condition()


def test_a_recycled_file_whose_emptying_a_crash_undid_restores_nothing(
    spool: Spool, tmp_path: Path
) -> None:
    batch = items(spool, b"one\r\n", b"two\r\n")
    spool.put_many(batch)
    fresh_dir = tmp_path / "spool" / "fresh"
    [written] = [p for p in fresh_dir.iterdir() if p.stat().st_nlink == 3]
    data = written.read_bytes()
    assert batchfile.check(data, fresh.name_token(written)) is not None
    # After a power cut: the file under its new fresh name, the emptying lost, the batch
    # delivered (no links), in an earlier boot (so a whole batch would be restored).
    recycled = fresh_dir / f"{dead_pid()}.fedcba9876543210"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(batchfile, "boot_id", lambda: OTHER_BOOT)
        spool.close()
        for envelope, _ in batch:
            spool.remove(envelope.queue_id)
        for path in fresh_dir.iterdir():
            path.unlink()
        recycled.write_bytes(data)
        assert spool.sweep().restored == 0
    assert spool.ids() == []
    assert names(fresh_dir) == []


def test_a_batch_is_restored_under_the_name_it_was_written_under(
    spool: Spool, tmp_path: Path
) -> None:
    batch = items(spool, b"one\r\n")
    spool.put_many(batch)
    fresh_dir = tmp_path / "spool" / "fresh"
    [written] = [p for p in fresh_dir.iterdir() if p.stat().st_nlink == 2]
    data = written.read_bytes()
    spool.close()
    spool.remove(batch[0][0].queue_id)
    for path in fresh_dir.iterdir():
        path.unlink()
    (fresh_dir / written.name.replace(f"{os.getpid()}.", f"{dead_pid()}.")).write_bytes(data)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(batchfile, "boot_id", lambda: OTHER_BOOT)
        assert spool.sweep().restored == 1
    assert spool.ids() == [batch[0][0].queue_id]


def test_sweep_removes_spent_names_and_restores_nothing_from_them(
    spool: Spool, tmp_path: Path
) -> None:
    batch = items(spool, b"one\r\n", b"two\r\n")
    path = plant(spool, tmp_path, batch, OTHER_BOOT)  # from an earlier boot: would be restored
    path.rename(str(path) + fresh.SPENT)
    recovery = spool.sweep()
    assert (recovery.restored, recovery.removed_partial) == (0, 0)
    assert spool.ids() == []
    assert names(tmp_path / "spool" / "fresh") == []


def test_the_first_commit_reaps_spent_names_of_dead_processes_only(
    spool: Spool, tmp_path: Path
) -> None:
    fresh_dir = tmp_path / "spool" / "fresh"
    dead = fresh_dir / f"{dead_pid()}.0123456789abcdef{fresh.SPENT}"
    dead.write_bytes(b"old batch")
    alive = fresh_dir / f"{os.getppid()}.0123456789abcdef{fresh.SPENT}"
    alive.write_bytes(b"old batch")
    spool.put_many(items(spool, b"a\r\n"))
    assert not dead.exists()
    assert alive.exists()
    spool.close()


def test_close_syncs_removes_every_name_and_refuses_more(
    files: FreshFiles, dirs: tuple[Path, Path]
) -> None:
    fresh_dir, queue = dirs
    path = files.take()
    os.link(path, queue / "kept")
    files.committed(path)
    files.close()
    assert names(fresh_dir) == []
    assert (queue / "kept").exists()
    with pytest.raises(SpoolError, match="spool closed"):
        files.take()
    files.close()  # twice is harmless


def test_a_take_that_cannot_make_files_leaves_none(
    files: FreshFiles, dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh_dir, _ = dirs
    opened = itertools.count()
    fill_disk(monkeypatch, lambda _path, _flags: next(opened) >= 3)  # the fourth file fails
    with pytest.raises(OSError, match="No space left"):
        files.take()
    assert names(fresh_dir) == []
    monkeypatch.undo()
    files.close()


def test_discard_removes(files: FreshFiles) -> None:
    path = files.take()
    files.discard(path)
    assert not Path(path).exists()
    files.close()


@pytest.mark.parametrize(
    ("name", "pid"),
    [
        ("1234.0123456789abcdef", 1234),
        ("1234.0123456789ABCDEF", None),
        ("0.0123456789abcdef", None),
        ("1234.0123456789abcde", None),
        ("x.0123456789abcdef", None),
        ("1234", None),
    ],
)
def test_owner_reads_only_our_names(name: str, pid: int | None) -> None:
    assert owner(name) == pid


# --- the spool -------------------------------------------------------------------------------


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool")


def test_put_many_syncs_data_once_and_no_directory_in_the_committing_thread(
    spool: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool.put_many(items(spool, b"warm-up\r\n"))  # the stock exists
    mine = threading.get_ident()
    calls: list[str] = []
    real_fdatasync = os.fdatasync

    def fdatasync(fd: int) -> None:
        calls.append("fdatasync " + os.readlink(f"/proc/self/fd/{fd}"))
        real_fdatasync(fd)

    def recording_fsync_dir(path: Path) -> None:
        if threading.get_ident() == mine:
            calls.append(f"fsync_dir {path}")
        fsync_dir(path)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(fresh, "fsync_dir", recording_fsync_dir)
    monkeypatch.setattr("sendgate.store.local.spool.fsync_dir", recording_fsync_dir)
    batch = items(spool, b"one\r\n", b"two\r\n")
    spool.put_many(batch)
    assert len(calls) == 1, calls
    assert calls[0].startswith(f"fdatasync {tmp_path / 'spool' / 'fresh'}/{os.getpid()}.")
    for envelope, message in batch:
        assert spool.message(envelope.queue_id) == message
    spool.close()


def test_put_many_that_cannot_make_fresh_files_is_a_full_spool(
    spool: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill_disk(monkeypatch, lambda path, _flags: "/fresh/" in path)
    with pytest.raises(
        SpoolFullError, match=r"cannot make fresh spool files in .*/fresh: No space"
    ):
        spool.put_many(items(spool, b"a\r\n"))
    assert spool.ids() == []


def test_put_many_after_close_starts_again(spool: Spool, tmp_path: Path) -> None:
    first = items(spool, b"a\r\n")
    spool.put_many(first)
    spool.close()
    second = items(spool, b"b\r\n")
    spool.put_many(second)
    spool.close()
    assert spool.ids() == sorted(e.queue_id for e, _ in first + second)
    assert names(tmp_path / "spool" / "fresh") == []


def plant(spool: Spool, tmp_path: Path, batch: list[tuple[Envelope, bytes]], boot: str) -> Path:
    """A fresh file as a crash leaves it: the batch written in boot `boot`, no link made."""
    path = tmp_path / "spool" / "fresh" / f"{os.getpid()}.0123456789abcdef"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(batchfile, "boot_id", lambda: boot)
        path.write_bytes(b"".join(batchfile.encode(batch, trailer=True)))
    return path


def test_sweep_restores_the_links_a_reboot_lost(spool: Spool, tmp_path: Path) -> None:
    batch = items(spool, b"one\r\n", b"two\r\n")
    plant(spool, tmp_path, batch, OTHER_BOOT)
    recovery = spool.sweep()
    assert (recovery.restored, recovery.removed_partial) == (2, 0)
    assert spool.ids() == sorted(e.queue_id for e, _ in batch)
    for envelope, message in batch:
        assert spool.message(envelope.queue_id) == message
    assert names(tmp_path / "spool" / "fresh") == []


def test_sweep_keeps_links_that_survived_and_restores_only_the_missing(
    spool: Spool, tmp_path: Path
) -> None:
    batch = items(spool, b"one\r\n", b"two\r\n")
    path = plant(spool, tmp_path, batch, OTHER_BOOT)
    os.link(path, tmp_path / "spool" / "queue" / batch[0][0].queue_id)
    assert spool.sweep().restored == 1
    assert spool.ids() == sorted(e.queue_id for e, _ in batch)


def test_in_the_same_boot_a_missing_link_means_delivered(spool: Spool, tmp_path: Path) -> None:
    batch = items(spool, b"one\r\n")
    plant(spool, tmp_path, batch, batchfile.boot_id())
    recovery = spool.sweep()
    assert (recovery.restored, recovery.removed_partial) == (0, 0)
    assert spool.ids() == []
    assert names(tmp_path / "spool" / "fresh") == []


def test_a_batch_written_where_the_boot_was_unknown_is_restored(
    spool: Spool, tmp_path: Path
) -> None:
    batch = items(spool, b"one\r\n")
    plant(spool, tmp_path, batch, "-")
    assert spool.sweep().restored == 1


@pytest.mark.parametrize("damage", ["cut", "flip"])
def test_sweep_removes_a_write_cut_short_and_counts_it(
    spool: Spool, tmp_path: Path, damage: str
) -> None:
    batch = items(spool, b"one\r\n", b"two\r\n")
    path = plant(spool, tmp_path, batch, OTHER_BOOT)
    data = bytearray(path.read_bytes())
    if damage == "cut":
        del data[-10:]
    else:
        data[len(data) // 2] ^= 0x20
    path.write_bytes(bytes(data))
    recovery = spool.sweep()
    assert (recovery.restored, recovery.removed_partial) == (0, 1)
    assert spool.ids() == []
    assert names(tmp_path / "spool" / "fresh") == []


def test_sweep_drops_a_damaged_fresh_name_whose_message_is_linked(
    spool: Spool, tmp_path: Path
) -> None:
    batch = items(spool, b"one\r\n")
    path = plant(spool, tmp_path, batch, OTHER_BOOT)
    with path.open("ab") as file:
        file.write(b"junk")
    os.link(path, tmp_path / "spool" / "queue" / batch[0][0].queue_id)
    recovery = spool.sweep()
    assert (recovery.restored, recovery.removed_partial) == (0, 0)
    assert spool.ids() == [batch[0][0].queue_id]
    assert names(tmp_path / "spool" / "fresh") == []


def test_sweep_removes_empty_files_and_anything_else_in_fresh(spool: Spool, tmp_path: Path) -> None:
    fresh_dir = tmp_path / "spool" / "fresh"
    (fresh_dir / f"{os.getpid()}.0123456789abcdef").touch()
    (fresh_dir / "stray").write_bytes(b"not a batch")
    (fresh_dir / "subdir").mkdir()
    (fresh_dir / "subdir" / "inner").touch()
    (fresh_dir / "link").symlink_to(tmp_path / "outside")
    recovery = spool.sweep()
    assert recovery.removed_partial == 1  # the stray file: a write no one acknowledged
    assert names(fresh_dir) == []


def dead_pid() -> int:
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(child.stdout)


def test_the_first_commit_reaps_files_of_dead_processes_only(spool: Spool, tmp_path: Path) -> None:
    fresh_dir = tmp_path / "spool" / "fresh"
    dead = fresh_dir / f"{dead_pid()}.0123456789abcdef"
    dead.touch()
    alive = fresh_dir / f"{os.getppid()}.0123456789abcdef"
    alive.touch()
    foreign = fresh_dir / "not-ours"
    foreign.touch()
    spool.put_many(items(spool, b"a\r\n"))
    assert not dead.exists()
    assert alive.exists()
    assert foreign.exists()
    spool.close()
    assert names(fresh_dir) == sorted([alive.name, foreign.name])


# --- the batch trailer -----------------------------------------------------------------------

_ids = st.integers(0, 2**40 - 1).map(lambda n: new_queue_id(1_714_564_800.0, n.to_bytes(5, "big")))
_batches = st.dictionaries(_ids, st.binary(max_size=200), min_size=1, max_size=8)


def encoded(messages: dict[str, bytes]) -> bytes:
    batch = [(make_envelope(q, m), m) for q, m in messages.items()]
    return b"".join(batchfile.encode(batch, trailer=True))


@settings(max_examples=100, deadline=None)
@given(_batches)
def test_check_reads_back_the_ids_and_boot_of_a_whole_batch(messages: dict[str, bytes]) -> None:
    data = encoded(messages)
    assert batchfile.check(data) == (list(messages), batchfile.boot_id())
    # The trailer is invisible to the readers of records.
    for queue_id, message in messages.items():
        offset, length = batchfile.locate(data, queue_id, len(data))
        assert data[offset : offset + length].endswith(b"\n" + message)


@settings(max_examples=200, deadline=None)
@given(_batches, st.data())
def test_check_refuses_any_cut_or_changed_byte(
    messages: dict[str, bytes], data: st.DataObject
) -> None:
    whole = encoded(messages)
    cut = data.draw(st.integers(0, len(whole) - 1))
    assert batchfile.check(whole[:cut]) is None
    where = data.draw(st.integers(0, len(whole) - 1))
    flip = data.draw(st.integers(1, 255))
    changed = bytearray(whole)
    changed[where] ^= flip
    assert batchfile.check(bytes(changed)) is None
    assert batchfile.check(whole + b"x") is None


def test_check_refuses_a_batch_without_a_trailer() -> None:
    queue_id = new_queue_id(1_714_564_800.0, b"\x00" * 5)
    message = b"m\r\n"
    data = b"".join(batchfile.encode([(make_envelope(queue_id, message), message)]))
    assert batchfile.check(data) is None
    assert batchfile.check(b"") is None


def test_boot_id_is_the_kernels_or_a_dash_not_remembered(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(batchfile, "_boot", None)
    assert len(batchfile.boot_id()) == 36
    fake = tmp_path / "boot_id"
    monkeypatch.setattr(batchfile, "_BOOT_ID", str(fake))
    monkeypatch.setattr(batchfile, "_boot", None)
    assert batchfile.boot_id() == "-"  # no such file
    fake.write_bytes(b"not an id\n")
    assert batchfile.boot_id() == "-"
    fake.write_bytes(OTHER_BOOT.encode() + b"\n")
    assert batchfile.boot_id() == OTHER_BOOT  # the failures were not remembered


def test_sweep_syncs_queue_before_it_removes_any_fresh_name(
    spool: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = tmp_path / "spool" / "queue"
    fresh_dir = tmp_path / "spool" / "fresh"
    kept, restored = items(spool, b"kept\r\n"), items(spool, b"restored\r\n")
    os.link(plant(spool, tmp_path, kept, batchfile.boot_id()), queue / kept[0][0].queue_id)
    other = fresh_dir / f"{os.getpid()}.fedcba9876543210"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(batchfile, "boot_id", lambda: OTHER_BOOT)
        other.write_bytes(b"".join(batchfile.encode(restored, trailer=True)))
    events: list[str] = []
    real_unlink = Path.unlink

    def unlink(self: Path, missing_ok: bool = False) -> None:
        events.append(f"unlink {self.parent.name}")
        real_unlink(self, missing_ok)

    def recording_fsync_dir(path: Path) -> None:
        events.append(f"sync {path.name}")
        fsync_dir(path)

    monkeypatch.setattr(Path, "unlink", unlink)
    monkeypatch.setattr("sendgate.store.local.spool.fsync_dir", recording_fsync_dir)
    assert spool.sweep().restored == 1
    fresh_events = [e for e in events if e in ("sync queue", "unlink fresh", "sync fresh")]
    assert fresh_events == ["sync queue", "unlink fresh", "unlink fresh", "sync fresh"]
    assert spool.ids() == sorted(e.queue_id for e, _ in kept + restored)


def test_a_commit_that_runs_into_close_syncs_its_links_itself(
    files: FreshFiles, dirs: tuple[Path, Path]
) -> None:
    fresh_dir, queue = dirs
    path = files.take()
    os.link(path, queue / "late")
    files.close()  # while the commit was under way
    files.committed(path)
    assert names(fresh_dir) == []
    assert (queue / "late").exists()


def test_a_sync_that_cannot_make_files_still_syncs_and_lets_names_go(
    files: FreshFiles, dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh_dir, _ = dirs
    path = files.take()
    files.committed(path)
    before = len(names(fresh_dir))
    fill_disk(monkeypatch, lambda _path, flags: bool(flags & os.O_CREAT))
    files.sync(make=4)
    left = names(fresh_dir)
    # The committed name was given up (spent), and nothing was made.
    assert Path(path).name not in left
    assert Path(path).name + fresh.SPENT in left
    assert len([name for name in left if not name.endswith(fresh.SPENT)]) == before - 1
    monkeypatch.undo()
    files.close()


def test_a_fresh_file_another_process_reaps_first_is_skipped(
    spool: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh_dir = tmp_path / "spool" / "fresh"
    vanishing = fresh_dir / f"{dead_pid()}.0123456789abcdef"
    vanishing.touch()
    real_lstat = os.lstat

    def lstat(path: str | os.PathLike[str]) -> os.stat_result:
        if Path(path) == vanishing:
            vanishing.unlink()  # the other process was quicker
        return real_lstat(path)

    monkeypatch.setattr(os, "lstat", lstat)
    spool.put_many(items(spool, b"a\r\n"))
    monkeypatch.undo()
    spool.close()
    assert names(fresh_dir) == []


def test_the_first_commit_leaves_files_named_for_this_process_alone(
    spool: Spool, tmp_path: Path
) -> None:
    mine = tmp_path / "spool" / "fresh" / f"{os.getpid()}.0123456789abcdef"
    mine.touch()  # another Spool of this process may be using it
    spool.put_many(items(spool, b"a\r\n"))
    assert mine.exists()
    spool.close()


def test_put_many_of_nothing_is_a_bug_and_takes_no_file(spool: Spool, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="a batch holds 1 to"):
        spool.put_many([])
    assert names(tmp_path / "spool" / "fresh") == []


def test_check_file_reads_a_big_batch_in_chunks(spool: Spool, tmp_path: Path) -> None:
    big = b"x" * (3 << 20) + b"\r\n"
    batch = items(spool, b"small\r\n", big)
    path = plant(spool, tmp_path, batch, OTHER_BOOT)
    assert batchfile.check_file(path) == ([e.queue_id for e, _ in batch], OTHER_BOOT)
    with path.open("r+b") as file:
        file.seek(2 << 20)
        file.write(b"y")
    assert batchfile.check_file(path) is None


def test_a_take_whose_directory_sync_fails_leaves_no_file(
    files: FreshFiles, dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    break_syncs(monkeypatch)
    with pytest.raises(OSError, match="Input/output error"):
        files.take()
    assert names(dirs[0]) == []
    monkeypatch.undo()
    files.close()


def test_put_many_refuses_a_size_that_is_not_the_messages(spool: Spool) -> None:
    [(envelope, _)] = items(spool, b"four")
    with pytest.raises(ValueError, match="envelope size 4 != message size 3"):
        spool.put_many([(envelope, b"two")])


def test_put_many_where_fresh_cannot_be_read_names_it(spool: Spool, tmp_path: Path) -> None:
    fresh_dir = tmp_path / "spool" / "fresh"
    fresh_dir.rmdir()
    fresh_dir.write_bytes(b"")
    with pytest.raises(SpoolError, match=r"cannot read .*/spool/fresh: Not a directory"):
        spool.put_many(items(spool, b"a\r\n"))

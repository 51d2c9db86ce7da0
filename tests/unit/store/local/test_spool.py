"""Tests for sendgate.store.local.spool: durable put, readback, sweep, state and retry files."""

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from tests.support.mail import MESSAGE, make_envelope

import sendgate
from sendgate.errors import SpoolError, SpoolFullError
from sendgate.fsutil import fsync_dir
from sendgate.store.envelope import Envelope, new_queue_id
from sendgate.store.local.spool import Spool
from sendgate.store.queue import Recovery

ID_PATTERN = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{17}")
DELETE = object()  # marks a field to drop in the malformed-envelope cases

# Runs one put that cannot fit (RLIMIT_FSIZE or a tiny file system), then one small put.
_CONSTRAINED_PUT = textwrap.dedent(
    """
    import json, resource, signal, sys
    from pathlib import Path
    from sendgate.errors import SpoolError
    from sendgate.store.envelope import Envelope
    from sendgate.store.local.spool import Spool

    root, size, fsize_limit = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    spool = Spool(root)
    if fsize_limit:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, resource.RLIM_INFINITY))

    def put(size):
        env = Envelope(spool.new_id(), "a@example.com", ("b@example.com",), "alice", 0.0, size)
        try:
            spool.put(env, b"x" * size)
        except SpoolError as exc:
            return [type(exc).__name__, str(exc)]
        return None

    failed = put(size)
    leftovers = sorted(p.name for d in ("tmp", "queue") for p in (root / d).iterdir())
    retried = put(1000)
    print(json.dumps({"failed": failed, "leftovers": leftovers, "retried": retried}))
    """
)


def file_mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def names(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def run_constrained_put(argv: list[str]) -> dict[str, Any]:
    src = str(Path(sendgate.__file__).parents[1])
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": src},
    )
    report: dict[str, Any] = json.loads(result.stdout)
    return report


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool")


def test_spool_ids_are_unique_within_one_millisecond(tmp_path: Path) -> None:
    spool = Spool(tmp_path, clock=lambda: 1_714_564_800.0)
    ids = [spool.new_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert all(ID_PATTERN.fullmatch(queue_id) for queue_id in ids)


def test_forked_processes_make_different_ids_in_the_same_millisecond(tmp_path: Path) -> None:
    # The acceptors are forked from one supervisor: their ids' random bits must not repeat.
    spool = Spool(tmp_path, clock=lambda: 1_714_564_800.0)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_end)
            os.write(write_end, " ".join(spool.new_id() for _ in range(50)).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    mine = {spool.new_id() for _ in range(50)}
    with os.fdopen(read_end, "rb") as pipe:
        theirs = set(pipe.read().decode().split())
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(theirs) == 50
    assert not mine & theirs


def test_spool_ids_follow_the_clock(tmp_path: Path) -> None:
    times = iter(1_714_564_800 + n / 1000 for n in range(500))
    spool = Spool(tmp_path, clock=lambda: next(times))
    ids = [spool.new_id() for _ in range(500)]
    assert ids == sorted(ids)


def test_spool_root_and_subdirectories_are_private(tmp_path: Path) -> None:
    root = tmp_path / "a" / "spool"
    Spool(root)
    assert names(root) == ["corrupt", "fresh", "hold", "queue", "retry", "state", "tmp"]
    for directory in (root, *(root / name for name in names(root))):
        assert file_mode(directory) == 0o700


def test_spool_on_a_regular_file_is_a_one_line_error(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    root.write_bytes(b"")
    with pytest.raises(SpoolError, match=f"^cannot create spool directory {root}: File exists$"):
        Spool(root)


def test_queued_says_whether_a_message_is_queued_and_errors_are_not_a_no(
    spool: Spool, tmp_path: Path
) -> None:
    envelope = make_envelope(spool.new_id())
    spool.put(envelope, MESSAGE)
    assert spool.queued(envelope.queue_id)
    assert not spool.queued(spool.new_id())
    looping = spool.new_id()
    os.symlink(looping, tmp_path / "spool" / "queue" / looping)  # a link to itself: ELOOP
    with pytest.raises(SpoolError, match=f"cannot read spool file .*{looping}: "):
        spool.queued(looping)


def test_put_then_read_back_byte_identical(spool: Spool, tmp_path: Path) -> None:
    envelope = make_envelope(spool.new_id())
    spool.put(envelope, MESSAGE)
    assert spool.ids() == [envelope.queue_id]
    assert spool.envelope(envelope.queue_id) == envelope
    assert spool.message(envelope.queue_id) == MESSAGE
    assert names(tmp_path / "spool" / "queue") == [envelope.queue_id]
    assert names(tmp_path / "spool" / "tmp") == []


def test_queue_file_is_envelope_line_then_message_verbatim(spool: Spool, tmp_path: Path) -> None:
    envelope = make_envelope(spool.new_id(), sender="用户@例子.广告", smtputf8=True)
    spool.put(envelope, MESSAGE)
    data = (tmp_path / "spool" / "queue" / envelope.queue_id).read_bytes()
    line, newline, rest = data.partition(b"\n")
    assert newline == b"\n"
    assert Envelope.from_json(line) == envelope
    assert "用户@例子.广告".encode() in line  # the envelope line is UTF-8, not \\u escapes
    # Split at the first LF only: the bare LF inside MESSAGE stays part of the message.
    assert rest == MESSAGE
    assert data == envelope.to_json() + b"\n" + MESSAGE


def test_spool_files_are_mode_600(spool: Spool, tmp_path: Path) -> None:
    queue_id = spool.new_id()
    spool.put(make_envelope(queue_id), MESSAGE)
    assert file_mode(tmp_path / "spool" / "queue" / queue_id) == 0o600


def test_empty_message_round_trips(spool: Spool) -> None:
    envelope = make_envelope(spool.new_id(), b"")
    spool.put(envelope, b"")
    assert spool.message(envelope.queue_id) == b""


def test_put_with_wrong_size_is_a_bug(spool: Spool) -> None:
    with pytest.raises(ValueError, match="envelope size"):
        spool.put(make_envelope(spool.new_id(), b"short"), MESSAGE)
    assert spool.ids() == []


def test_ids_are_oldest_first(tmp_path: Path) -> None:
    times = iter([1_714_564_800.0, 1_714_564_900.0, 1_714_565_000.0])
    spool = Spool(tmp_path, clock=lambda: next(times))
    ids = [spool.new_id() for _ in range(3)]
    for queue_id in reversed(ids):
        spool.put(make_envelope(queue_id), MESSAGE)
    assert spool.ids() == ids


def test_remove_uncommits_and_deletes(spool: Spool, tmp_path: Path) -> None:
    kept, removed = spool.new_id(), spool.new_id()
    spool.put(make_envelope(kept), MESSAGE)
    spool.put(make_envelope(removed), MESSAGE)
    spool.remove(removed)
    assert spool.ids() == [kept]
    assert names(tmp_path / "spool" / "queue") == [kept]
    with pytest.raises(SpoolError, match=f"^unknown queue id {removed}$"):
        spool.remove(removed)
    assert spool.message(kept) == MESSAGE


def test_remove_of_an_unknown_id_is_a_spool_error(spool: Spool) -> None:
    queue_id = spool.new_id()
    with pytest.raises(SpoolError, match=f"^unknown queue id {queue_id}$"):
        spool.remove(queue_id)


def test_remove_failure_names_the_file(spool: Spool, tmp_path: Path) -> None:
    queue_id = spool.new_id()
    path = tmp_path / "spool" / "queue" / queue_id
    path.mkdir()  # unlink(2) refuses a directory
    with pytest.raises(SpoolError, match=f"^cannot remove spool file {path}: Is a directory$"):
        spool.remove(queue_id)
    assert path.is_dir()


def test_unknown_id_is_a_spool_error(spool: Spool) -> None:
    queue_id = spool.new_id()
    with pytest.raises(SpoolError, match=f"^unknown queue id {queue_id}$"):
        spool.envelope(queue_id)
    with pytest.raises(SpoolError, match=f"^unknown queue id {queue_id}$"):
        spool.message(queue_id)


@pytest.mark.parametrize(
    "bad_id",
    [
        "../x",
        "..",
        "",
        "/etc/passwd",
        "01HX0000000000ABC/",
        "01HX0000000000ABCD\n",
        "01hx0000000000abcd",
        "01HX0000000000ABCI",
        "81HX0000000000ABCD",
        "01HX0000000000ABC",
    ],
)
def test_malformed_ids_are_rejected(spool: Spool, bad_id: str) -> None:
    expected = f"^invalid queue id {re.escape(repr(bad_id))}$"
    with pytest.raises(SpoolError, match=expected):
        spool.envelope(bad_id)
    with pytest.raises(SpoolError, match=expected):
        spool.message(bad_id)
    with pytest.raises(SpoolError, match=expected):
        spool.remove(bad_id)


def test_corrupt_envelope_on_disk_names_file_and_field(spool: Spool, tmp_path: Path) -> None:
    queue_id = spool.new_id()
    spool.put(make_envelope(queue_id), MESSAGE)
    path = tmp_path / "spool" / "queue" / queue_id
    line, _, message = path.read_bytes().partition(b"\n")
    raw = json.loads(line)
    raw["size"] = "big"
    path.write_bytes(json.dumps(raw).encode() + b"\n" + message)
    with pytest.raises(SpoolError, match=f"^corrupt envelope {path}: .*'size'"):
        spool.envelope(queue_id)
    # message() does not parse the envelope line; it only needs to find where it ends.
    assert spool.message(queue_id) == MESSAGE


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty-file"),
        pytest.param(b'{"version": 1, "queue_id": "01HX', id="envelope-cut-short"),
    ],
)
def test_queue_file_without_an_envelope_line_is_corrupt(
    spool: Spool, tmp_path: Path, content: bytes
) -> None:
    queue_id = spool.new_id()
    path = tmp_path / "spool" / "queue" / queue_id
    path.write_bytes(content)
    expected = f"^corrupt envelope {re.escape(str(path))}: no envelope line$"
    with pytest.raises(SpoolError, match=expected):
        spool.envelope(queue_id)
    with pytest.raises(SpoolError, match=expected):
        spool.message(queue_id)


def test_envelope_filed_under_another_id_is_corrupt(spool: Spool, tmp_path: Path) -> None:
    queue_id, other = spool.new_id(), spool.new_id()
    spool.put(make_envelope(queue_id), MESSAGE)
    queue = tmp_path / "spool" / "queue"
    (queue / queue_id).rename(queue / other)
    with pytest.raises(SpoolError, match=f"names queue id {queue_id}$"):
        spool.envelope(other)


def test_unreadable_queue_entry_is_an_io_error_naming_it(spool: Spool, tmp_path: Path) -> None:
    queue_id = spool.new_id()
    path = tmp_path / "spool" / "queue" / queue_id
    path.mkdir()
    expected = f"^cannot read spool file {re.escape(str(path))}: Is a directory$"
    with pytest.raises(SpoolError, match=expected):
        spool.envelope(queue_id)
    with pytest.raises(SpoolError, match=expected):
        spool.message(queue_id)


def test_unlistable_queue_is_a_one_line_error(spool: Spool, tmp_path: Path) -> None:
    queue = tmp_path / "spool" / "queue"
    queue.rmdir()
    queue.write_bytes(b"")
    with pytest.raises(SpoolError, match=f"^cannot list spool directory {queue}: Not a directory$"):
        spool.ids()


def test_put_onto_an_existing_message_fails_and_touches_nothing(
    spool: Spool, tmp_path: Path
) -> None:
    queue = tmp_path / "spool" / "queue"
    queue_id = spool.new_id()
    (queue / queue_id).write_bytes(b"someone else's")
    expected = f"cannot commit spool file {queue / queue_id}: File exists"
    with pytest.raises(SpoolError, match=f"^{re.escape(expected)}$"):
        spool.put(make_envelope(queue_id), MESSAGE)
    assert (queue / queue_id).read_bytes() == b"someone else's"
    assert names(queue) == [queue_id]
    assert names(tmp_path / "spool" / "tmp") == []


def test_put_leaves_another_writers_tmp_file_alone(spool: Spool, tmp_path: Path) -> None:
    root = tmp_path / "spool"
    queue_id = spool.new_id()
    theirs = root / "tmp" / queue_id
    theirs.write_bytes(b"another writer's bytes")
    expected = f"cannot write spool file {theirs}: File exists"
    with pytest.raises(SpoolError, match=f"^{re.escape(expected)}$") as excinfo:
        spool.put(make_envelope(queue_id), MESSAGE)
    assert not isinstance(excinfo.value, SpoolFullError)
    # O_EXCL failed, so the clean-up must not delete a file this put did not create.
    assert theirs.read_bytes() == b"another writer's bytes"
    assert names(root / "tmp") == [queue_id]
    assert names(root / "queue") == []


def test_put_whose_rename_fails_leaves_nothing(spool: Spool, tmp_path: Path) -> None:
    root = tmp_path / "spool"
    queue = root / "queue"
    queue.rmdir()
    queue.write_bytes(b"")  # rename(2) into a regular file fails with ENOTDIR
    queue_id = spool.new_id()
    expected = f"cannot commit spool file {queue / queue_id}: Not a directory"
    with pytest.raises(SpoolError, match=f"^{re.escape(expected)}$"):
        spool.put(make_envelope(queue_id), MESSAGE)
    assert names(root / "tmp") == []
    assert queue.read_bytes() == b""


def test_put_whose_directory_sync_fails_is_not_queued(
    spool: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A failing fsync of a healthy directory cannot be provoked for real, so inject the error.
    def failing_fsync_dir(path: Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("sendgate.store.local.spool.fsync_dir", failing_fsync_dir)
    root = tmp_path / "spool"
    queue_id = spool.new_id()
    expected = f"cannot sync spool directory {root / 'queue'}: No space left on device"
    with pytest.raises(SpoolFullError, match=f"^{re.escape(expected)}$"):
        spool.put(make_envelope(queue_id), MESSAGE)
    # Its 250 is never sent, so the message must not stay behind to be delivered anyway.
    assert names(root / "queue") == []
    assert names(root / "tmp") == []


def test_put_failing_mid_write_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    report = run_constrained_put(
        [sys.executable, "-c", _CONSTRAINED_PUT, str(root), "200000", "65536"]
    )
    kind, message = report["failed"]
    assert kind == "SpoolError"
    expected = rf"cannot write spool file {re.escape(str(root))}/tmp/{ID_PATTERN.pattern}: "
    assert re.fullmatch(expected + "File too large", message)
    assert report["leftovers"] == []
    assert report["retried"] is None  # a put that fits still works afterwards
    assert names(root / "tmp") == []
    assert len(names(root / "queue")) == 1


def test_put_on_a_full_disk_raises_spool_full_and_frees_the_space(tmp_path: Path) -> None:
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    mount = 'mount -t tmpfs -o size=64k tmpfs "$1"'
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) for a private tiny file system")
    probe = subprocess.run(
        ["unshare", "--mount", "sh", "-c", mount, "sh", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a private mount namespace: {probe.stderr.strip()}")
    root = mount_point / "spool"
    script = f'{mount} && exec "$2" -c "$3" "$1/spool" 200000 0'
    shell = ["sh", "-c", script, "sh", str(mount_point), sys.executable, _CONSTRAINED_PUT]
    report = run_constrained_put(["unshare", "--mount", *shell])
    kind, message = report["failed"]
    assert kind == "SpoolFullError"
    expected = rf"cannot write spool file {re.escape(str(root))}/tmp/{ID_PATTERN.pattern}: "
    assert re.fullmatch(expected + "No space left on device", message)
    assert report["leftovers"] == []
    # 1000 bytes would not fit beside a leftover partial file: the clean-up gave the space back.
    assert report["retried"] is None
    assert names(mount_point) == []  # the tiny file system lived only in the subprocess


THREADS = 16
PUTS_PER_THREAD = 200


def put_from_threads(
    spool: Spool, on_return: Callable[[str], None] | None = None
) -> dict[str, bytes]:
    """Run THREADS x PUTS_PER_THREAD puts, all threads starting together; return id -> message."""
    start = threading.Barrier(THREADS)

    def worker(thread: int) -> dict[str, bytes]:
        start.wait(timeout=60)
        stored: dict[str, bytes] = {}
        for n in range(PUTS_PER_THREAD):
            queue_id = spool.new_id()
            message = MESSAGE + b"thread %d message %d\r\n" % (thread, n)
            spool.put(make_envelope(queue_id, message), message)
            if on_return is not None:
                on_return(queue_id)
            stored[queue_id] = message
        return stored

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        results = list(pool.map(worker, range(THREADS)))
    return {queue_id: message for stored in results for queue_id, message in stored.items()}


def test_concurrent_puts_are_all_listed_and_readable(spool: Spool, tmp_path: Path) -> None:
    messages = put_from_threads(spool)
    assert len(messages) == THREADS * PUTS_PER_THREAD
    assert spool.ids() == sorted(messages)
    for queue_id, message in messages.items():
        assert spool.message(queue_id) == message
        assert spool.envelope(queue_id) == make_envelope(queue_id, message)
    assert names(tmp_path / "spool" / "tmp") == []


def test_every_put_returns_after_a_directory_sync_that_began_after_its_rename(
    spool: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = tmp_path / "spool" / "queue"
    real_rename = os.rename
    lock = threading.Lock()
    events: list[tuple[str, str]] = []  # (kind, queue id or ""), in the order things happened

    def rename(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        # Held across the real call, so no sync can start between the rename and its record.
        with lock:
            real_rename(src, dst)
            if Path(dst).parent == queue:
                events.append(("rename", Path(dst).name))

    def recording_fsync_dir(path: Path) -> None:
        if path != queue:
            fsync_dir(path)
            return
        with lock:
            events.append(("sync-start", ""))
        fsync_dir(path)
        with lock:
            events.append(("sync-end", ""))

    def returned(queue_id: str) -> None:
        with lock:
            events.append(("return", queue_id))

    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr("sendgate.store.local.spool.fsync_dir", recording_fsync_dir)
    messages = put_from_threads(spool, returned)

    position = {(kind, queue_id): n for n, (kind, queue_id) in enumerate(events) if queue_id}
    starts = [n for n, (kind, _) in enumerate(events) if kind == "sync-start"]
    ends = [n for n, (kind, _) in enumerate(events) if kind == "sync-end"]
    assert len(starts) == len(ends)
    assert all(start < end for start, end in zip(starts, ends, strict=True))
    for queue_id in messages:
        renamed, back = position["rename", queue_id], position["return", queue_id]
        # Syncs never overlap, so the first one to start after the rename is the first to end.
        first = next(k for k, start in enumerate(starts) if start > renamed)
        assert ends[first] < back, f"put of {queue_id} returned before its rename was synced"
    assert spool.ids() == sorted(messages)


def test_a_put_whose_rename_another_sync_covered_does_not_sync_again(
    spool: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = tmp_path / "spool" / "queue"
    real_rename = os.rename
    others = THREADS - 1
    changed = threading.Condition()
    renames: list[str] = []
    syncs: list[int] = []
    first_sync_entered = threading.Event()

    def rename(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        real_rename(src, dst)
        with changed:
            renames.append(Path(dst).name)
            changed.notify_all()

    def gated_fsync_dir(path: Path) -> None:
        if path != queue:
            fsync_dir(path)
            return
        with changed:
            syncs.append(len(renames))
            if len(syncs) == 1:
                # Hold the first sync until every other put has renamed and queued up behind it.
                first_sync_entered.set()
                assert changed.wait_for(lambda: len(renames) == 1 + others, timeout=60)
        fsync_dir(path)

    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr("sendgate.store.local.spool.fsync_dir", gated_fsync_dir)
    ids = [spool.new_id() for _ in range(1 + others)]

    def put(queue_id: str) -> None:
        spool.put(make_envelope(queue_id), MESSAGE)

    with ThreadPoolExecutor(max_workers=1 + others) as pool:
        first = pool.submit(put, ids[0])
        assert first_sync_entered.wait(timeout=60)
        rest = [pool.submit(put, queue_id) for queue_id in ids[1:]]
        for future in [first, *rest]:
            future.result(timeout=60)
    assert spool.ids() == sorted(ids)
    assert syncs[0] == 1
    # The next sync covers every rename done by then; the puts it covered issue none.
    assert len(syncs) < 1 + others


def test_sweep_empties_tmp_and_sets_corrupt_queue_files_aside(spool: Spool, tmp_path: Path) -> None:
    root = tmp_path / "spool"
    queue = root / "queue"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"keep me")
    (root / "tmp" / spool.new_id()).write_bytes(b'{"version": 1')
    (root / "tmp" / "junk").mkdir()
    (root / "tmp" / "junk" / "deeper").mkdir()
    (root / "tmp" / "junk" / "deeper" / "file").write_bytes(b"")
    (root / "tmp" / "link").symlink_to(outside, target_is_directory=True)

    whole, no_line, bad_json = spool.new_id(), spool.new_id(), spool.new_id()
    spool.put(make_envelope(whole), MESSAGE)
    (queue / no_line).write_bytes(b'{"version": 1, "queue_id": "01HX')
    (queue / bad_json).write_bytes(b"{not json}\n" + MESSAGE)
    (queue / "README").write_bytes(b"not ours")
    (queue / f"{whole}.lock").write_bytes(b"")

    result = spool.sweep()

    assert result == Recovery(
        removed_partial=3, corrupt=tuple(sorted([no_line, bad_json])), unknown_entries=2
    )
    assert names(root / "tmp") == []
    assert names(outside) == ["precious"]  # the symlink was removed, not followed
    assert (outside / "precious").read_bytes() == b"keep me"
    assert names(queue) == sorted([whole, "README", f"{whole}.lock"])
    assert (queue / "README").read_bytes() == b"not ours"
    assert names(root / "corrupt") == sorted([no_line, bad_json])
    assert (root / "corrupt" / no_line).read_bytes() == b'{"version": 1, "queue_id": "01HX'
    assert (root / "corrupt" / bad_json).read_bytes() == b"{not json}\n" + MESSAGE
    assert spool.ids() == [whole]
    assert spool.message(whole) == MESSAGE


def test_sweep_keeps_an_earlier_corrupt_file_with_the_same_id(spool: Spool, tmp_path: Path) -> None:
    root = tmp_path / "spool"
    queue_id = spool.new_id()
    (root / "corrupt" / queue_id).write_bytes(b"first")
    (root / "queue" / queue_id).write_bytes(b"second")
    assert spool.sweep() == Recovery(removed_partial=0, corrupt=(queue_id,), unknown_entries=0)
    kept = names(root / "corrupt")
    assert len(kept) == 2
    assert kept[0] == queue_id
    assert re.fullmatch(rf"{queue_id}\.[0-9a-f]{{8}}", kept[1])
    assert (root / "corrupt" / queue_id).read_bytes() == b"first"
    assert (root / "corrupt" / kept[1]).read_bytes() == b"second"
    assert names(root / "queue") == []


def test_sweep_of_a_clean_spool_changes_nothing(spool: Spool, tmp_path: Path) -> None:
    root = tmp_path / "spool"
    for _ in range(3):
        queue_id = spool.new_id()
        spool.put(make_envelope(queue_id), MESSAGE)

    def snapshot() -> dict[str, bytes | None]:
        return {
            str(path.relative_to(root)): None if path.is_dir() else path.read_bytes()
            for path in sorted(root.rglob("*"))
        }

    before = snapshot()
    assert spool.sweep() == Recovery(0, (), 0)
    assert snapshot() == before


def test_sweep_raises_a_read_error_instead_of_moving_anything(
    tmp_path: Path,
) -> None:
    root = tmp_path / "spool"
    spool = Spool(root)
    unreadable = new_queue_id(1_714_564_800.0, bytes(5))
    corrupt = new_queue_id(1_714_564_801.0, bytes(5))
    (root / "queue" / unreadable).mkdir()  # open(2) for reading fails: EISDIR
    (root / "queue" / corrupt).write_bytes(b"no envelope line")
    expected = f"cannot read spool file {root / 'queue' / unreadable}: Is a directory"
    with pytest.raises(SpoolError, match=f"^{re.escape(expected)}$"):
        spool.sweep()
    assert names(root / "corrupt") == []
    assert names(root / "queue") == sorted([unreadable, corrupt])
    assert (root / "queue" / unreadable).is_dir()


def test_sweep_of_an_unlistable_tmp_names_it(spool: Spool, tmp_path: Path) -> None:
    tmp = tmp_path / "spool" / "tmp"
    tmp.rmdir()
    tmp.write_bytes(b"")
    with pytest.raises(SpoolError, match=f"^cannot sweep spool path {tmp}: Not a directory$"):
        spool.sweep()


def test_sweep_that_cannot_move_a_corrupt_file_names_it_and_keeps_it(
    spool: Spool, tmp_path: Path
) -> None:
    root = tmp_path / "spool"
    (root / "corrupt").rmdir()
    (root / "corrupt").write_bytes(b"")  # rename(2) into a regular file fails with ENOTDIR
    queue_id = spool.new_id()
    path = root / "queue" / queue_id
    path.write_bytes(b"no envelope line")
    expected = f"cannot sweep spool path {path}: Not a directory"
    with pytest.raises(SpoolError, match=f"^{re.escape(expected)}$"):
        spool.sweep()
    assert path.read_bytes() == b"no envelope line"


def test_corrupt_envelope_line_that_is_not_json_names_the_file(
    spool: Spool, tmp_path: Path
) -> None:
    queue_id = spool.new_id()
    path = tmp_path / "spool" / "queue" / queue_id
    path.write_bytes(b"{not json}\n" + MESSAGE)
    with pytest.raises(SpoolError, match=f"^corrupt envelope {path}: envelope is not valid JSON"):
        spool.envelope(queue_id)
    assert spool.message(queue_id) == MESSAGE


def test_state_is_absent_before_the_first_write_then_replaced(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    envelope = make_envelope(spool.new_id())
    spool.put(envelope, MESSAGE)
    assert spool.read_state(envelope.queue_id) is None
    spool.write_state(envelope.queue_id, b"first")
    spool.write_state(envelope.queue_id, b"second")
    assert spool.read_state(envelope.queue_id) == b"second"
    assert names(tmp_path / "spool" / "tmp") == []


def test_remove_takes_state_and_retry_flag_with_the_message(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    envelope = make_envelope(spool.new_id())
    spool.put(envelope, MESSAGE)
    spool.write_state(envelope.queue_id, b"state")
    spool.request_retry(envelope.queue_id)
    spool.remove(envelope.queue_id)
    assert names(tmp_path / "spool" / "state") == []
    assert names(tmp_path / "spool" / "retry") == []
    assert spool.ids() == []


def test_retry_requests_are_taken_once_and_only_for_queued_ids(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    envelope = make_envelope(spool.new_id())
    spool.put(envelope, MESSAGE)
    spool.request_retry(envelope.queue_id)
    with pytest.raises(SpoolError, match="unknown queue id"):
        spool.request_retry(spool.new_id())
    (tmp_path / "spool" / "retry" / "not-an-id").touch()
    assert spool.take_retry_requests() == [envelope.queue_id]
    assert spool.take_retry_requests() == []


def test_sweep_deletes_state_of_messages_no_longer_queued(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    kept = make_envelope(spool.new_id())
    spool.put(kept, MESSAGE)
    spool.write_state(kept.queue_id, b"kept")
    orphan = spool.new_id()
    (tmp_path / "spool" / "state" / orphan).write_bytes(b"orphan")
    spool.sweep()
    assert names(tmp_path / "spool" / "state") == [kept.queue_id]

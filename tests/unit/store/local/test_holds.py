"""Tests for held messages in the local queue: the hold files, their order, and the claim path.

The contract tests check what holds mean for every backend; these check the local specifics:
a held put syncs its hold file before the queue file appears (also under SIGKILL), clean-up of
hold files, and that claiming lists the hold files once per call, never once per message.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.support.clock import FakeClock
from tests.support.mail import MESSAGE, make_envelope

import sendgate
from sendgate import fsutil
from sendgate.errors import SpoolError, UnknownQueueIdError
from sendgate.store.local.holds import Holds
from sendgate.store.local.queue import LocalQueueStore
from sendgate.store.local.spool import Spool

LEASE = 600.0

# Puts one held message and is killed by SIGKILL right after the queue file's rename.
_KILLED_PUT = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from sendgate.store.envelope import Envelope
    from sendgate.store.local.spool import Spool

    root = Path(sys.argv[1])
    spool = Spool(root)
    real_rename = os.rename

    def rename_then_die(src, dst):
        real_rename(src, dst)
        if Path(dst).parent.name == "queue":
            os.kill(os.getpid(), signal.SIGKILL)

    os.rename = rename_then_die
    envelope = Envelope(spool.new_id(), "a@example.com", ("b@example.com",), "alice", 0.0, 2)
    print(envelope.queue_id, flush=True)
    spool.put(envelope, b"hi", hold="account suspended")
    """
)


def names(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def put(store: LocalQueueStore | Spool, hold: str | None = None) -> str:
    queue_id = store.new_id()
    store.put(make_envelope(queue_id), MESSAGE, hold=hold)
    return queue_id


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "spool"


# --- the spool's hold files ------------------------------------------------------------------


def test_a_held_put_syncs_its_hold_file_before_the_queue_file_appears(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(root)
    events: list[str] = []
    real_fsync_dir = fsutil.fsync_dir
    real_rename = os.rename

    def fsync_dir(path: Path) -> None:
        events.append(f"fsync {path.name}")
        real_fsync_dir(path)

    def rename(src: str | Path, dst: str | Path) -> None:
        if Path(dst).parent.name == "queue":
            events.append(f"rename, hold files {names(root / 'hold')}")
        real_rename(src, dst)

    monkeypatch.setattr("sendgate.store.local.spool.fsync_dir", fsync_dir)
    monkeypatch.setattr("sendgate.store.local.spool.os.rename", rename)
    queue_id = put(spool, hold="suspended")
    assert events == ["fsync hold", f"rename, hold files {[queue_id]}", "fsync queue"]
    assert (root / "hold" / queue_id).read_bytes() == b"suspended"


def test_a_held_put_killed_after_its_rename_is_held_after_the_restart(root: Path) -> None:
    src = str(Path(sendgate.__file__).parents[1])
    child = subprocess.run(
        [sys.executable, "-c", _KILLED_PUT, str(root)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": src},
    )
    assert child.returncode == -signal.SIGKILL
    queue_id = child.stdout.strip()
    store = LocalQueueStore(root, clock=FakeClock())
    store.recover()
    assert store.ids() == [queue_id]
    assert store.hold_reason(queue_id) == "account suspended"
    assert store.claim(10, LEASE).claims == ()


def test_a_held_put_whose_commit_fails_leaves_no_hold_file(root: Path) -> None:
    spool = Spool(root)
    (root / "queue").rmdir()
    (root / "queue").write_bytes(b"")  # the rename into queue/ fails with ENOTDIR
    with pytest.raises(SpoolError, match=r"^cannot commit spool file"):
        put(spool, hold="suspended")
    assert names(root / "hold") == []
    assert names(root / "tmp") == []


def test_a_held_put_whose_hold_sync_fails_leaves_nothing(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(root)

    def failing_fsync_dir(path: Path) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr("sendgate.store.local.spool.fsync_dir", failing_fsync_dir)
    expected = f"cannot sync spool directory {root / 'hold'}: Input/output error"
    with pytest.raises(SpoolError) as caught:
        put(spool, hold="suspended")
    assert str(caught.value) == expected
    assert names(root / "hold") == names(root / "queue") == []


def test_a_held_put_onto_a_held_id_leaves_the_existing_hold(root: Path) -> None:
    spool = Spool(root)
    queue_id = put(spool, hold="first")
    with pytest.raises(SpoolError, match="cannot write hold file"):
        spool.put(make_envelope(queue_id), MESSAGE, hold="second")
    assert spool.holds.reason(queue_id) == "first"


def test_remove_and_sweep_take_the_hold_files_of_messages_that_left(root: Path) -> None:
    spool = Spool(root)
    kept, removed = put(spool, hold="kept"), put(spool, hold="removed")
    spool.remove(removed)
    assert names(root / "hold") == [kept]
    orphan = spool.new_id()
    (root / "hold" / orphan).write_bytes(b"left by a crash")
    spool.sweep()
    assert names(root / "hold") == [kept]


def test_a_hold_racing_the_end_of_the_message_leaves_no_file(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(root)
    queue_id = put(spool)
    real_replace = fsutil.atomic_replace

    def replace_while_delivered(path: Path, data: bytes, tmp_dir: Path) -> None:
        real_replace(path, data, tmp_dir)
        spool.remove(queue_id, durable=False)  # the runner finished it meanwhile

    monkeypatch.setattr("sendgate.store.local.holds.atomic_replace", replace_while_delivered)
    with pytest.raises(UnknownQueueIdError):
        spool.holds.hold(queue_id, "operator")
    assert names(root / "hold") == []


def test_a_reason_that_is_not_utf8_on_disk_is_read_with_replacements(root: Path) -> None:
    spool = Spool(root)
    queue_id = put(spool, hold="x")
    (root / "hold" / queue_id).write_bytes(b"bad \xff byte")
    assert spool.holds.reason(queue_id) == "bad \ufffd byte"
    (root / "hold" / "not-an-id").touch()
    assert spool.holds.ids() == {queue_id}


def test_hold_file_errors_are_one_line_and_name_the_path(root: Path) -> None:
    spool = Spool(root)
    queue_id = put(spool)
    (root / "hold").rmdir()
    (root / "hold").write_bytes(b"")
    file = root / "hold" / queue_id
    calls: list[tuple[str, Callable[[], object]]] = [
        (f"cannot write hold file {file}: ", lambda: spool.holds.hold(queue_id, "operator")),
        (f"cannot read hold file {file}: ", lambda: spool.holds.reason(queue_id)),
        (f"cannot remove hold file {file}: ", lambda: spool.holds.unhold(queue_id)),
        (f"cannot read hold files {root / 'hold'}: ", spool.holds.ids),
    ]
    for prefix, call in calls:
        with pytest.raises(SpoolError) as caught:
            call()
        assert str(caught.value).startswith(prefix)
        assert "\n" not in str(caught.value)


# --- the claim path ----------------------------------------------------------------------------


def count_listings(monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    calls = [0]
    real_ids = Holds.ids

    def ids(self: Holds) -> set[str]:
        calls[0] += 1
        return real_ids(self)

    monkeypatch.setattr(Holds, "ids", ids)
    return lambda: calls[0]


def test_claiming_lists_the_hold_files_once_per_call_and_not_when_nothing_is_due(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalQueueStore(root, clock=FakeClock(), scan_interval=3600.0)
    listings = count_listings(monkeypatch)
    assert store.claim(10, LEASE).claims == ()
    assert listings() == 0
    for _ in range(50):
        put(store)
    assert len(store.claim(100, LEASE).claims) == 50
    assert listings() == 1
    assert store.claim(100, LEASE).claims == ()
    assert listings() == 1


def test_an_unlistable_hold_directory_stops_every_claim_and_says_why(root: Path) -> None:
    store = LocalQueueStore(root, clock=FakeClock())
    queue_id = put(store)
    (root / "hold").rmdir()
    (root / "hold").write_bytes(b"")
    claimed = store.claim(10, LEASE)
    assert claimed.claims == ()
    assert claimed.problems == (f"cannot read hold files {root / 'hold'}: Not a directory",)
    (root / "hold").unlink()
    (root / "hold").mkdir()
    assert [claim.queue_id for claim in store.claim(10, LEASE).claims] == [queue_id]


def test_a_release_by_another_process_reaches_the_runner_at_its_next_scan(root: Path) -> None:
    clock = FakeClock()
    runner = LocalQueueStore(root, clock=clock, scan_interval=60.0)
    operator = LocalQueueStore(root, clock=clock)
    queue_id = put(runner, hold="operator")
    assert runner.claim(10, LEASE).claims == ()
    assert operator.unhold(queue_id) is True
    clock.advance(59)
    assert runner.claim(10, LEASE).claims == ()
    clock.advance(1)
    assert [claim.queue_id for claim in runner.claim(10, LEASE).claims] == [queue_id]


def test_a_hold_file_deleted_by_hand_releases_the_message_at_the_next_scan(root: Path) -> None:
    clock = FakeClock()
    runner = LocalQueueStore(root, clock=clock, scan_interval=60.0)
    queue_id = put(runner, hold="operator")
    assert runner.claim(10, LEASE).claims == ()
    (root / "hold" / queue_id).unlink()
    clock.advance(60)
    assert [claim.queue_id for claim in runner.claim(10, LEASE).claims] == [queue_id]

"""Faults at every step of a commit: ENOSPC, EDQUOT and EIO never leave a message half queued.

An injected fault layer makes one system call of `Spool.put_many` fail (making the fresh file,
opening it, writing, the data sync, the first or a later link into queue/) with each errno; the
commit must raise SpoolFullError (no space, no quota) or SpoolError (an I/O error), queue
nothing, leave no link and no written file behind, and the same messages must then commit once
the fault is gone. A streamed body (opened, written as it arrives, finished) gets the same
treatment at each of its steps. A real file system (a tmpfs mounted in a user namespace of its
own) filled up to the last byte, by group commits or by streamed bodies, must behave the same.
The delivery state, rewritten after each attempt, gets the same treatment at each of its steps
(temporary file, write, sync, rename, directory sync): the old state or the whole new one, never
debris.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from tests.support.mail import make_envelope

from sendgate import fsutil
from sendgate.errors import SpoolError, SpoolFullError
from sendgate.fsutil import write_all
from sendgate.store.envelope import Envelope
from sendgate.store.local import spool, streamfile
from sendgate.store.local.queue import LocalQueueStore
from sendgate.store.local.spool import Spool

ERRNOS = {"ENOSPC": errno.ENOSPC, "EDQUOT": errno.EDQUOT, "EIO": errno.EIO}
STEPS = ["take", "open", "write", "fdatasync", "first_link", "second_link"]


def _failing(code: int, real: Callable[..., Any], when: Callable[..., bool]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        if when(*args):
            raise OSError(code, os.strerror(code))
        return real(*args, **kwargs)

    return call


def inject(monkeypatch: pytest.MonkeyPatch, step: str, code: int) -> None:
    """Make `step` of the next commit fail with `code` (and only that step)."""
    if step == "take":  # making a fresh file when the stock is empty

        def creating(path: str, flags: int, *_: int) -> bool:
            return bool(flags & os.O_CREAT) and "/fresh/" in str(path)

        monkeypatch.setattr(os, "open", _failing(code, os.open, creating))
        return
    if step == "write":
        monkeypatch.setattr(spool, "write_all", _failing(code, write_all, lambda *_: True))
        return
    faulty = SimpleNamespace(**{name: getattr(os, name) for name in dir(os)})
    if step == "open":
        faulty.open = _failing(code, os.open, lambda *_: True)
    elif step == "fdatasync":
        faulty.fdatasync = _failing(code, os.fdatasync, lambda *_: True)
    else:
        links = iter(range(100))
        fail_at = 0 if step == "first_link" else 1
        faulty.link = _failing(code, os.link, lambda *_: next(links) == fail_at)
    monkeypatch.setattr(spool, "os", faulty)


def empty_stock(store: Spool, root: Path) -> None:
    """No ready fresh file: the next commit has to make its own (the "take" step)."""
    store._fresh_files()  # reaps and starts the stock
    for path in (root / "fresh").iterdir():
        path.unlink()


def batch(store: Spool) -> list[tuple[Envelope, bytes]]:
    messages = [b"Subject: one\r\n\r\nfirst\r\n", b"Subject: two\r\n\r\nsecond\r\n"]
    return [(make_envelope(store.new_id(), m), m) for m in messages]


def written(root: Path) -> list[str]:
    """Non-empty fresh files (a stock of empty ones is expected) and every queue entry."""
    fresh_files = [p.name for p in (root / "fresh").iterdir() if p.stat().st_size]
    return fresh_files + [p.name for p in (root / "queue").iterdir()]


@pytest.mark.parametrize("code_name", list(ERRNOS))
@pytest.mark.parametrize("step", STEPS)
def test_a_fault_at_any_step_queues_nothing_and_the_next_commit_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str, code_name: str
) -> None:
    root = tmp_path / "spool"
    store = Spool(root)
    store.sweep()
    if step == "take":
        empty_stock(store, root)
    items = batch(store)
    code = ERRNOS[code_name]
    with monkeypatch.context() as patched:
        inject(patched, step, code)
        with pytest.raises(SpoolError) as raised:
            store.put_many(items)
    assert isinstance(raised.value, SpoolFullError) == (code != errno.EIO)
    assert str(raised.value).count("\n") == 0  # one line for the log
    assert store.ids() == []
    assert written(root) == []
    store.put_many(items)  # the fault is gone: the same messages commit
    assert sorted(store.ids()) == sorted(envelope.queue_id for envelope, _ in items)
    for envelope, message in items:
        assert store.message(envelope.queue_id) == message
    store.close()


# --- a streamed body: the fresh file opened, the body written as it arrives, then finished ---

STREAM_STEPS = ["take", "open", "magic", "body", "tail", "fdatasync", "link"]
HEAD = b"Subject: big\r\n\r\n"
BODY = b"a line of a streamed body\r\n" * 10_000


def inject_into_stream(monkeypatch: pytest.MonkeyPatch, step: str, code: int) -> None:
    """Make `step` of the next streamed message fail with `code` (and only that step)."""
    if step in ("take", "link"):
        inject(monkeypatch, "take" if step == "take" else "first_link", code)
        return
    faulty = SimpleNamespace(**{name: getattr(os, name) for name in dir(os)})
    if step == "open":
        faulty.open = _failing(code, os.open, lambda *_: True)
    elif step == "fdatasync":
        faulty.fdatasync = _failing(code, os.fdatasync, lambda *_: True)
    else:  # the writes: the magic line, then body blocks, then the tail in one writev
        calls = iter(range(100))
        fail_at = {"magic": 0, "body": 1, "tail": 3}[step]
        monkeypatch.setattr(
            streamfile, "write_all", _failing(code, write_all, lambda *_: next(calls) == fail_at)
        )
    monkeypatch.setattr(streamfile, "os", faulty)


def stream_one(queue: LocalQueueStore) -> str:
    """Stream BODY in two blocks and queue it; the queue id. Errors as the queue raises them,
    after the body is discarded (as the Session does after a failed write)."""
    body = queue.new_body()
    try:
        body.write(BODY[: len(BODY) // 2])
        body.write(BODY[len(BODY) // 2 :])
    except SpoolError:
        body.discard()
        raise
    queue_id = queue.new_id()
    queue.put_streamed(make_envelope(queue_id, HEAD + BODY), HEAD, body)
    return queue_id


@pytest.mark.parametrize("code_name", list(ERRNOS))
@pytest.mark.parametrize("step", STREAM_STEPS)
def test_a_fault_at_any_step_of_a_streamed_message_queues_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str, code_name: str
) -> None:
    root = tmp_path / "spool"
    queue = LocalQueueStore(root)
    queue.recover()
    if step == "take":
        empty_stock(queue._spool, root)
    code = ERRNOS[code_name]
    with monkeypatch.context() as patched:
        inject_into_stream(patched, step, code)
        with pytest.raises(SpoolError) as raised:
            stream_one(queue)
    assert isinstance(raised.value, SpoolFullError) == (code != errno.EIO)
    assert str(raised.value).count("\n") == 0  # one line for the log
    assert queue.ids() == []
    assert written(root) == []
    queue_id = stream_one(queue)  # the fault is gone: the next one is queued
    assert queue.message(queue_id) == HEAD + BODY
    queue.close()


_ON_TMPFS = textwrap.dedent(
    """
    import os
    import sys
    import time
    from pathlib import Path
    from sendgate.errors import SpoolFullError
    from sendgate.store.local.spool import Spool
    from tests.support.mail import make_envelope

    root = Path(sys.argv[1]) / "spool"
    store = Spool(root)
    store.sweep()
    message = (b"Subject: fill\\r\\n\\r\\n" + b"x" * 998 + b"\\r\\n") * 60  # 60 KiB
    queued = []
    try:
        while True:
            envelope = make_envelope(store.new_id(), message)
            store.put_many([(envelope, message)])
            queued.append(envelope.queue_id)
    except SpoolFullError as exc:
        print("full", len(queued), str(exc).count(chr(10)))
    assert sorted(store.ids()) == sorted(queued), "a refused commit left a link"
    for queue_id in queued:
        assert store.message(queue_id) == message
    # Written fresh files are all committed ones (also linked into queue/), none half written.
    partial = [p.name for p in (root / "fresh").iterdir() if p.stat().st_size]
    assert all((root / "fresh" / name).stat().st_nlink == 2 for name in partial), partial
    for queue_id in queued[: len(queued) // 2]:
        store.remove(queue_id)
    # The space comes back once the background syncer has let the fresh names go.
    deadline = time.monotonic() + 10
    while os.statvfs(root).f_bavail * os.statvfs(root).f_frsize < 4 * len(message):
        assert time.monotonic() < deadline, "the removed messages' space never came back"
        time.sleep(0.01)
    envelope = make_envelope(store.new_id(), message)
    store.put_many([(envelope, message)])  # space is back: the next message is queued
    print("after", len(store.ids()))
    store.close()
    """
)


def _on_tmpfs(tmp_path: Path, script_text: str) -> subprocess.CompletedProcess[str]:
    """Run `script_text` with a fresh 2 MiB tmpfs (in a user and mount namespace) as argv[1]."""
    mount = tmp_path / "small"
    mount.mkdir()
    script = tmp_path / "fill.py"
    script.write_text(script_text)
    project = Path(__file__).resolve().parents[4]
    return subprocess.run(
        [
            "unshare",
            "-rm",
            "sh",
            "-c",
            'mount -t tmpfs -o size=2m tmpfs "$1" && exec "$2" "$3" "$1"',
            "sh",
            str(mount),
            sys.executable,
            str(script),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=project,
        env={**os.environ, "PYTHONPATH": str(project)},
        check=False,
    )


def test_a_real_full_file_system_refuses_cleanly_and_recovers(tmp_path: Path) -> None:
    done = _on_tmpfs(tmp_path, _ON_TMPFS)
    assert done.returncode == 0, done.stderr
    full, queued, lines = done.stdout.split("\n")[0].split()
    assert (full, lines) == ("full", "0")
    assert 5 < int(queued) < 40  # 2 MiB of 60 KiB messages, minus the stock of fresh files
    assert done.stdout.split("\n")[1] == f"after {int(queued) - int(queued) // 2 + 1}"


# --- the delivery state: written to tmp/, synced, renamed, its directory synced ---

STATE_STEPS = ["open", "write", "fsync", "rename", "dir_fsync"]


def inject_into_state_write(monkeypatch: pytest.MonkeyPatch, step: str, code: int) -> None:
    faulty = SimpleNamespace(**{name: getattr(os, name) for name in dir(os)})
    always: Callable[..., bool] = lambda *_: True  # noqa: E731
    if step == "open":
        faulty.open = _failing(code, os.open, lambda path, *_: "/spool/tmp/" in str(path))
    elif step == "write":
        faulty.writev = _failing(code, os.writev, always)
    elif step == "rename":
        faulty.replace = _failing(code, os.replace, always)
    else:
        # By what the descriptor is: the spool's background syncer also syncs through fsutil.
        target = "/spool/tmp/" if step == "fsync" else "/spool/state"

        def aimed(fd: int) -> bool:
            path = os.readlink(f"/proc/self/fd/{fd}")
            return target in path if step == "fsync" else path.endswith(target)

        faulty.fsync = _failing(code, os.fsync, aimed)
    monkeypatch.setattr(fsutil, "os", faulty)


@pytest.mark.parametrize("code_name", list(ERRNOS))
@pytest.mark.parametrize("step", STATE_STEPS)
def test_a_fault_writing_a_delivery_state_keeps_a_whole_state_and_no_debris(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str, code_name: str
) -> None:
    root = tmp_path / "spool"
    store = Spool(root)
    store.sweep()
    [(envelope, message)] = batch(store)[:1]
    store.put_many([(envelope, message)])
    queue_id = envelope.queue_id
    store.write_state(queue_id, b'{"attempts": 1}')
    code = ERRNOS[code_name]
    with monkeypatch.context() as patched:
        inject_into_state_write(patched, step, code)
        with pytest.raises(SpoolError) as raised:
            store.write_state(queue_id, b'{"attempts": 2}')
    assert isinstance(raised.value, SpoolFullError) == (code != errno.EIO)
    # The old state or, once renamed, the new one: never a mix, never a stray temporary file.
    expected = b'{"attempts": 2}' if step == "dir_fsync" else b'{"attempts": 1}'
    assert store.read_state(queue_id) == expected
    assert list((root / "tmp").iterdir()) == []
    assert store.ids() == [queue_id]  # the message itself is untouched
    store.write_state(queue_id, b'{"attempts": 3}')  # and the next write works
    assert store.read_state(queue_id) == b'{"attempts": 3}'
    store.close()


_STREAM_ON_TMPFS = textwrap.dedent(
    """
    import os
    import sys
    import time
    from pathlib import Path
    from sendgate.errors import SpoolFullError
    from sendgate.store.local.queue import LocalQueueStore
    from tests.support.mail import make_envelope

    root = Path(sys.argv[1]) / "spool"
    queue = LocalQueueStore(root)
    queue.recover()
    head = b"Subject: fill\\r\\n\\r\\n"
    block = (b"y" * 998 + b"\\r\\n") * 64  # 64 KiB, as the Session writes them
    queued = []

    def stream(blocks):
        body = queue.new_body()
        try:
            for _ in range(blocks):
                body.write(block)
        except SpoolFullError:
            body.discard()
            raise
        queue_id = queue.new_id()
        queue.put_streamed(make_envelope(queue_id, head + block * blocks), head, body)
        return queue_id

    try:
        while True:
            queued.append(stream(5))  # 320 KiB each
    except SpoolFullError as exc:
        print("full", len(queued), str(exc).count(chr(10)))
    assert sorted(queue.ids()) == sorted(queued), "a refused message left a link"
    for queue_id in queued:
        assert queue.message(queue_id) == head + block * 5
    partial = [p.name for p in (root / "fresh").iterdir() if p.stat().st_size]
    assert all((root / "fresh" / name).stat().st_nlink == 2 for name in partial), partial
    for queue_id in queued[: len(queued) // 2 + 1]:
        queue.remove(queue_id)
    deadline = time.monotonic() + 10
    while os.statvfs(root).f_bavail * os.statvfs(root).f_frsize < 6 * len(block):
        assert time.monotonic() < deadline, "the removed messages' space never came back"
        time.sleep(0.01)
    stream(5)  # space is back: the next message is queued
    print("after", len(queue.ids()))
    queue.close()
    """
)


def test_a_real_full_file_system_refuses_a_streamed_body_cleanly_and_recovers(
    tmp_path: Path,
) -> None:
    done = _on_tmpfs(tmp_path, _STREAM_ON_TMPFS)
    assert done.returncode == 0, done.stderr
    full, queued, lines = done.stdout.split("\n")[0].split()
    assert (full, lines) == ("full", "0")
    assert 2 < int(queued) < 7  # 2 MiB of 320 KiB messages, minus the stock of fresh files
    left = int(queued) - (int(queued) // 2 + 1) + 1
    assert done.stdout.split("\n")[1] == f"after {left}"

"""Fresh files: empty spool files whose names are durable already, so a group commit is one sync.

A new file's name survives a power cut only after an fsync of its directory, so writing a
group into a new file costs two journal commits in series (the file, then its directory).
`Spool.put_many` writes the group into a file of ``fresh/`` that was created and whose name
was synced earlier: one fdatasync makes the whole group durable, and the 250s can go. Its hard
links into ``queue/`` (the names the rest of the spool reads) are made durable afterwards, by
this module's syncer thread: one fsync of ``queue/`` and one of ``fresh/`` every `INTERVAL`
covers every commit and every new fresh file since the last pair. Only after that sync is the
file's fresh name given up; until then a power cut leaves that name, and `Spool.sweep`
restores from it any link the cut lost (see `store.local.batchfile` for the trailer it checks).

A fresh name given up becomes a spent name (``<name>.spent``, never restored from), and once
the last message of its file has left queue/ (one link left: the spent name) the file is
recycled: emptied and renamed to a new fresh name (a batch's trailer names the file it was
written under, so an emptying a power cut undid restores nothing). Creating a file allocates
an inode, and on an ext4 file system with many files that cost 480-660 us of CPU here (20-30
us on a young one); emptying and renaming a file costs about 40.

The syncer also keeps a stock of ready files (made before the sync that makes their names
durable), so a commit makes no system call here; a file is handed out only once a directory
sync that began after its creation has ended. Names are ``<pid>.<16 hex digits>``: files left
by a process that died are cleaned up by the next process to commit (`Spool`).

Limits: recovery takes "same boot id" to mean that the page cache survived, so a link missing
then was removed on purpose (delivered). Storage that can lose acknowledged writes without the
kernel rebooting (a network block device or file server that crashes, a snapshot rolled back)
breaks that; run the spool on local storage.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import deque
from contextlib import suppress
from pathlib import Path

from sendgate.errors import SpoolError
from sendgate.fsutil import fsync_dir
from sendgate.store.envelope import UNIQUE

INTERVAL = 0.02  # seconds a commit's links may wait for their directory sync
SPENT = ".spent"  # the suffix of a name given up: its file waits for its messages to go
SCAN = 64  # spent names looked at per sync (a held queue keeps many: do not stat them all)
REAP_EVERY = 0.5  # seconds between looks at the spent names when nothing is committed
SPARE = 128  # ready files the syncer keeps in stock
FIRST = 16  # files a commit makes itself when none is ready (at the start, or in a burst)

_NAME = re.compile(r"([1-9][0-9]{0,9})\.([0-9a-f]{16})")


class FreshFiles:
    """The ready fresh files of one process, and the thread that syncs what commits leave.

    Thread-safe. `take` a file, write and sync the group into it, link it into queue/, then
    call `committed` (or `discard` after a failure). `close` stops the thread and leaves the
    directory clean. The commit path makes no system call here but in `take` when the stock
    is out: the syncer makes the new files and removes the old names.
    """

    def __init__(
        self, directory: Path, queue: Path, *, interval: float = INTERVAL, spare: int = SPARE
    ) -> None:
        self._dir = directory
        self._queue = queue
        self._interval = interval
        self._spare = spare
        self._prefix = f"{directory}{os.sep}{os.getpid()}."
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._ready: list[str] = []  # paths of files whose names are durable
        self._linked: list[tuple[int, str]] = []  # (step, path): give up once queue/ is synced
        self._spent: deque[str] = deque()  # spent paths, for the syncing thread to recycle
        self._step = 0  # commits so far
        self._syncer: threading.Thread | None = None
        self._closed = False
        self._removed = False  # names removed since the last sync of fresh/
        # The syncer waits for work (a notify wakes it) or gathers it until a sync is due (a
        # notify would only wake it to wait again: a context switch per commit for nothing).
        self._idle = False

    def take(self) -> str:
        """The path of a ready fresh file; SpoolError once closed.

        When none is ready, `FIRST` files are made and their directory synced here. Raises
        OSError as the creation does.
        """
        with self._lock:
            if self._closed:
                raise SpoolError("spool closed")
            if self._syncer is None:
                syncer = threading.Thread(target=self._run, name="spool-sync", daemon=True)
                syncer.start()  # raises before `_syncer` is set: the next take tries again
                self._syncer = syncer
            if self._ready:
                return self._ready.pop()
        made = self._make(FIRST)
        try:
            fsync_dir(self._dir)
        except OSError:
            _drop_all(made)
            raise
        with self._lock:
            self._ready += made[1:]
            self._notify()  # the stock is low
        return made[0]

    def committed(self, path: str) -> None:
        """The file at `path` holds a synced group and is linked into queue/: let it go."""
        with self._lock:
            if not self._closed:
                self._step += 1
                self._linked.append((self._step, path))
                self._notify()
                return
        # A commit that ran into `close`: no syncer any more, so sync its links here.
        with suppress(OSError):
            fsync_dir(self._queue)
            os.unlink(path)

    @staticmethod
    def discard(path: str) -> None:
        """Remove a file `take` gave out whose commit failed."""
        _drop_all([path])

    def sync(self, make: int = 0) -> None:
        """Make `make` new files, then sync queue/ and fresh/: every commit so far is durable.

        The new files are spent ones recycled where they can be, else created. Then they join
        the stock and the synced commits' fresh names become spent names (the next sync makes
        the renames durable). Files that cannot be made are not made (`take` reports that
        error); raises OSError as fsync does, and then nothing changes.
        """
        made = self._recycle(make)
        with suppress(OSError):
            made += self._make(make - len(made))
        try:
            with self._lock:
                step = self._step
            fsync_dir(self._queue)
            fsync_dir(self._dir)
        except OSError:
            _drop_all(made)
            raise
        with self._lock:
            self._ready += made
            done = [path for taken, path in self._linked if taken <= step]
            self._linked = [item for item in self._linked if item[0] > step]
            # Removed fresh names must not outlive an idle spell: they would bring delivered
            # mail back after a power cut. One more sync follows.
            self._removed = bool(done)
        for path in done:
            try:
                os.rename(path, path + SPENT)
            except OSError:
                # One that cannot be renamed is removed, or left for `Spool.sweep`.
                with suppress(OSError):
                    os.unlink(path)
            else:
                self._spent.append(path + SPENT)

    def _recycle(self, count: int) -> list[str]:
        """Reap the spent files whose messages are all gone: up to `count` emptied and renamed
        to new fresh names (durable after the next sync of fresh/), the rest removed (their
        space comes back now, as it did when the last link went)."""
        recycled: list[str] = []
        for _ in range(min(SCAN, len(self._spent))):
            path = self._spent.popleft()
            try:
                if os.lstat(path).st_nlink != 1:
                    self._spent.append(path)  # a message of it is still queued: later
                    continue
                if len(recycled) >= count:
                    os.unlink(path)
                    continue
                fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
                try:
                    os.ftruncate(fd, 0)
                finally:
                    os.close(fd)
                # No sync of the emptying: a power cut may leave the old batch under the new
                # name, but its trailer names the old one, so recovery never restores it
                # (`batchfile.check`); the next commit's fdatasync carries the emptying too.
                new = self._new_name()
                os.rename(path, new)
            except OSError:
                _drop_all([path])
            else:
                recycled.append(new)
        return recycled

    def _new_name(self) -> str:
        # Unique, not secret (the token only tells batches apart): no system call per name.
        return f"{self._prefix}{UNIQUE.getrandbits(64):016x}"

    def close(self) -> None:
        """Stop the syncer; sync, then remove every fresh name this process still holds.

        A failing sync leaves the committed names in place for `Spool.sweep`.
        """
        with self._lock:
            self._closed = True
            self._wake.notify()
            syncer = self._syncer
        if syncer is not None:
            syncer.join()
        with suppress(OSError):
            self.sync()
        with self._lock:
            spare, self._ready = self._ready, []
        # A spent name's file lives on through its queue links, if it has any left.
        spent, self._spent = list(self._spent), deque()
        _drop_all(spare + spent)
        with suppress(OSError):
            fsync_dir(self._dir)

    def _notify(self) -> None:
        """Wake the syncer if it waits for work (called with the lock held)."""
        if self._idle:
            self._wake.notify()

    def _run(self) -> None:
        """The syncer: wait for work, let `interval` gather more, sync; until closed."""
        while True:
            with self._lock:
                while not (
                    self._closed
                    or self._linked
                    or self._removed
                    or len(self._ready) < self._spare // 2
                ):
                    # Spent files hold the space of delivered mail until they are reaped: with
                    # any left, look again after a while even when nothing is committed.
                    self._idle = True
                    woken = self._wake.wait(REAP_EVERY if self._spent else None)
                    self._idle = False
                    if not woken:
                        break
                deadline = time.monotonic() + self._interval
                while not self._closed and (left := deadline - time.monotonic()) > 0:
                    self._wake.wait(left)
                if self._closed:
                    return  # `close` does the last sync itself
                missing = self._spare - len(self._ready)
            with suppress(OSError):
                # A failed sync is tried again after the next interval; until one works the
                # fresh names stay, and `take` makes files itself (which reports the error).
                self.sync(missing)

    def _make(self, count: int) -> list[str]:
        """Create `count` empty fresh files, mode 0o600 whatever the umask."""
        made: list[str] = []
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            for _ in range(count):
                path = self._new_name()
                fd = os.open(path, flags, 0o600)
                made.append(path)
                try:
                    os.fchmod(fd, 0o600)
                finally:
                    os.close(fd)
        except OSError:
            _drop_all(made)
            raise
        return made


def owner(name: str) -> int | None:
    """The pid in a fresh file's name, or None when the name is not one of ours."""
    match = _NAME.fullmatch(name)
    return int(match[1]) if match else None


def name_token(path: str | Path) -> str | None:
    """The 16 hex digits ending a fresh file's name, which its trailer names; None for others."""
    match = _NAME.fullmatch(os.path.basename(path))
    return match[2] if match else None


def spent_owner(name: str) -> int | None:
    """The pid in a spent name, or None when the name is not a spent one of ours."""
    return owner(name[: -len(SPENT)]) if name.endswith(SPENT) else None


def _drop_all(paths: list[str]) -> None:
    for path in paths:
        with suppress(OSError):
            os.unlink(path)

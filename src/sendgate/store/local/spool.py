"""The spool directory: the local queue's files, each message committed before its 250 is sent.

Layout under the spool root (directories mode 0o700, files mode 0o600):

- ``tmp/``: files being written; anything here is garbage once the server is down.
- ``queue/<id>``: one name per queued message: its envelope (one line of JSON, UTF-8), a LF,
  then the message bytes exactly as they will be sent; or a hard link to a batch file holding
  several such records (`store.local.batchfile`). A message is queued if and only if its name
  is in ``queue/``: the rename (or link) from ``tmp/`` is the commit point.
- ``fresh/``: empty files whose names are already durable, and group commits whose links into
  ``queue/`` are not synced yet (`store.local.fresh`); `sweep` restores lost links from them.
  ``<name>.spent``: a batch whose links were synced, kept to be recycled once its messages are
  gone; never restored from (`sweep` removes the names).
- ``corrupt/``: queue files whose envelope line cannot be read, moved aside by `Spool.sweep`.
- ``state/<id>``: delivery state of a message that has had an attempt (which recipients are done,
  when to try next), replaced atomically (tmp/, fsync, rename). No state file: nothing tried yet.
- ``retry/<id>``: an empty flag asking the delivery runner to try `<id>` now (`queue retry`).
- ``hold/<id>``: the message is held (never delivered until released); the file holds the
  reason (UTF-8, one line). A held put writes and syncs it before the queue file's rename, so
  a crash never leaves an unheld copy of mail that was to be held.

`Spool.put` writes ``tmp/<id>`` in one writev, fsyncs it, renames it into ``queue/`` and then
makes the rename durable with an fsync of ``queue/`` (directory fsyncs are shared between
threads: a commit already covered by another thread's does not issue its own).
`Spool.put_many` (the submission path) writes a group of messages as one batch into a fresh
file, whose name is durable already, and returns after its one fdatasync; the group's links
into ``queue/`` follow and are synced in the background (`store.local.fresh`). On any error
a put removes what it wrote and raises `SpoolFullError` (disk full) or `SpoolError`, so a
half-written message is never visible as queued.

Security: queue ids come from the command line and from directory listings, so every id is
checked against a strict pattern before it becomes part of a path (no ``../``). Envelope files
are parsed strictly (exact keys, exact types, no control characters in addresses). Message bytes
come from clients and are stored verbatim and never interpreted here. This module touches only
files under the spool root and does not log; `store.local.queue` builds the `QueueStore` on it.
"""

import errno
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path

from sendgate.errors import SpoolError, SpoolFullError, UnknownQueueIdError
from sendgate.fsutil import atomic_replace, fsync_dir, is_disk_full, write_all, write_file_durably
from sendgate.store.envelope import (
    RANDOM_BYTES,
    UNIQUE,
    Envelope,
    checked_id,
    is_queue_id,
    new_queue_id,
)
from sendgate.store.local import batchfile, streamfile
from sendgate.store.local.fresh import FreshFiles, name_token, owner, spent_owner
from sendgate.store.local.holds import Holds
from sendgate.store.queue import Recovery


class Spool:
    """The spool directory: put, list, read and remove committed messages.

    Thread-safe; `put`, `sweep` and `remove` block on fsync, so call them from a
    thread pool, not the event loop (`remove(durable=False)` does not sync: it may run on
    one). `sweep` must run before serving, with no `put` under way.
    """

    def __init__(self, root: Path, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._tmp = root / "tmp"
        self._queue = root / "queue"
        self._fresh_dir = root / "fresh"
        self._corrupt = root / "corrupt"
        self._state = root / "state"
        self._retry = root / "retry"
        self._hold = root / "hold"
        # The per-message paths are built as strings: Path objects cost a runner more than the
        # unlinks and stats they name (every delivered message removes four names).
        self._queue_s, self._state_s, self._retry_s, self._hold_s = (
            f"{path}{os.sep}" for path in (self._queue, self._state, self._retry, self._hold)
        )
        self.holds = Holds(self._hold, self._queue, self._tmp)
        """The held messages' hold files (`store.local.holds`)."""
        self._rename_lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._fresh_lock = threading.Lock()
        self._fresh: FreshFiles | None = None  # made by the first put_many
        self._renames = 0  # renames into queue/ so far
        self._synced = 0  # renames known durable (covered by a finished directory fsync)
        path = root
        try:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
            for path in (
                self._tmp,
                self._queue,
                self._fresh_dir,
                self._corrupt,
                self._state,
                self._retry,
                self._hold,
            ):
                path.mkdir(mode=0o700, exist_ok=True)
            # A fresh spool's directories must survive a crash as surely as its messages.
            fsync_dir(root)
            fsync_dir(root.parent)
        except OSError as exc:
            raise _spool_error("cannot create spool directory", path, exc) from exc

    def new_id(self) -> str:
        """Return a new queue id: sortable by time, unique across processes (40 random bits).

        The bits need to be unique, not secret: `UNIQUE` gives them without the system call
        `secrets` makes for each, on the event loop's thread.
        """
        return new_queue_id(self._clock(), UNIQUE.randbytes(RANDOM_BYTES))

    def put(self, envelope: Envelope, message: bytes, *, hold: str | None = None) -> None:
        """Store `message` under `envelope.queue_id`; it is durably queued when this returns.

        With `hold` (a reason) the message is held from the start: the hold file is durable
        before the queue file appears. Raises SpoolFullError when the disk or quota is full,
        SpoolError on any other I/O error (including an id already in use); either way nothing
        of this message stays behind.
        """
        if envelope.size != len(message):
            raise ValueError(f"envelope size {envelope.size} != message size {len(message)}")
        queue_id = checked_id(envelope.queue_id)
        if hold is None:
            self._commit(envelope, message)
            return
        hold_path = self._hold / queue_id
        try:
            # Removes what it wrote on failure; an existing file (an id in use) is left alone.
            write_file_durably(hold_path, hold.encode())
        except OSError as exc:
            raise _spool_error("cannot write hold file", hold_path, exc) from exc
        try:
            fsync_dir(self._hold)
            self._commit(envelope, message)
        except BaseException as exc:
            with suppress(OSError):
                hold_path.unlink()
            if isinstance(exc, OSError):
                raise _spool_error("cannot sync spool directory", self._hold, exc) from exc
            raise

    def put_many(self, items: Sequence[tuple[Envelope, bytes]]) -> None:
        """Store several messages in one commit: all are durably queued when this returns.

        The batch (`store.local.batchfile`, with its trailer) goes into a fresh file and is
        synced with one fdatasync; then the file is linked into queue/ once per message, and
        those links are synced in the background (`store.local.fresh`). On any error no link
        stays behind and SpoolFullError or SpoolError is raised, as by `put`.
        """
        for envelope, message in items:
            if envelope.size != len(message):
                raise ValueError(f"envelope size {envelope.size} != message size {len(message)}")
            checked_id(envelope.queue_id)
        parts = batchfile.encode(items)  # refuses a bad count before a file is taken
        fresh, path = self._take_fresh()
        parts.append(batchfile.trailer_line(batchfile.crc_of(parts), name_token(path)))
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            try:
                write_all(fd, parts)
                os.fdatasync(fd)
            finally:
                os.close(fd)
        except BaseException as exc:
            fresh.discard(path)
            if isinstance(exc, OSError):
                raise _spool_error("cannot write spool file", path, exc) from exc
            raise
        linked: list[str] = []
        try:
            for envelope, _ in items:
                link = self._queue_s + envelope.queue_id
                os.link(path, link)  # EEXIST for an id in use: nothing is overwritten
                linked.append(link)
        except OSError as exc:
            for done in linked:
                with suppress(OSError):
                    os.unlink(done)
            fresh.discard(path)
            raise _spool_error("cannot commit spool file", link, exc) from exc
        fresh.committed(path)

    def new_body(self) -> streamfile.StreamedBody:
        """A fresh file to stream a large message's body into (`store.local.streamfile`).

        Blocks briefly (an open and a write; the file itself comes from the stock of fresh
        files). SpoolFullError or SpoolError when it cannot be made.
        """
        fresh, path = self._take_fresh()
        try:
            return streamfile.StreamedBody(path, on_discard=fresh.discard)
        except OSError as exc:
            fresh.discard(path)
            raise _spool_error("cannot write spool file", path, exc) from exc

    def put_streamed(
        self,
        envelope: Envelope,
        head: bytes,
        body: streamfile.StreamedBody,
        *,
        hold: str | None = None,
    ) -> None:
        """Queue the message `head` + `body` (a `new_body` fully written): durable on return.

        The promise of `put`, at the cost of one fdatasync of the file (its name is durable
        already; its link into queue/ is synced in the background, as by `put_many`). The body
        file is used up either way: on any failure it is removed, with nothing left behind.
        """
        try:
            if envelope.size != len(head) + body.size:
                raise ValueError(
                    f"envelope size {envelope.size} != message size {len(head) + body.size}"
                )
            queue_id = checked_id(envelope.queue_id)
            fresh = self._fresh_files()
            path = body.path
            if hold is not None:
                hold_path = self._hold / queue_id
                try:
                    write_file_durably(hold_path, hold.encode())
                except OSError as exc:
                    raise _spool_error("cannot write hold file", hold_path, exc) from exc
            action, where = "cannot sync spool directory", str(self._hold)
            try:
                if hold is not None:
                    fsync_dir(self._hold)
                action, where = "cannot write spool file", path
                body.finish(envelope, head)
                action, where = "cannot commit spool file", self._queue_s + queue_id
                os.link(path, where)  # EEXIST for an id in use: nothing is overwritten
            except BaseException as exc:
                if hold is not None:
                    with suppress(OSError):
                        (self._hold / queue_id).unlink()
                if isinstance(exc, OSError):
                    raise _spool_error(action, where, exc) from exc
                raise
        except BaseException:
            body.discard()
            raise
        body.committed()
        fresh.committed(path)

    def _take_fresh(self) -> tuple[FreshFiles, str]:
        """This process's fresh files and one ready file of them; SpoolError if none can be."""
        fresh = self._fresh_files()
        try:
            return fresh, fresh.take()
        except OSError as exc:
            raise _spool_error("cannot make fresh spool files in", self._fresh_dir, exc) from exc

    def close(self) -> None:
        """Sync what commits left to the background and remove this process's fresh files."""
        with self._fresh_lock:
            fresh, self._fresh = self._fresh, None
        if fresh is not None:
            fresh.close()

    def _fresh_files(self) -> FreshFiles:
        """This process's fresh files; made on first use, after reaping dead processes' ones."""
        with self._fresh_lock:
            if self._fresh is None:
                try:
                    self._recover_fresh(live=True)
                except OSError as exc:
                    raise _spool_error("cannot read", self._fresh_dir, exc) from exc
                self._fresh = FreshFiles(self._fresh_dir, self._queue)
            return self._fresh

    def _recover_fresh(self, *, live: bool) -> tuple[int, int]:
        """Remove fresh files no process uses; restore links a reboot lost. (restored, partial)

        With `live`, other processes may be committing: only files of processes that are gone
        are touched (never this process's: another `Spool` here may be using them). A whole
        batch written in an earlier boot gets back every link it lacks; in this boot a missing
        link means the message was delivered (or its commit failed), so nothing is restored.
        A file that is not a whole batch and that no link keeps was never acknowledged. Every
        link, restored or left by the process that made it, is synced before a name goes.
        """
        restored = partial = 0
        remove: list[Path] = []
        for name in os.listdir(self._fresh_dir):
            spent = spent_owner(name)
            if spent is not None:
                # Its links were synced before it was spent: nothing to restore from it, and
                # its file lives on through them if any is left.
                if not (live and (spent == os.getpid() or _alive(spent))):
                    with suppress(FileNotFoundError):
                        (self._fresh_dir / name).unlink()
                continue
            pid = owner(name)
            if live and (pid is None or pid == os.getpid() or _alive(pid)):
                continue
            path = self._fresh_dir / name
            try:
                info = os.lstat(path)
                if not stat.S_ISREG(info.st_mode):
                    _remove_tree(path)
                    continue
                batch = whole_fresh_file(path, info.st_size) if info.st_size else None
            except FileNotFoundError:
                continue  # another process reaped it first
            if batch is None:
                partial += info.st_size > 0 and info.st_nlink == 1  # a write cut short
            elif batch[1] != batchfile.boot_id() or batch[1] == "-":
                for queue_id in batch[0]:
                    with suppress(FileExistsError, FileNotFoundError):
                        os.link(path, self._queue / checked_id(queue_id))
                        restored += 1
            remove.append(path)
        if remove:
            fsync_dir(self._queue)
            for path in remove:
                with suppress(FileNotFoundError):
                    path.unlink()
        fsync_dir(self._fresh_dir)
        return restored, partial

    def _commit(self, envelope: Envelope, message: bytes) -> None:
        """Write the queue file of a checked envelope: tmp/, fsync, rename, directory fsync."""
        queue_id = envelope.queue_id
        tmp_path = self._tmp / queue_id
        final = self._queue / queue_id
        try:
            write_file_durably(tmp_path, (envelope.to_json(), b"\n", message))
        except OSError as exc:
            # write_file_durably removed what it created; if O_EXCL failed, tmp/<id> is not ours.
            raise _spool_error("cannot write spool file", tmp_path, exc) from exc
        action, path = "cannot commit spool file", final
        try:
            # Ids carry 40 random bits; this only guards against a bug reusing one.
            if final.exists():
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST))
            os.rename(tmp_path, final)
            action, path = "cannot sync spool directory", self._queue
            self._sync_new_names()
        except OSError as exc:
            with suppress(OSError):
                tmp_path.unlink()
            if path == self._queue:
                with suppress(OSError):
                    final.unlink()
            raise _spool_error(action, path, exc) from exc

    def _sync_new_names(self) -> None:
        """Make the name this thread just put into queue/ durable, sharing directory fsyncs."""
        with self._rename_lock:
            self._renames += 1
            mine = self._renames
        with self._sync_lock:
            if self._synced >= mine:
                return  # another thread's fsync started after our rename: already durable
            with self._rename_lock:
                covered = self._renames
            fsync_dir(self._queue)
            self._synced = covered

    def sweep(self) -> Recovery:
        """Remove what crashed writes left behind; run at startup before serving.

        Deletes everything in tmp/; a queue file without a readable envelope line is moved to
        corrupt/ (never deleted) and reported in the result.
        """
        path = self._tmp
        try:
            tmp_removed = 0
            for path in self._tmp.iterdir():
                _remove_tree(path)
                tmp_removed += 1
            path = self._fresh_dir
            restored, partial = self._recover_fresh(live=False)
            tmp_removed += partial
            path = self._queue
            queued, unknown = self._scan_queue()
            live = set(queued)
            for directory in (self._state, self._hold):
                path = directory
                for name in os.listdir(directory):
                    if name not in live:
                        path = directory / name
                        _remove_tree(path)
            corrupt: list[str] = []
            for queue_id in queued:
                try:
                    self.envelope(queue_id)
                except SpoolError as exc:
                    if isinstance(exc.__cause__, OSError):
                        raise  # a read error is not corruption: never move a good message aside
                    path = self._queue / queue_id
                    os.rename(path, self._corrupt_name(queue_id))
                    corrupt.append(queue_id)
            if corrupt:
                path = self._queue
                fsync_dir(self._queue)
                path = self._corrupt
                fsync_dir(self._corrupt)
        except OSError as exc:
            raise _spool_error("cannot sweep spool path", path, exc) from exc
        return Recovery(
            removed_partial=tmp_removed,
            corrupt=tuple(corrupt),
            unknown_entries=unknown,
            restored=restored,
        )

    def ids(self) -> list[str]:
        """Return the committed queue ids, oldest first."""
        try:
            queued, _ = self._scan_queue()
        except OSError as exc:
            raise _spool_error("cannot list spool directory", self._queue, exc) from exc
        return queued

    def envelope(self, queue_id: str) -> Envelope:
        """Return the envelope of a committed message; SpoolError if unknown or corrupt."""
        path = self._queue_s + checked_id(queue_id)
        line, newline, _ = self._record(path, queue_id, envelope_only=True).partition(b"\n")
        if not newline:
            raise SpoolError(f"corrupt envelope {path}: no envelope line")
        try:
            envelope = Envelope.from_json(line)
        except SpoolError as exc:
            raise SpoolError(f"corrupt envelope {path}: {exc}") from None
        if envelope.queue_id != queue_id:
            raise SpoolError(f"corrupt envelope {path}: it names queue id {envelope.queue_id}")
        return envelope

    def queued(self, queue_id: str) -> bool:
        """Whether `queue_id` is queued (a stat, nothing read); SpoolError when unsure."""
        path = self._queue_s + checked_id(queue_id)
        try:
            os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:
            raise _spool_error("cannot read spool file", path, exc) from exc
        return True

    def message(self, queue_id: str) -> bytes:
        """Return the message bytes of `queue_id` exactly as they will be sent."""
        path = self._queue_s + checked_id(queue_id)
        data = self._record(path, queue_id)
        newline = data.find(b"\n")
        if newline < 0:
            raise SpoolError(f"corrupt envelope {path}: no envelope line")
        return data[newline + 1 :]

    @staticmethod
    def _record(path: str, queue_id: str, *, envelope_only: bool = False) -> bytes:
        """The record (envelope line, LF, message) of a queue file, single or batch."""
        try:
            with open(path, "rb", buffering=0) as file:
                head = file.read(batchfile.HEADER_READ)
                if streamfile.is_streamed(head):
                    size = os.fstat(file.fileno()).st_size
                    return streamfile.read_record(file.fileno(), size, envelope_only=envelope_only)
                return batchfile.read_record_from(file, head, queue_id, envelope_only=envelope_only)
        except FileNotFoundError:
            raise UnknownQueueIdError(f"unknown queue id {queue_id}") from None
        except OSError as exc:
            raise _spool_error("cannot read spool file", path, exc) from exc
        except SpoolError as exc:
            raise SpoolError(f"corrupt envelope {path}: {exc}") from None

    def remove(self, queue_id: str, *, durable: bool = True, state: bool = True) -> None:
        """Un-queue `queue_id` (delivered, bounced or removed by the operator).

        The queue file goes first: once it is gone the message is finished, and a crash before
        its state file goes leaves only an orphan that `sweep` deletes. With `durable=False`
        the directory is not synced: a crash may bring the message back, and it is delivered
        again (at least once), which is what delivery promises anyway; it saves an fsync per
        delivered message. With `state=False` (the runner never found nor wrote a delivery
        state for it) its state and retry names are not looked for: two failing system calls
        per delivered message; a retry flag an operator set meanwhile is an orphan the runner
        clears when it next takes the flags.
        """
        path = self._queue_s + checked_id(queue_id)
        action = "cannot remove spool file"
        try:
            os.unlink(path)
            action = "cannot sync spool directory"
            if durable:
                path = str(self._queue)
                fsync_dir(self._queue)
            action = "cannot remove spool file"
            for path in (
                (self._state_s + queue_id, self._retry_s + queue_id, self._hold_s + queue_id)
                if state
                else (self._hold_s + queue_id,)
            ):
                with suppress(FileNotFoundError):
                    os.unlink(path)
        except FileNotFoundError:
            raise UnknownQueueIdError(f"unknown queue id {queue_id}") from None
        except OSError as exc:
            raise _spool_error(action, path, exc) from exc

    def read_state(self, queue_id: str) -> bytes | None:
        """The delivery state written by `write_state`, or None before the first attempt."""
        path = self._state_s + checked_id(queue_id)
        try:
            with open(path, "rb") as file:
                return file.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _spool_error("cannot read state file", path, exc) from exc

    def write_state(self, queue_id: str, data: bytes) -> None:
        """Replace the delivery state of a queued message atomically and durably.

        UnknownQueueIdError when the message is no longer queued (removed by the operator during
        an attempt): no state is written for it. A removal racing the rename leaves an orphan
        state file, which `sweep` deletes.
        """
        if not self.queued(queue_id):
            raise UnknownQueueIdError(f"unknown queue id {queue_id}")
        final = self._state / queue_id
        try:
            atomic_replace(final, data, self._tmp)
        except OSError as exc:
            raise _spool_error("cannot write state file", final, exc) from exc

    def request_retry(self, queue_id: str) -> None:
        """Ask the delivery runner to try `queue_id` at once; SpoolError if it is not queued."""
        if not self.queued(queue_id):
            raise UnknownQueueIdError(f"unknown queue id {queue_id}")
        path = self._retry / queue_id
        try:
            path.touch()
        except OSError as exc:
            raise _spool_error("cannot write retry flag", path, exc) from exc

    def take_retry_requests(self, mine: Callable[[str], bool] = lambda _: True) -> list[str]:
        """Return and clear the ids flagged by `request_retry` that are `mine` (another runner's
        are left for it); a name that is no id is cleared."""
        taken = []
        try:
            for name in os.listdir(self._retry):
                wanted = is_queue_id(name)
                if wanted and not mine(name):
                    continue
                with suppress(FileNotFoundError):
                    os.unlink(self._retry / name)
                if wanted:
                    taken.append(name)
        except OSError as exc:
            raise _spool_error("cannot read retry flags", self._retry, exc) from exc
        return taken

    def _scan_queue(self) -> tuple[list[str], int]:
        """Return the queued ids (sorted, oldest first) and the count of other names."""
        queued: list[str] = []
        unknown = 0
        for name in os.listdir(self._queue):
            if is_queue_id(name):
                queued.append(name)
            else:
                unknown += 1
        queued.sort()
        return queued, unknown

    def _corrupt_name(self, queue_id: str) -> Path:
        """Return a free name in corrupt/ for the queue file of `queue_id`."""
        target = self._corrupt / queue_id
        if target.exists():
            target = self._corrupt / f"{queue_id}.{secrets.token_hex(4)}"
        return target


def whole_fresh_file(path: Path, size: int) -> tuple[list[str], str] | None:
    """The queue ids and boot id of a whole fresh file (a batch or a streamed file), or None."""
    token = name_token(path)
    with open(path, "rb", buffering=0) as file:
        if streamfile.is_streamed(file.read(len(streamfile.MAGIC))):
            return streamfile.check_file(file.fileno(), size, token)
    return batchfile.check_file(path, token)


def _alive(pid: int) -> bool:
    """Whether process `pid` exists (one of another user counts: never touch its files)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _remove_tree(path: Path) -> None:
    """Delete a file, or a directory with everything in it, without following symlinks."""
    if path.is_dir() and not path.is_symlink():
        for child in path.iterdir():
            _remove_tree(child)
        path.rmdir()
    else:
        path.unlink()


def _spool_error(action: str, path: Path | str, exc: OSError) -> SpoolError:
    """Build the one-line error for a failed spool operation, SpoolFullError if the disk is full."""
    kind = SpoolFullError if is_disk_full(exc) else SpoolError
    return kind(f"{action} {path}: {exc.strerror or exc}")

"""The durable spool: accepted messages on disk, each committed before its 250 is sent.

Layout under the spool root (directories mode 0o700, files mode 0o600):

- ``tmp/``: files being written; anything here is garbage once the server is down.
- ``queue/<id>``: one file per queued message: its envelope (one line of JSON, UTF-8), a LF,
  then the message bytes exactly as they will be sent. A message is queued if and only if its
  file is in ``queue/``: the rename from ``tmp/`` (the envelope's arrival) is the commit point.
- ``corrupt/``: queue files whose envelope line cannot be read, moved aside by `Spool.sweep`.
- ``state/<id>``: delivery state of a message that has had an attempt (which recipients are done,
  when to try next), replaced atomically (tmp/, fsync, rename). No state file: nothing tried yet.
- ``retry/<id>``: an empty flag asking the delivery runner to try `<id>` now (`queue retry`).

`Spool.put` writes ``tmp/<id>`` in one writev, fsyncs it, renames it into ``queue/`` and then
makes the rename durable with an fsync of ``queue/``. One file per message (not a message file
plus an envelope file) halves inode allocation and file fsyncs, which dominate the cost of a
durable accept. Directory fsyncs are group-committed: a put whose rename was already covered by
another thread's directory fsync does not issue its own. On any error `put` removes what it
wrote and raises `SpoolFullError` (disk full) or `SpoolError`, so a half-written message is never
visible as queued. Delivery state, when it exists, lives in ``state/<id>``; the queue file
itself is never rewritten.

Security: queue ids come from the command line and from directory listings, so every id is
checked against a strict pattern before it becomes part of a path (no ``../``). Envelope files
are parsed strictly (exact keys, exact types, no control characters in addresses). Message bytes
come from clients and are stored verbatim; this module never looks inside them (`queue show`
in cli/ escapes them for the terminal). This module touches only files under the spool root and
does not log.
"""

import errno
import json
import math
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from sendgate.errors import SpoolError, SpoolFullError, UnknownQueueIdError
from sendgate.fsutil import atomic_replace, fsync_dir, is_disk_full, write_file_durably

# Crockford base32, in ascending ASCII order so that ids sort like the numbers they encode.
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_ID_CHARS = 18
_RANDOM_BYTES = 5
# 48 bits of time + 40 random bits fill 88 of 90 bits: the first character is at most "7".
_QUEUE_ID_RE = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{17}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_ENVELOPE_VERSION = 1
_BODY_TYPES = frozenset({"7BIT", "8BITMIME"})

_T = TypeVar("_T")


def new_queue_id(now: float, rand: bytes) -> str:
    """Return the queue id for unix time `now` and 5 random bytes `rand`; pure.

    The id is 18 characters of Crockford base32 (0-9 and A-Z without I, L, O, U) encoding the
    48-bit milliseconds since the epoch followed by the 40 random bits, so ids sort by time.
    """
    if len(rand) != _RANDOM_BYTES:
        raise ValueError(f"queue id needs {_RANDOM_BYTES} random bytes, got {len(rand)}")
    millis = int(now * 1000)
    if not 0 <= millis < 1 << 48:
        raise ValueError(f"time {now!r} is outside the queue id range")
    value = millis << (8 * _RANDOM_BYTES) | int.from_bytes(rand, "big")
    chars = []
    for _ in range(_ID_CHARS):
        chars.append(_CROCKFORD[value & 0x1F])
        value >>= 5
    return "".join(reversed(chars))


def _checked_id(queue_id: str) -> str:
    """Return `queue_id` if it is a well-formed queue id, else raise SpoolError."""
    if not _QUEUE_ID_RE.fullmatch(queue_id):
        raise SpoolError(f"invalid queue id {queue_id!r}")
    return queue_id


@dataclass(frozen=True, slots=True)
class Envelope:
    """What the server knows about one accepted message besides its bytes.

    Values are checked on construction (SpoolError naming the field), so an envelope that was
    written can always be read back.
    """

    queue_id: str
    sender: str  # reverse-path mailbox ("" for the null sender)
    recipients: tuple[str, ...]
    user: str  # authenticated login
    received_at: float  # unix time
    size: int  # len(message bytes)
    smtputf8: bool = False
    body: str = "7BIT"  # "7BIT" | "8BITMIME"

    def __post_init__(self) -> None:
        try:
            _checked_id(self.queue_id)
        except SpoolError as exc:
            raise SpoolError(f"envelope field 'queue_id': {exc}") from None
        _check_text("sender", self.sender)
        if not self.recipients:
            raise SpoolError("envelope field 'recipients': must not be empty")
        for recipient in self.recipients:
            _check_text("recipients", recipient, allow_empty=False)
        _check_text("user", self.user, allow_empty=False)
        if not math.isfinite(self.received_at) or self.received_at < 0:
            raise SpoolError("envelope field 'received_at': must be a finite time >= 0")
        if self.size < 0:
            raise SpoolError("envelope field 'size': must be >= 0")
        if self.body not in _BODY_TYPES:
            raise SpoolError(f"envelope field 'body': unknown body type {self.body!r}")

    def to_json(self) -> bytes:
        """Serialise as UTF-8 JSON (non-ASCII addresses stay readable, keys sorted)."""
        record = {
            "version": _ENVELOPE_VERSION,
            "queue_id": self.queue_id,
            "sender": self.sender,
            "recipients": list(self.recipients),
            "user": self.user,
            "received_at": self.received_at,
            "size": self.size,
            "smtputf8": self.smtputf8,
            "body": self.body,
        }
        return json.dumps(record, ensure_ascii=False, sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> "Envelope":
        """Parse what `to_json` wrote; SpoolError naming the field on anything malformed."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise SpoolError("envelope is not valid UTF-8") from None
        try:
            raw = json.loads(text, object_pairs_hook=_unique_keys)
        except RecursionError:
            raise SpoolError("envelope is not valid JSON: nested too deeply") from None
        except ValueError as exc:
            raise SpoolError(f"envelope is not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise SpoolError("envelope is not a JSON object")
        expected = {"version", *(field.name for field in fields(cls))}
        missing = sorted(expected - raw.keys())
        if missing:
            raise SpoolError(f"envelope field {missing[0]!r}: missing")
        unknown = sorted(raw.keys() - expected)
        if unknown:
            raise SpoolError(f"envelope field {unknown[0]!r}: not a known field")
        version = raw["version"]
        if type(version) is not int or version != _ENVELOPE_VERSION:
            raise SpoolError(f"envelope field 'version': unsupported version {version!r}")
        recipients = _typed(raw, "recipients", list, "a list")
        for recipient in recipients:
            if not isinstance(recipient, str):
                raise SpoolError("envelope field 'recipients': expected a list of strings")
        received_at = raw["received_at"]
        if type(received_at) not in (int, float) or abs(received_at) > 1e15:
            raise SpoolError("envelope field 'received_at': expected a unix time")
        return cls(
            queue_id=_typed(raw, "queue_id", str, "a string"),
            sender=_typed(raw, "sender", str, "a string"),
            recipients=tuple(recipients),
            user=_typed(raw, "user", str, "a string"),
            received_at=float(received_at),
            size=_typed(raw, "size", int, "an integer"),
            smtputf8=_typed(raw, "smtputf8", bool, "true or false"),
            body=_typed(raw, "body", str, "a string"),
        )


def _check_text(field: str, value: str, *, allow_empty: bool = True) -> None:
    """Reject control characters (never valid in a mailbox or login) and unwanted emptiness."""
    if not value and not allow_empty:
        raise SpoolError(f"envelope field {field!r}: must not be empty")
    if _CONTROL_RE.search(value):
        raise SpoolError(f"envelope field {field!r}: contains a control character")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Build a JSON object, refusing a key given twice (json would silently keep the last)."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise SpoolError(f"envelope field {key!r}: given twice")
        result[key] = value
    return result


def _typed(raw: dict[str, Any], field: str, kind: type[_T], description: str) -> _T:
    """Return raw[field] if it is exactly of type `kind` (so True is not an int)."""
    value = raw[field]
    if type(value) is not kind:
        raise SpoolError(f"envelope field {field!r}: expected {description}")
    return value


@dataclass(frozen=True, slots=True)
class SweepResult:
    """What `Spool.sweep` cleaned up."""

    tmp_removed: int  # entries deleted from tmp/ (writes a crash interrupted)
    corrupt: tuple[str, ...]  # ids whose queue file has no readable envelope; moved to corrupt/
    unknown_entries: int  # names in queue/ that are not spool files; left in place


class Spool:
    """The spool directory: put, list, read and remove committed messages.

    Thread-safe; `put`, `sweep` and `remove` block on fsync, so call them from a
    thread pool, not the event loop. `sweep` must run before serving, with no `put` under way.
    """

    def __init__(self, root: Path, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._tmp = root / "tmp"
        self._queue = root / "queue"
        self._corrupt = root / "corrupt"
        self._state = root / "state"
        self._retry = root / "retry"
        self._rename_lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._renames = 0  # renames into queue/ so far
        self._synced = 0  # renames known durable (covered by a finished directory fsync)
        path = root
        try:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
            for path in (self._tmp, self._queue, self._corrupt, self._state, self._retry):
                path.mkdir(mode=0o700, exist_ok=True)
            # A fresh spool's directories must survive a crash as surely as its messages.
            fsync_dir(root)
            fsync_dir(root.parent)
        except OSError as exc:
            raise _spool_error("cannot create spool directory", path, exc) from exc

    def new_id(self) -> str:
        """Return a new queue id: sortable by time, unique across processes (40 random bits)."""
        return new_queue_id(self._clock(), secrets.token_bytes(_RANDOM_BYTES))

    def put(self, envelope: Envelope, message: bytes) -> None:
        """Store `message` under `envelope.queue_id`; it is durably queued when this returns.

        Raises SpoolFullError when the disk or quota is full, SpoolError on any other I/O error
        (including an id already in use); either way nothing of this message stays behind.
        """
        if envelope.size != len(message):
            raise ValueError(f"envelope size {envelope.size} != message size {len(message)}")
        queue_id = _checked_id(envelope.queue_id)
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
            with self._rename_lock:
                self._renames += 1
                mine = self._renames
            action, path = "cannot sync spool directory", self._queue
            self._sync_queue_dir(mine)
        except OSError as exc:
            with suppress(OSError):
                tmp_path.unlink()
            if path == self._queue:
                with suppress(OSError):
                    final.unlink()
            raise _spool_error(action, path, exc) from exc

    def _sync_queue_dir(self, rename: int) -> None:
        """Make rename number `rename` durable, sharing one directory fsync between threads."""
        with self._sync_lock:
            if self._synced >= rename:
                return  # another thread's fsync started after our rename: already durable
            with self._rename_lock:
                covered = self._renames
            fsync_dir(self._queue)
            self._synced = covered

    def sweep(self) -> SweepResult:
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
            path = self._queue
            queued, unknown = self._scan_queue()
            path = self._state
            live = set(queued)
            for name in os.listdir(self._state):
                if name not in live:
                    path = self._state / name
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
        return SweepResult(tmp_removed=tmp_removed, corrupt=tuple(corrupt), unknown_entries=unknown)

    def ids(self) -> list[str]:
        """Return the committed queue ids, oldest first."""
        try:
            queued, _ = self._scan_queue()
        except OSError as exc:
            raise _spool_error("cannot list spool directory", self._queue, exc) from exc
        return queued

    def envelope(self, queue_id: str) -> Envelope:
        """Return the envelope of a committed message; SpoolError if unknown or corrupt."""
        path = self._queue / _checked_id(queue_id)
        try:
            with path.open("rb") as file:
                line = file.readline()
        except FileNotFoundError:
            raise UnknownQueueIdError(f"unknown queue id {queue_id}") from None
        except OSError as exc:
            raise _spool_error("cannot read spool file", path, exc) from exc
        if not line.endswith(b"\n"):
            raise SpoolError(f"corrupt envelope {path}: no envelope line")
        try:
            envelope = Envelope.from_json(line[:-1])
        except SpoolError as exc:
            raise SpoolError(f"corrupt envelope {path}: {exc}") from None
        if envelope.queue_id != queue_id:
            raise SpoolError(f"corrupt envelope {path}: it names queue id {envelope.queue_id}")
        return envelope

    def message(self, queue_id: str) -> bytes:
        """Return the message bytes of `queue_id` exactly as they will be sent."""
        path = self._queue / _checked_id(queue_id)
        data = _read(path, queue_id)
        newline = data.find(b"\n")
        if newline < 0:
            raise SpoolError(f"corrupt envelope {path}: no envelope line")
        return data[newline + 1 :]

    def remove(self, queue_id: str, *, durable: bool = True) -> None:
        """Un-queue `queue_id` (delivered, bounced or removed by the operator).

        The queue file goes first: once it is gone the message is finished, and a crash before
        its state file goes leaves only an orphan that `sweep` deletes. With `durable=False`
        the directory is not synced: a crash may bring the message back, and it is delivered
        again (at least once), which is what delivery promises anyway; it saves an fsync per
        delivered message.
        """
        path = self._queue / _checked_id(queue_id)
        action = "cannot remove spool file"
        try:
            path.unlink()
            action = "cannot sync spool directory"
            if durable:
                fsync_dir(self._queue)
            for extra in (self._state / queue_id, self._retry / queue_id):
                path = extra
                action = "cannot remove spool file"
                with suppress(FileNotFoundError):
                    extra.unlink()
        except FileNotFoundError:
            raise UnknownQueueIdError(f"unknown queue id {queue_id}") from None
        except OSError as exc:
            raise _spool_error(action, path, exc) from exc

    def read_state(self, queue_id: str) -> bytes | None:
        """The delivery state written by `write_state`, or None before the first attempt."""
        path = self._state / _checked_id(queue_id)
        try:
            return path.read_bytes()
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
        queue_id = _checked_id(queue_id)
        if not (self._queue / queue_id).exists():
            raise UnknownQueueIdError(f"unknown queue id {queue_id}")
        final = self._state / queue_id
        try:
            atomic_replace(final, data, self._tmp)
        except OSError as exc:
            raise _spool_error("cannot write state file", final, exc) from exc

    def request_retry(self, queue_id: str) -> None:
        """Ask the delivery runner to try `queue_id` at once; SpoolError if it is not queued."""
        queue_id = _checked_id(queue_id)
        if not (self._queue / queue_id).exists():
            raise UnknownQueueIdError(f"unknown queue id {queue_id}")
        path = self._retry / queue_id
        try:
            path.touch()
        except OSError as exc:
            raise _spool_error("cannot write retry flag", path, exc) from exc

    def take_retry_requests(self) -> list[str]:
        """Return and clear the ids flagged by `request_retry`."""
        taken = []
        try:
            for name in os.listdir(self._retry):
                with suppress(FileNotFoundError):
                    os.unlink(self._retry / name)
                if _QUEUE_ID_RE.fullmatch(name):
                    taken.append(name)
        except OSError as exc:
            raise _spool_error("cannot read retry flags", self._retry, exc) from exc
        return taken

    def index_entries(self, ids: list[str]) -> list[tuple[str, Envelope | None, bytes | None]]:
        """Envelope and delivery state of each id, in one call (one thread handoff for many).

        A message that is gone by now gives (id, None, None); other errors raise SpoolError.
        """
        entries: list[tuple[str, Envelope | None, bytes | None]] = []
        for queue_id in ids:
            try:
                entries.append((queue_id, self.envelope(queue_id), self.read_state(queue_id)))
            except UnknownQueueIdError:
                entries.append((queue_id, None, None))
        return entries

    def _scan_queue(self) -> tuple[list[str], int]:
        """Return the queued ids (sorted, oldest first) and the count of other names."""
        queued: list[str] = []
        unknown = 0
        for name in os.listdir(self._queue):
            if _QUEUE_ID_RE.fullmatch(name):
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


def _read(path: Path, queue_id: str) -> bytes:
    """Read a spool file; a missing one means the queue id is unknown."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UnknownQueueIdError(f"unknown queue id {queue_id}") from None
    except OSError as exc:
        raise _spool_error("cannot read spool file", path, exc) from exc


def _remove_tree(path: Path) -> None:
    """Delete a file, or a directory with everything in it, without following symlinks."""
    if path.is_dir() and not path.is_symlink():
        for child in path.iterdir():
            _remove_tree(child)
        path.rmdir()
    else:
        path.unlink()


def _spool_error(action: str, path: Path, exc: OSError) -> SpoolError:
    """Build the one-line error for a failed spool operation, SpoolFullError if the disk is full."""
    kind = SpoolFullError if is_disk_full(exc) else SpoolError
    return kind(f"{action} {path}: {exc.strerror or exc}")

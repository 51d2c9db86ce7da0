"""The spool's hold files: which queued messages are held, and why.

``hold/<id>`` (next to ``queue/<id>`` under the spool root) holds the reason, UTF-8. A message
is held while its hold file exists; `Spool.put` writes the file before the queue file for mail
held from the start, `Spool.remove` and `Spool.sweep` delete the files of messages that left.
Every change here is durable (file and directory fsync'd) when it returns.

Security: queue ids come from the command line and from directory listings and are checked
against the strict id pattern before they become part of a path. A reason is shown to people
only through `text.printable`; it is decoded here with replacement, never interpreted.
"""

import os
from contextlib import suppress
from pathlib import Path

from sendgate.errors import SpoolError, SpoolFullError, UnknownQueueIdError
from sendgate.fsutil import atomic_replace, fsync_dir, is_disk_full
from sendgate.store.envelope import checked_id, is_queue_id


class Holds:
    """The hold files of one spool; thread-safe (each operation is a few file system calls)."""

    def __init__(self, directory: Path, queue_dir: Path, tmp_dir: Path) -> None:
        self._dir = directory
        self._queue = queue_dir
        self._tmp = tmp_dir

    def hold(self, queue_id: str, reason: str) -> None:
        """Hold a queued message, replacing an earlier reason; UnknownQueueIdError."""
        queue_id = self._queued(queue_id)
        path = self._dir / queue_id
        try:
            atomic_replace(path, reason.encode(), self._tmp)
        except OSError as exc:
            raise _error("cannot write hold file", path, exc) from exc
        if not (self._queue / queue_id).exists():
            # Finished while the file was written: leave no hold behind for an id that is gone.
            with suppress(OSError):
                path.unlink()
            raise UnknownQueueIdError(f"unknown queue id {queue_id}")

    def unhold(self, queue_id: str) -> bool:
        """Release a held message; False if it was not held; UnknownQueueIdError."""
        queue_id = self._queued(queue_id)
        path = self._dir / queue_id
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _error("cannot remove hold file", path, exc) from exc
        try:
            fsync_dir(self._dir)
        except OSError as exc:
            raise _error("cannot sync spool directory", self._dir, exc) from exc
        return True

    def reason(self, queue_id: str) -> str | None:
        """Why a queued message is held, or None if it is not; UnknownQueueIdError."""
        queue_id = self._queued(queue_id)
        path = self._dir / queue_id
        try:
            return path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _error("cannot read hold file", path, exc) from exc

    def ids(self) -> set[str]:
        """The held ids: one directory listing, whatever the size of the queue."""
        try:
            return {name for name in os.listdir(self._dir) if is_queue_id(name)}
        except OSError as exc:
            raise _error("cannot read hold files", self._dir, exc) from exc

    def _queued(self, queue_id: str) -> str:
        queue_id = checked_id(queue_id)
        if not (self._queue / queue_id).exists():
            raise UnknownQueueIdError(f"unknown queue id {queue_id}")
        return queue_id


def _error(action: str, path: Path, exc: OSError) -> SpoolError:
    kind = SpoolFullError if is_disk_full(exc) else SpoolError
    return kind(f"{action} {path}: {exc.strerror or exc}")

"""A change mark: eight octets in a small shared file that every write of some rows renews.

The event loop reads bans at every connection and a user's rows at every login. Asking SQLite
costs a read transaction: several system calls, each of which gives the GIL away to the
process's other threads and waits to get it back. A reader instead keeps what it read together
with the mark it saw before reading, and reads again only once the mark differs, or once
`REREAD` seconds have passed (a writer that died between its commit and its new mark is missed
for that long at most). The mark is a memory read of a mapped file, shared by every process
that opens the store (workers, the runner, the CLI): no system call.

Order: a writer renews the mark after its commit, and a reader looks at the mark before it
reads. A commit the reader's read did not see therefore renews the mark after the reader looked
at it, and the next look finds a different mark. A renewal is a fresh random value, not a
count: two writers renewing at once cannot write the value a reader already holds.

Security: the file holds no data (random octets) and is created owner-only beside its
database; when root creates it, it is given to the database's owner, as SQLite does with its
-wal and -shm files, so the unprivileged workers can open it. When it cannot be opened or
mapped, `current` never repeats: every read goes to the store, as without a mark.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Generic, TypeVar

from sendgate.store.envelope import UNIQUE

REREAD = 1.0  # seconds a read may be kept, whatever the mark says
KEPT = 4096  # reads kept at most (all are dropped when it is reached)
_SIZE = 8
_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


class ChangeMark:
    """The mark kept in `path` (made if missing)."""

    def __init__(self, path: Path, *, owner_of: Path | None = None) -> None:
        """`owner_of`: the file whose owner a mark file created by root is given to."""
        self.path = path
        self._map: mmap.mmap | None = None
        self._unmapped = 0  # `current` without a map: a value never returned before
        with contextlib.suppress(OSError, ValueError):
            self._map = _open(path, owner_of)

    def current(self) -> bytes:
        """The mark now (compare it with one seen before: equal means no write since)."""
        mapped = self._map
        if mapped is not None:
            with contextlib.suppress(ValueError):  # closed meanwhile (the store is closing)
                return mapped[:_SIZE]
        self._unmapped += 1
        return b"unmapped" + self._unmapped.to_bytes(8, "big")

    def renew(self) -> None:
        """Say that the rows changed (after the commit that changed them)."""
        mapped = self._map
        if mapped is not None:
            with contextlib.suppress(ValueError):  # closed meanwhile (the store is closing)
                mapped[:_SIZE] = UNIQUE.getrandbits(64).to_bytes(_SIZE, "big")

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None


class KeptReads(Generic[_K, _V]):
    """Reads kept by key, each with the mark and the time seen before it was read.

    For one thread (an event loop): `seen()` before reading, then `get` a kept read that is
    still good, or read and `keep` the result with what `seen()` said.
    """

    def __init__(self, mark: ChangeMark, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.mark = mark
        self.clock = clock
        self._kept: dict[_K, tuple[bytes, float, _V]] = {}

    def seen(self) -> tuple[bytes, float]:
        """The mark and the time now: take them before reading."""
        return self.mark.current(), self.clock()

    def get(self, key: _K, seen: tuple[bytes, float]) -> _V | None:
        """The read kept for `key` if the mark is still the one seen and REREAD has not passed."""
        kept = self._kept.get(key)
        if kept is not None and kept[0] == seen[0] and 0 <= seen[1] - kept[1] < REREAD:
            return kept[2]
        return None

    def keep(self, key: _K, seen: tuple[bytes, float], value: _V) -> None:
        if len(self._kept) >= KEPT:
            self._kept.clear()
        self._kept[key] = (seen[0], seen[1], value)


def _open(path: Path, owner_of: Path | None) -> mmap.mmap:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if os.fstat(fd).st_size < _SIZE:
            os.ftruncate(fd, _SIZE)
        if os.geteuid() == 0 and owner_of is not None:
            with contextlib.suppress(OSError):
                owner = os.stat(owner_of)
                os.fchown(fd, owner.st_uid, owner.st_gid)
        return mmap.mmap(fd, _SIZE)
    finally:
        os.close(fd)

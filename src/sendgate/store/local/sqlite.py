"""One SQLite file (WAL mode) that every process of the host opens: the local stores' database.

Both local SQLite stores (users, limits) go through `Database`: it creates the file owner-only,
sets the pragmas, creates, checks or upgrades the schema once (two processes opening a new or an
old file race safely), serialises the threads of one process on its connection, and turns every
SQLite failure into a one-line `StoreError` naming the file. `read_at_once` is the one way to
read from an event loop: a second connection that never waits.

Schema versions: a store passes the statements that create its current schema (`version`) and,
in `migrations`, for each older version N the statements that turn version N into N + 1. A file
of an older version is upgraded in place, step by step, in the one transaction that reads its
version; a file of a newer version (made by a newer sendgate) is refused.

Security: the files may hold password hashes and client addresses, so a new file is created
with mode 0o600 (SQLite gives its -wal and -shm files the same mode); values are only ever bound
as SQL parameters by the callers.
"""

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from sendgate.errors import StoreError
from sendgate.store.local.changes import ChangeMark

_T = TypeVar("_T")


class Database:
    """A connection to one SQLite file, shared by the threads of a process under a lock."""

    def __init__(
        self,
        path: Path,
        *,
        name: str,
        schema: Sequence[str],
        version: int,
        migrations: Mapping[int, Sequence[str]] | None = None,
        busy_timeout: float = 5.0,
    ) -> None:
        """Open (creating or upgrading if needed) `path`; `name` ("user store") names it in errors.

        `migrations` maps a version N to the statements that upgrade a version-N file to N + 1.
        """
        self.path = path
        # Renewed after every commit of `writing` when a store sets it (`store.local.changes`);
        # set once the file exists, whose owner the mark's file gets.
        self.mark: ChangeMark | None = None
        self._name = name
        self._lock = threading.Lock()
        # The event loop's connection (`read_at_once`): opened on first use, never waits.
        self._quick: sqlite3.Connection | None = None
        self._quick_lock = threading.Lock()
        self._closed = False
        try:
            _create_owner_only(path)
            self._db = sqlite3.connect(
                path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open {name} {path}: {_reason(exc)}") from exc
        try:
            self._set_up(schema, version, migrations or {})
        except BaseException:
            self._db.close()
            raise

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """Hold the lock; turn SQLite failures into one-line errors naming the file."""
        with self._lock:
            try:
                yield self._db
            except sqlite3.Error as exc:
                raise StoreError(f"{self._name} {self.path}: {_reason(exc)}") from exc

    @contextmanager
    def writing(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: the write lock taken up front, rolled back on any exception."""
        with self.reading() as db:
            # IMMEDIATE takes the write lock now, so a check-then-write cannot race another
            # process, and waiting for the lock honours the busy timeout.
            db.execute("BEGIN IMMEDIATE")
            with db:  # commits on success, rolls back on any exception
                yield db
            if self.mark is not None:
                self.mark.renew()

    def read_at_once(self, read: Callable[[sqlite3.Connection], _T]) -> _T | None:
        """`read(connection)` if it can run without waiting for anything, else None.

        For an event loop: the connection has no busy timeout and its lock is only tried, so
        neither a write in progress elsewhere nor another thread's read can stall the caller
        (in WAL mode a read does not wait for writers anyway). Any SQLite failure is None too:
        the caller then asks the same question the way that may wait, in a thread.
        """
        if not self._quick_lock.acquire(blocking=False):
            return None
        try:
            if self._closed:
                return None
            if self._quick is None:
                self._quick = sqlite3.connect(
                    self.path, timeout=0, isolation_level=None, check_same_thread=False
                )
            return read(self._quick)
        except sqlite3.Error:
            return None
        finally:
            self._quick_lock.release()

    def close(self) -> None:
        """Close the connections; calling it again does nothing."""
        with self._quick_lock:
            self._closed = True
            if self._quick is not None:
                self._quick.close()
        with self._lock:
            self._db.close()
            if self.mark is not None:
                self.mark.close()  # under the lock that `writing` renews it under

    def _set_up(
        self, schema: Sequence[str], version: int, migrations: Mapping[int, Sequence[str]]
    ) -> None:
        with self.reading() as db:
            # WAL lets workers read while one writes; with WAL, synchronous=NORMAL can lose the
            # last commits on power loss but never corrupts the file.
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute("PRAGMA foreign_keys = ON")
        with self.writing() as db:
            # Under BEGIN IMMEDIATE, so two processes opening a new or an old file create or
            # upgrade the schema once: the second one finds the version already written.
            found = db.execute("PRAGMA user_version").fetchone()[0]
            if found == version:
                return
            if found == 0:
                statements = list(schema)
            elif found < version and all(step in migrations for step in range(found, version)):
                statements = [sql for step in range(found, version) for sql in migrations[step]]
            else:
                raise StoreError(
                    f"{self._name} {self.path} has schema version {found},"
                    f" this sendgate knows version {version}"
                )
            for statement in statements:
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {version:d}")


def _create_owner_only(path: Path) -> None:
    """Create the database file with mode 0o600 unless it exists (SQLite would use the umask)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def _reason(exc: OSError | sqlite3.Error) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)

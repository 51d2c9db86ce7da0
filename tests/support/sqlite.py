"""Holding a local store's SQLite busy, for the tests of its `*_at_once` reads."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sendgate.store.local.sqlite import Database


@contextmanager
def quick_read_elsewhere(db: Database) -> Iterator[None]:
    """Another thread is in the middle of its own quick read while the block runs."""
    holding = threading.Event()
    release = threading.Event()

    def hold_the_quick_connection() -> None:
        with db._quick_lock:
            holding.set()
            release.wait(5)

    thread = threading.Thread(target=hold_the_quick_connection)
    thread.start()
    try:
        assert holding.wait(5)
        yield
    finally:
        release.set()
        thread.join()


@contextmanager
def write_in_progress(path: Path, statement: str) -> Iterator[None]:
    """Another connection has run `statement` in a write transaction it has not committed."""
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute(statement)
        yield
        other.execute("ROLLBACK")
    finally:
        other.close()

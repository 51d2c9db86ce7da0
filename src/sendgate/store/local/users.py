"""`UserStore` kept in one SQLite file (WAL mode) that every process on the host opens.

Security: the file holds password hashes, so a new file is created owner-only (see
`store.local.sqlite`); the mode of an existing file is left for `sendgate audit` to judge.
Usernames and addresses arrive validated by the caller and are only ever bound as SQL
parameters. Case is folded with str.lower(), as the address parser does, not str.casefold():
casefold maps "ß" to "ss", which would make the distinct IDNA domains straße.de and strasse.de
one key.
"""

import sqlite3
from collections.abc import Iterable
from itertools import groupby
from pathlib import Path
from typing import Any

from sendgate.errors import UserError
from sendgate.store.local.sqlite import Database
from sendgate.store.users import Flag, UserRecord

SCHEMA_VERSION = 1

_SCHEMA = (
    """CREATE TABLE users (
        username TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        generation INTEGER NOT NULL
    ) STRICT""",
    """CREATE TABLE addresses (
        address TEXT PRIMARY KEY,
        username TEXT NOT NULL REFERENCES users (username) ON DELETE CASCADE
    ) STRICT""",
    "CREATE INDEX addresses_by_username ON addresses (username)",
)

# One statement reads a user with all its addresses, so a reader never sees half a change.
_SELECT_USERS = """SELECT users.username, users.password_hash, users.generation, addresses.address
    FROM users LEFT JOIN addresses ON addresses.username = users.username"""
_ORDER = " ORDER BY users.username, addresses.address"


class LocalUserStore:
    """`UserStore` on SQLite; one connection per instance, shared by threads under a lock."""

    def __init__(self, path: Path, *, busy_timeout: float = 5.0) -> None:
        """Open (creating if needed) the store at `path`; wait up to `busy_timeout` s for locks."""
        self._db = Database(
            path,
            name="user store",
            schema=_SCHEMA,
            version=SCHEMA_VERSION,
            busy_timeout=busy_timeout,
        )
        self._create_flags()

    def get_user(self, username: str) -> UserRecord | None:
        """Return the user, or None when there is no such user."""
        with self._db.reading() as db:
            rows = db.execute(
                f"{_SELECT_USERS} WHERE users.username = ?{_ORDER}", (username.lower(),)
            )
            records = _records(rows)
        return records[0] if records else None

    def add_user(self, username: str, password_hash: str) -> None:
        """Create a user who owns its own address; refuse an existing user or owned address."""
        key = username.lower()
        with self._db.writing() as db:
            if _user_exists(db, key):
                raise UserError(f"user {key} already exists")
            _refuse_owned(db, key)
            db.execute(
                "INSERT INTO users (username, password_hash, generation) VALUES (?, ?, 1)",
                (key, password_hash),
            )
            db.execute("INSERT INTO addresses (address, username) VALUES (?, ?)", (key, key))

    def set_password_hash(self, username: str, password_hash: str) -> None:
        """Replace the user's hash and bump its generation; refuse an unknown user."""
        key = username.lower()
        with self._db.writing() as db:
            cursor = db.execute(
                "UPDATE users SET password_hash = ?, generation = generation + 1"
                " WHERE username = ?",
                (password_hash, key),
            )
            if cursor.rowcount == 0:
                raise UserError(f"unknown user {key}")

    def remove_user(self, username: str) -> None:
        """Delete the user and (by cascade) its addresses; refuse an unknown user."""
        key = username.lower()
        with self._db.writing() as db:
            cursor = db.execute("DELETE FROM users WHERE username = ?", (key,))
            if cursor.rowcount == 0:
                raise UserError(f"unknown user {key}")

    def list_users(self) -> list[UserRecord]:
        """Return every user, sorted by username."""
        with self._db.reading() as db:
            return _records(db.execute(f"{_SELECT_USERS}{_ORDER}"))

    def add_address(self, username: str, address: str) -> None:
        """Let the user send as `address`; refuse an unknown user or an address already owned."""
        key, wanted = username.lower(), address.lower()
        with self._db.writing() as db:
            if not _user_exists(db, key):
                raise UserError(f"unknown user {key}")
            _refuse_owned(db, wanted)
            db.execute("INSERT INTO addresses (address, username) VALUES (?, ?)", (wanted, key))

    def remove_address(self, username: str, address: str) -> None:
        """Take `address` away from the user; refuse one that user does not own."""
        key, unwanted = username.lower(), address.lower()
        with self._db.writing() as db:
            cursor = db.execute(
                "DELETE FROM addresses WHERE address = ? AND username = ?", (unwanted, key)
            )
            if cursor.rowcount == 0:
                raise UserError(f"user {key} does not own address {unwanted}")

    def close(self) -> None:
        """Close the connection; calling it again does nothing."""
        self._db.close()

    # --- flags: a stand-in (H-quota) until the schema's version 2 brings them (H-users) -----

    def _create_flags(self) -> None:
        with self._db.writing() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS flags (username TEXT PRIMARY KEY,"
                " since REAL NOT NULL, reason TEXT NOT NULL) STRICT"
            )

    def set_flag(self, username: str, reason: str, at: float) -> Flag:
        key = username.lower()
        with self._db.writing() as db:
            db.execute(
                "INSERT OR IGNORE INTO flags (username, since, reason) VALUES (?, ?, ?)",
                (key, at, reason),
            )
            row = db.execute(
                "SELECT since, reason FROM flags WHERE username = ?", (key,)
            ).fetchone()
        return Flag(key, float(row[0]), str(row[1]))

    def flag_of(self, username: str) -> Flag | None:
        with self._db.reading() as db:
            row = db.execute(
                "SELECT since, reason FROM flags WHERE username = ?", (username.lower(),)
            ).fetchone()
        return None if row is None else Flag(username.lower(), float(row[0]), str(row[1]))


def _user_exists(db: sqlite3.Connection, username: str) -> bool:
    row = db.execute("SELECT 1 FROM users WHERE username = ?", (username,)).fetchone()
    return row is not None


def _refuse_owned(db: sqlite3.Connection, address: str) -> None:
    row = db.execute("SELECT username FROM addresses WHERE address = ?", (address,)).fetchone()
    if row is not None:
        raise UserError(f"address {address} is already owned by user {row[0]}")


def _records(rows: Iterable[Any]) -> list[UserRecord]:
    """Fold joined (username, hash, generation, address) rows, sorted by username, into records."""
    records = []
    for (username, password_hash, generation), group in groupby(rows, key=lambda row: row[:3]):
        addresses = tuple(row[3] for row in group if row[3] is not None)
        records.append(
            UserRecord(
                username=username,
                password_hash=password_hash,
                addresses=addresses,
                generation=generation,
            )
        )
    return records

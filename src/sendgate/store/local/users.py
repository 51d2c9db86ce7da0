"""`UserStore` kept in one SQLite file (WAL mode) that every process on the host opens.

Security: the file holds password hashes, so a new file is created owner-only (see
`store.local.sqlite`); the mode of an existing file is left for `sendgate audit` to judge.
Usernames and addresses arrive validated by the caller and are only ever bound as SQL
parameters. Case is folded with str.lower(), as the address parser does, not str.casefold():
casefold maps "ß" to "ss", which would make the distinct IDNA domains straße.de and strasse.de
one key. The settings column is JSON written by this module; it is read strictly (unknown keys
or wrong types are a `StoreError`), so a damaged row never silently loosens a limit.
"""

import sqlite3
from pathlib import Path
from typing import Any

from sendgate.errors import UserError
from sendgate.store.local.changes import ChangeMark, KeptReads
from sendgate.store.local.sqlite import Database
from sendgate.store.local.user_rows import (
    KNOWN_NETWORKS_SCHEMA,
    dump_settings,
    fold_records,
    network_known,
    note_login,
    select_known_networks,
)
from sendgate.store.users import (
    AppPassword,
    Flag,
    KnownNetwork,
    LoginNote,
    UserRecord,
    UserSettings,
)

SCHEMA_VERSION = 2

# Version 2 added settings, app passwords, known networks and flags.
_ADDED_IN_2 = (
    """CREATE TABLE app_passwords (
        username TEXT NOT NULL REFERENCES users (username) ON DELETE CASCADE,
        label TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        lookup TEXT NOT NULL,
        created REAL NOT NULL,
        last_used REAL,
        PRIMARY KEY (username, label)
    ) STRICT""",
    *KNOWN_NETWORKS_SCHEMA,
    """CREATE TABLE flags (
        username TEXT PRIMARY KEY REFERENCES users (username) ON DELETE CASCADE,
        since REAL NOT NULL,
        reason TEXT NOT NULL
    ) STRICT""",
)

_SCHEMA = (
    """CREATE TABLE users (
        username TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        generation INTEGER NOT NULL,
        settings TEXT NOT NULL DEFAULT '{}'
    ) STRICT""",
    """CREATE TABLE addresses (
        address TEXT PRIMARY KEY,
        username TEXT NOT NULL REFERENCES users (username) ON DELETE CASCADE
    ) STRICT""",
    "CREATE INDEX addresses_by_username ON addresses (username)",
    *_ADDED_IN_2,
)

MIGRATIONS = {
    1: ("ALTER TABLE users ADD COLUMN settings TEXT NOT NULL DEFAULT '{}'", *_ADDED_IN_2),
}

# One statement reads a user with all its addresses, so a reader never sees half a change.
_SELECT_USERS = """SELECT users.username, users.password_hash, users.generation, users.settings,
    addresses.address
    FROM users LEFT JOIN addresses ON addresses.username = users.username"""
_SELECT_APP_PASSWORDS = """SELECT label, password_hash, lookup, created, last_used
    FROM app_passwords WHERE username = ? ORDER BY label"""
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
            migrations=MIGRATIONS,
            busy_timeout=busy_timeout,
        )
        # Every write renews the mark: a login read is kept until then (`store.local.changes`).
        self._db.mark = ChangeMark(path.with_name(path.name + "-mark"), owner_of=path)
        self._logins: KeptReads[str, tuple[UserRecord, tuple[AppPassword, ...]]]
        self._logins = KeptReads(self._db.mark)

    def get_user(self, username: str) -> UserRecord | None:
        """Return the user, or None when there is no such user."""
        with self._db.reading() as db:
            rows = db.execute(
                f"{_SELECT_USERS} WHERE users.username = ?{_ORDER}", (username.lower(),)
            )
            records = fold_records(rows, self._db.path)
        return records[0] if records else None

    def login_at_once(self, username: str) -> tuple[UserRecord, list[AppPassword]] | None:
        key = username.lower()
        seen = self._logins.seen()
        kept = self._logins.get(key, seen)
        if kept is not None:
            return kept[0], list(kept[1])

        def read(db: sqlite3.Connection) -> tuple[list[Any], list[Any]] | None:
            users = db.execute(f"{_SELECT_USERS} WHERE users.username = ?{_ORDER}", (key,))
            rows = users.fetchall()
            if not rows:
                return None
            return rows, db.execute(_SELECT_APP_PASSWORDS, (key,)).fetchall()

        found = self._db.read_at_once(read)
        if found is None:
            return None
        rows, app_rows = found
        user, apps = fold_records(rows, self._db.path)[0], [AppPassword(*row) for row in app_rows]
        self._logins.keep(key, seen, (user, tuple(apps)))
        return user, apps

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
        """Delete the user and (by cascade) all its rows elsewhere; refuse an unknown user."""
        key = username.lower()
        with self._db.writing() as db:
            cursor = db.execute("DELETE FROM users WHERE username = ?", (key,))
            if cursor.rowcount == 0:
                raise UserError(f"unknown user {key}")

    def list_users(self) -> list[UserRecord]:
        """Return every user, sorted by username."""
        with self._db.reading() as db:
            return fold_records(db.execute(f"{_SELECT_USERS}{_ORDER}"), self._db.path)

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

    def set_settings(self, username: str, settings: UserSettings) -> None:
        """Replace the user's settings; refuse an unknown user."""
        key = username.lower()
        with self._db.writing() as db:
            cursor = db.execute(
                "UPDATE users SET settings = ? WHERE username = ?", (dump_settings(settings), key)
            )
            if cursor.rowcount == 0:
                raise UserError(f"unknown user {key}")

    def add_app_password(
        self, username: str, label: str, password_hash: str, lookup: str, created: float
    ) -> None:
        """Give the user an app password; refuse an unknown user or a label it already uses."""
        key = username.lower()
        with self._db.writing() as db:
            if not _user_exists(db, key):
                raise UserError(f"unknown user {key}")
            taken = db.execute(
                "SELECT 1 FROM app_passwords WHERE username = ? AND label = ?", (key, label)
            ).fetchone()
            if taken is not None:
                raise UserError(f"user {key} already has an app password labelled {label}")
            db.execute(
                "INSERT INTO app_passwords (username, label, password_hash, lookup, created)"
                " VALUES (?, ?, ?, ?, ?)",
                (key, label, password_hash, lookup, created),
            )

    def app_passwords(self, username: str) -> list[AppPassword]:
        """The user's app passwords sorted by label; [] for an unknown user."""
        with self._db.reading() as db:
            rows = db.execute(_SELECT_APP_PASSWORDS, (username.lower(),)).fetchall()
        return [AppPassword(*row) for row in rows]

    def remove_app_password(self, username: str, label: str) -> None:
        """Delete one app password; refuse a label the user does not have."""
        key = username.lower()
        with self._db.writing() as db:
            cursor = db.execute(
                "DELETE FROM app_passwords WHERE username = ? AND label = ?", (key, label)
            )
            if cursor.rowcount == 0:
                raise UserError(f"user {key} has no app password labelled {label}")

    def touch_app_password(self, username: str, label: str, at: float) -> None:
        """Record a login with it at `at`; nothing happens if it is gone."""
        with self._db.writing() as db:
            db.execute(
                "UPDATE app_passwords SET last_used = ? WHERE username = ? AND label = ?",
                (at, username.lower(), label),
            )

    def note_login(
        self, username: str, network: str, at: float, *, memory: float, recent: float
    ) -> LoginNote:
        """Record a successful login of the user from `network` at `at`; say what was new."""
        key = username.lower()
        with self._db.writing() as db:
            if not _user_exists(db, key):
                return LoginNote(new=True, first=True, recent=1)
            return note_login(db, key, network, at, memory=memory, recent=recent)

    def is_known(self, username: str, network: str, at: float, *, memory: float) -> bool:
        """Whether the user logged in from `network` within `memory` seconds before `at`."""
        with self._db.reading() as db:
            row = db.execute(
                "SELECT 1 FROM known_networks WHERE username = ? AND network = ? AND last_seen > ?",
                (username.lower(), network, at - memory),
            ).fetchone()
        return row is not None

    def network_known(self, network: str, at: float, *, memory: float) -> bool:
        """Whether any user logged in from `network` within `memory` seconds before `at`."""
        with self._db.reading() as db:
            return network_known(db, network, at, memory=memory)

    def known_networks(self, username: str, at: float, *, memory: float) -> list[KnownNetwork]:
        """The user's networks known at `at`, most recently seen first (then by network)."""
        with self._db.reading() as db:
            return select_known_networks(db, username.lower(), at, memory=memory)

    def set_flag(self, username: str, reason: str, at: float) -> Flag:
        """Flag the user and return the flag; an existing flag is kept as it is and returned."""
        key = username.lower()
        with self._db.writing() as db:
            if not _user_exists(db, key):
                raise UserError(f"unknown user {key}")
            db.execute(
                "INSERT INTO flags (username, since, reason) VALUES (?, ?, ?)"
                " ON CONFLICT (username) DO NOTHING",
                (key, at, reason),
            )
            row = db.execute(
                "SELECT username, since, reason FROM flags WHERE username = ?", (key,)
            ).fetchone()
        return Flag(*row)

    def flag_of(self, username: str) -> Flag | None:
        """The user's flag, or None."""
        with self._db.reading() as db:
            row = db.execute(
                "SELECT username, since, reason FROM flags WHERE username = ?", (username.lower(),)
            ).fetchone()
        return None if row is None else Flag(*row)

    def clear_flag(self, username: str) -> bool:
        """Remove the user's flag; False if there was none."""
        with self._db.writing() as db:
            cursor = db.execute("DELETE FROM flags WHERE username = ?", (username.lower(),))
            return cursor.rowcount > 0

    def flags(self) -> list[Flag]:
        """Every flag, sorted by username."""
        with self._db.reading() as db:
            rows = db.execute("SELECT username, since, reason FROM flags ORDER BY username")
            return [Flag(*row) for row in rows]

    def close(self) -> None:
        """Close the connection; calling it again does nothing."""
        self._db.close()


def _user_exists(db: sqlite3.Connection, username: str) -> bool:
    row = db.execute("SELECT 1 FROM users WHERE username = ?", (username,)).fetchone()
    return row is not None


def _refuse_owned(db: sqlite3.Connection, address: str) -> None:
    row = db.execute("SELECT username FROM addresses WHERE address = ?", (address,)).fetchone()
    if row is not None:
        raise UserError(f"address {address} is already owned by user {row[0]}")

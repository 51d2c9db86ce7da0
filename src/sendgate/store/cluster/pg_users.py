"""`UserStore` on PostgreSQL: the users, app passwords, known networks and flags every node shares.

The same contract as the SQLite store (`store.local.users`), in the tables of
`store.cluster.postgres` (version 1). A change made on one node is what the next read on any
node sees (no cache here: the Authenticator's cache is keyed on the user's generation, which
every password change bumps).

Round trips: an operation of one statement runs alone (autocommit), one round trip; one of
several statements runs in a transaction. Concurrency: operations that read before they write
lock the user's row first (`FOR UPDATE`), so two nodes recording logins of one user, or adding
the same address to two users, are put in order instead of both seeing "not there yet"; a
unique-key violation that still slips through (two new users at once) is reported as the
refusal it is.

Security: usernames, addresses and networks are only ever bound as parameters; the settings
column is read as strictly as the SQLite store reads it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from psycopg import errors

from sendgate.errors import StoreError, UserError
from sendgate.store.cluster.postgres import Connection, Database, describe
from sendgate.store.local.user_rows import dump_settings, fold_records
from sendgate.store.users import (
    AppPassword,
    Flag,
    KnownNetwork,
    LoginNote,
    UserRecord,
    UserSettings,
)

_T = TypeVar("_T")
_STASH_AGE = 1.0  # seconds a get_user's app passwords serve the app_passwords after it
_SELECT_USERS = """SELECT users.username, users.password_hash, users.generation, users.settings,
    addresses.address
    FROM users LEFT JOIN addresses ON addresses.username = users.username"""
_ORDER = " ORDER BY users.username, addresses.address"
_SELECT_APP_PASSWORDS = """SELECT label, password_hash, lookup, created, last_used
    FROM app_passwords WHERE username = %s ORDER BY label"""


class PostgresUserStore:
    """`UserStore` on a PostgreSQL database several nodes share."""

    def __init__(self, url: str, *, max_connections: int = 8) -> None:
        """Connect (a pool of up to `max_connections`) and check the schema; StoreError if not."""
        self._db = Database(url, what="user store", max_size=max_connections)
        self._where = describe(url)  # names the database in settings errors
        self._stash = threading.local()  # app passwords read by this thread's last get_user

    def get_user(self, username: str) -> UserRecord | None:
        key = username.lower()

        def read(conn: Connection) -> tuple[list[UserRecord], list[AppPassword]]:
            # Both queries in one round trip (a pipeline): a login reads the app passwords
            # right after the user, and gets these (`app_passwords`).
            with conn.pipeline():
                users = conn.execute(f"{_SELECT_USERS} WHERE users.username = %s{_ORDER}", (key,))
                apps = conn.execute(_SELECT_APP_PASSWORDS, (key,))
            return fold_records(users.fetchall(), self._where), [
                AppPassword(*row) for row in apps.fetchall()
            ]

        records, apps = self._one(read)
        if not records:
            return None
        self._stash.read = (key, time.monotonic(), apps)
        return records[0]

    def login_at_once(self, username: str) -> tuple[UserRecord, list[AppPassword]] | None:
        return None  # a network store never answers without waiting

    def add_user(self, username: str, password_hash: str) -> None:
        key = username.lower()

        def write(conn: Connection) -> None:
            if _user_exists(conn, key):
                raise UserError(f"user {key} already exists")
            _refuse_owned(conn, key)
            conn.execute(
                "INSERT INTO users (username, password_hash, generation) VALUES (%s, %s, 1)",
                (key, password_hash),
            )
            conn.execute("INSERT INTO addresses (address, username) VALUES (%s, %s)", (key, key))

        self._unique(write, f"user {key} already exists, or its address is owned")

    def set_password_hash(self, username: str, password_hash: str) -> None:
        key = username.lower()

        def write(conn: Connection) -> None:
            cursor = conn.execute(
                "UPDATE users SET password_hash = %s, generation = generation + 1"
                " WHERE username = %s",
                (password_hash, key),
            )
            if cursor.rowcount == 0:
                raise UserError(f"unknown user {key}")

        self._one(write)

    def remove_user(self, username: str) -> None:
        key = username.lower()

        def write(conn: Connection) -> None:
            cursor = conn.execute("DELETE FROM users WHERE username = %s", (key,))
            if cursor.rowcount == 0:
                raise UserError(f"unknown user {key}")

        self._one(write)

    def list_users(self) -> list[UserRecord]:
        return self._one(
            lambda conn: fold_records(conn.execute(f"{_SELECT_USERS}{_ORDER}"), self._where)
        )

    def add_address(self, username: str, address: str) -> None:
        key, wanted = username.lower(), address.lower()

        def write(conn: Connection) -> None:
            if not _lock_user(conn, key):
                raise UserError(f"unknown user {key}")
            _refuse_owned(conn, wanted)
            conn.execute("INSERT INTO addresses (address, username) VALUES (%s, %s)", (wanted, key))

        self._unique(write, f"address {wanted} is already owned")

    def remove_address(self, username: str, address: str) -> None:
        key, unwanted = username.lower(), address.lower()

        def write(conn: Connection) -> None:
            cursor = conn.execute(
                "DELETE FROM addresses WHERE address = %s AND username = %s", (unwanted, key)
            )
            if cursor.rowcount == 0:
                raise UserError(f"user {key} does not own address {unwanted}")

        self._one(write)

    def set_settings(self, username: str, settings: UserSettings) -> None:
        key = username.lower()

        def write(conn: Connection) -> None:
            cursor = conn.execute(
                "UPDATE users SET settings = %s WHERE username = %s",
                (dump_settings(settings), key),
            )
            if cursor.rowcount == 0:
                raise UserError(f"unknown user {key}")

        self._one(write)

    # --- app passwords ------------------------------------------------------------------------

    def add_app_password(
        self, username: str, label: str, password_hash: str, lookup: str, created: float
    ) -> None:
        key = username.lower()
        taken = f"user {key} already has an app password labelled {label}"

        def write(conn: Connection) -> None:
            if not _lock_user(conn, key):
                raise UserError(f"unknown user {key}")
            row = conn.execute(
                "SELECT 1 FROM app_passwords WHERE username = %s AND label = %s", (key, label)
            ).fetchone()
            if row is not None:
                raise UserError(taken)
            conn.execute(
                "INSERT INTO app_passwords (username, label, password_hash, lookup, created)"
                " VALUES (%s, %s, %s, %s, %s)",
                (key, label, password_hash, lookup, created),
            )

        self._unique(write, taken)

    def app_passwords(self, username: str) -> list[AppPassword]:
        key = username.lower()
        # What this thread's `get_user` read with the user moments ago, taken once: the two
        # are one snapshot of the account, and the login spares a round trip.
        stash = self._stash.__dict__.pop("read", None)
        if stash is not None and stash[0] == key and time.monotonic() - stash[1] < _STASH_AGE:
            return list(stash[2])
        rows = self._one(lambda conn: conn.execute(_SELECT_APP_PASSWORDS, (key,)).fetchall())
        return [AppPassword(*row) for row in rows]

    def remove_app_password(self, username: str, label: str) -> None:
        key = username.lower()

        def write(conn: Connection) -> None:
            cursor = conn.execute(
                "DELETE FROM app_passwords WHERE username = %s AND label = %s", (key, label)
            )
            if cursor.rowcount == 0:
                raise UserError(f"user {key} has no app password labelled {label}")

        self._one(write)

    def touch_app_password(self, username: str, label: str, at: float) -> None:
        key = username.lower()
        self._one(
            lambda conn: conn.execute(
                "UPDATE app_passwords SET last_used = %s WHERE username = %s AND label = %s",
                (at, key, label),
            )
        )

    # --- known networks -----------------------------------------------------------------------

    def note_login(
        self, username: str, network: str, at: float, *, memory: float, recent: float
    ) -> LoginNote:
        key = username.lower()

        def write(conn: Connection) -> LoginNote:
            # The user's row lock puts two nodes' logins of one user in order: each sees the
            # networks the other recorded.
            if not _lock_user(conn, key):
                return LoginNote(new=True, first=True, recent=1)
            conn.execute(
                "DELETE FROM known_networks WHERE username = %s AND last_seen <= %s",
                (key, at - memory),
            )
            known = {
                row[0]
                for row in conn.execute(
                    "SELECT network FROM known_networks WHERE username = %s", (key,)
                )
            }
            conn.execute(
                """INSERT INTO known_networks (username, network, first_seen, last_seen)
                VALUES (%s, %s, %s, %s)
                ON CONFLICT (username, network) DO UPDATE SET
                    first_seen = LEAST(known_networks.first_seen, excluded.first_seen),
                    last_seen = GREATEST(known_networks.last_seen, excluded.last_seen)""",
                (key, network, at, at),
            )
            row = conn.execute(
                "SELECT count(*) FROM known_networks WHERE username = %s AND last_seen > %s",
                (key, at - recent),
            ).fetchone()
            assert row is not None
            return LoginNote(new=network not in known, first=not known, recent=int(row[0]))

        return self._db.run(write)

    def is_known(self, username: str, network: str, at: float, *, memory: float) -> bool:
        key = username.lower()
        row = self._one(
            lambda conn: conn.execute(
                "SELECT 1 FROM known_networks"
                " WHERE username = %s AND network = %s AND last_seen > %s",
                (key, network, at - memory),
            ).fetchone()
        )
        return row is not None

    def network_known(self, network: str, at: float, *, memory: float) -> bool:
        row = self._one(
            lambda conn: conn.execute(
                "SELECT 1 FROM known_networks WHERE network = %s AND last_seen > %s LIMIT 1",
                (network, at - memory),
            ).fetchone()
        )
        return row is not None

    def known_networks(self, username: str, at: float, *, memory: float) -> list[KnownNetwork]:
        key = username.lower()
        rows = self._one(
            lambda conn: conn.execute(
                """SELECT network, first_seen, last_seen FROM known_networks
                WHERE username = %s AND last_seen > %s ORDER BY last_seen DESC, network""",
                (key, at - memory),
            ).fetchall()
        )
        return [KnownNetwork(*row) for row in rows]

    # --- flags --------------------------------------------------------------------------------

    def set_flag(self, username: str, reason: str, at: float) -> Flag:
        key = username.lower()

        def write(conn: Connection) -> Flag:
            if not _lock_user(conn, key):
                raise UserError(f"unknown user {key}")
            conn.execute(
                "INSERT INTO flags (username, since, reason) VALUES (%s, %s, %s)"
                " ON CONFLICT (username) DO NOTHING",
                (key, at, reason),
            )
            row = conn.execute(
                "SELECT username, since, reason FROM flags WHERE username = %s", (key,)
            ).fetchone()
            assert row is not None
            return Flag(*row)

        return self._db.run(write)

    def flag_of(self, username: str) -> Flag | None:
        key = username.lower()
        row = self._one(
            lambda conn: conn.execute(
                "SELECT username, since, reason FROM flags WHERE username = %s", (key,)
            ).fetchone()
        )
        return None if row is None else Flag(*row)

    def clear_flag(self, username: str) -> bool:
        key = username.lower()
        cursor = self._one(
            lambda conn: conn.execute("DELETE FROM flags WHERE username = %s", (key,))
        )
        return cursor.rowcount > 0

    def flags(self) -> list[Flag]:
        rows = self._one(
            lambda conn: conn.execute(
                "SELECT username, since, reason FROM flags ORDER BY username"
            ).fetchall()
        )
        return [Flag(*row) for row in rows]

    def close(self) -> None:
        self._db.close()

    def _one(self, work: Callable[[Connection], _T]) -> _T:
        """One statement (or reads that need not agree with each other): no transaction."""
        return self._db.run(work, atomic=False)

    # --- helpers ------------------------------------------------------------------------------

    def _unique(self, write: Callable[[Connection], None], refusal: str) -> None:
        """Run `write`; a unique-key violation (another node was quicker) is `refusal`."""
        try:
            self._db.run(write)
        except StoreError as exc:
            if isinstance(exc.__cause__, errors.UniqueViolation):
                raise UserError(refusal) from None
            raise


def _user_exists(conn: Connection, username: str) -> bool:
    row = conn.execute("SELECT 1 FROM users WHERE username = %s", (username,)).fetchone()
    return row is not None


def _lock_user(conn: Connection, username: str) -> bool:
    """Lock the user's row for this transaction; False if there is no such user."""
    row = conn.execute("SELECT 1 FROM users WHERE username = %s FOR UPDATE", (username,)).fetchone()
    return row is not None


def _refuse_owned(conn: Connection, address: str) -> None:
    row = conn.execute("SELECT username FROM addresses WHERE address = %s", (address,)).fetchone()
    if row is not None:
        raise UserError(f"address {address} is already owned by user {row[0]}")

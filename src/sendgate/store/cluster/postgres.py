"""What the PostgreSQL stores share: a connection pool per process, errors, the schema version.

The store Protocols block and are called from thread pools, so the stores use psycopg's
blocking API with one `psycopg_pool.ConnectionPool` per process (made after the fork: a pool's
connections and threads must not cross it). Each operation is one transaction on a pooled
connection (a single statement in autocommit: one round trip); a connection that sat idle is
checked as it leaves the pool, so that after a restart of PostgreSQL the first operation does
not fail on a connection that died with it.

Errors: every psycopg or pool failure becomes a `StoreError` naming the database by host, port
and name only; the URL's password never reaches a message or a log line.

Schema: the database holds one version number (`sendgate_schema`). `migrate` applies the
versions this sendgate knows under an advisory lock (two nodes migrating at once apply each step
once); `check` refuses a database at any other version, so a node never runs on tables it does
not know.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import psycopg
import psycopg_pool

from sendgate.errors import StoreError

_T = TypeVar("_T")
SCHEMES = ("postgresql", "postgres")
# Any constant: the key of the advisory lock that serialises migrations across nodes.
_MIGRATION_LOCK = 0x5E9D6A7E
CONNECT_TIMEOUT = 5.0  # seconds to open one connection
POOL_TIMEOUT = 5.0  # seconds an operation waits for a connection before it fails
IDLE_CHECK = 1.0  # seconds of idleness after which a pooled connection is checked before use

Connection = psycopg.Connection[tuple[Any, ...]]

# Version n is made by the statements of MIGRATIONS[n - 1], applied in order to version n - 1.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE users (
            username text PRIMARY KEY,
            password_hash text NOT NULL,
            generation bigint NOT NULL,
            settings text NOT NULL DEFAULT '{}'
        )""",
        """CREATE TABLE addresses (
            address text PRIMARY KEY,
            username text NOT NULL REFERENCES users (username) ON DELETE CASCADE
        )""",
        "CREATE INDEX addresses_by_username ON addresses (username)",
        """CREATE TABLE app_passwords (
            username text NOT NULL REFERENCES users (username) ON DELETE CASCADE,
            label text NOT NULL,
            password_hash text NOT NULL,
            lookup text NOT NULL,
            created double precision NOT NULL,
            last_used double precision,
            PRIMARY KEY (username, label)
        )""",
        """CREATE TABLE known_networks (
            username text NOT NULL REFERENCES users (username) ON DELETE CASCADE,
            network text NOT NULL,
            first_seen double precision NOT NULL,
            last_seen double precision NOT NULL,
            PRIMARY KEY (username, network)
        )""",
        "CREATE INDEX known_networks_by_network ON known_networks (network, last_seen)",
        """CREATE TABLE flags (
            username text PRIMARY KEY REFERENCES users (username) ON DELETE CASCADE,
            since double precision NOT NULL,
            reason text NOT NULL
        )""",
    ),
    (
        # The queue (store.queue): one row per message; see store.cluster.pg_queue.
        """CREATE TABLE queue (
            queue_id text PRIMARY KEY,
            envelope bytea NOT NULL,
            message bytea NOT NULL,
            size bigint NOT NULL,
            state bytea,
            due double precision NOT NULL,
            hold text,
            token bigint NOT NULL DEFAULT 0,
            lease_until double precision,
            node text
        )""",
        # Stored as they are: compressing every message costs CPU for mail that leaves soon.
        "ALTER TABLE queue ALTER COLUMN message SET STORAGE EXTERNAL",
        "CREATE INDEX queue_due ON queue (due, queue_id) WHERE hold IS NULL",
        "CREATE INDEX queue_leases ON queue (lease_until) WHERE lease_until IS NOT NULL",
        # Each node's runner notes itself at every claim: `sendgate cluster status`.
        """CREATE TABLE nodes (
            name text PRIMARY KEY,
            seen double precision NOT NULL,
            version text NOT NULL
        )""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


def describe(url: str) -> str:
    """The database a URL names, for messages: scheme, host, port and name, no credentials."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "localhost"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "postgresql://(unreadable URL)"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}{parts.path}"


def failure(what: str, url: str, exc: BaseException) -> StoreError:
    """A StoreError for a failed operation, with the first line of PostgreSQL's reason."""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return StoreError(f"{what} at {describe(url)}: {reason}")


class Database:
    """A connection pool on one PostgreSQL database, for one store of one process."""

    def __init__(self, url: str, *, what: str, max_size: int = 8) -> None:
        """Open the pool and check the schema version; StoreError if either fails."""
        self.url = url
        self.what = what
        self._used: dict[int, float] = {}  # id of a pooled connection -> when last used
        try:
            self._pool = psycopg_pool.ConnectionPool(
                url,
                min_size=1,
                max_size=max_size,
                timeout=POOL_TIMEOUT,
                # Autocommit: a one-statement operation is one round trip, not BEGIN, the
                # statement and COMMIT; operations of several statements ask for a transaction.
                kwargs={"connect_timeout": int(CONNECT_TIMEOUT), "autocommit": True},
                check=self._check,
                name=what,
                open=False,
            )
            self._pool.open(wait=True, timeout=POOL_TIMEOUT)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            self._close_quietly()
            raise failure(f"{what}: cannot connect", url, exc) from exc
        except psycopg_pool.PoolClosed as exc:  # pragma: no cover - closed before use
            raise failure(what, url, exc) from exc
        try:
            self.run(check_version, atomic=False)
        except StoreError:
            self._close_quietly()
            raise

    def run(self, work: Callable[[Connection], _T], *, atomic: bool = True) -> _T:
        """`work(conn)` in one transaction, committed when it returns; StoreError on failure.

        `atomic` False: each statement commits on its own (for one statement, or several that
        need not stand or fall together). Errors `work` raises on purpose (UserError and the
        like) pass through unchanged.
        """
        try:
            with self._pool.connection() as conn:
                try:
                    if not atomic:
                        return work(conn)
                    with conn.transaction():
                        return work(conn)
                finally:
                    self._used[id(conn)] = time.monotonic()
        except (psycopg.Error, psycopg_pool.PoolTimeout, psycopg_pool.PoolClosed) as exc:
            raise failure(self.what, self.url, exc) from exc

    def _check(self, conn: Connection) -> None:
        """Before a pooled connection is used: one that sat idle is asked whether it is alive
        (a restarted server closed it), so the operation does not fail on it; one in use
        moments ago is not, saving a round trip per operation under load."""
        last = self._used.get(id(conn))
        if last is None or time.monotonic() - last >= IDLE_CHECK:
            psycopg_pool.ConnectionPool.check_connection(conn)

    def close(self) -> None:
        self._close_quietly()

    def _close_quietly(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.close(timeout=1.0)


def schema_version(conn: Connection) -> int:
    """The database's schema version; 0 for a database sendgate never migrated."""
    row = conn.execute("SELECT to_regclass('sendgate_schema') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return 0
    found = conn.execute("SELECT version FROM sendgate_schema").fetchone()
    return 0 if found is None else int(found[0])


def check_version(conn: Connection) -> None:
    """Refuse a database whose schema is not the one this sendgate knows."""
    found = schema_version(conn)
    if found == SCHEMA_VERSION:
        return
    if found > SCHEMA_VERSION:
        raise StoreError(
            f"the database has schema version {found}, made by a newer sendgate; this one knows"
            f" version {SCHEMA_VERSION}: upgrade this node"
        )
    raise StoreError(
        f"the database has schema version {found}, this sendgate needs version"
        f" {SCHEMA_VERSION}: run `sendgate db migrate`"
    )


def migrate(url: str, migrations: Sequence[Sequence[str]] = MIGRATIONS) -> tuple[int, int]:
    """Bring the database at `url` to the newest version: (version before, version after).

    One transaction under an advisory lock: a failed step leaves the database as it was, and a
    second node migrating at the same time waits, then finds the work done.
    """
    newest = len(migrations)

    def work(conn: Connection) -> tuple[int, int]:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute(
            """CREATE TABLE IF NOT EXISTS sendgate_schema (
                one boolean PRIMARY KEY DEFAULT true CHECK (one),
                version integer NOT NULL
            )"""
        )
        found = schema_version(conn)
        if found > newest:
            raise StoreError(
                f"the database has schema version {found}, made by a newer sendgate; this one"
                f" knows version {newest}"
            )
        for statements in migrations[found:]:
            for statement in statements:
                conn.execute(statement.encode())
        conn.execute(
            "INSERT INTO sendgate_schema (version) VALUES (%s)"
            " ON CONFLICT (one) DO UPDATE SET version = excluded.version",
            (newest,),
        )
        return found, newest

    try:
        with (
            psycopg.connect(url, connect_timeout=int(CONNECT_TIMEOUT)) as conn,
            conn.transaction(),
        ):
            return work(conn)
    except psycopg.Error as exc:
        raise failure("schema migration", url, exc) from exc

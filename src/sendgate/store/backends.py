"""The one place that chooses storage backends and their paths for a configuration.

`Backends(config)` is made once by whoever runs sendgate: `serve` calls `prepare()` in the
supervisor before forking (schemas, directories, crash recovery of the queue, the local queue's
announce pipes, one per delivery runner), then each process calls `open(role)`: the acceptors,
each delivery runner and the command line get the handles their role needs. `open_stores(config)`
is the short form for the command line and tests. Only this module imports a backend;
everything else sees the contracts (UserStore, QueueStore, LimitStore).

By default every store is local (one node): `data_dir/users.db`, `data_dir/limits.db`
(SQLite, WAL), `data_dir/spool/` (the file spool), `data_dir/mta-sts/` (cached MTA-STS
policies) and `data_dir/login.key` (the installation's secret). `store.limits` may instead
name a Redis that several nodes share (`store.cluster.redis_limits`), and `store.users` a
PostgreSQL database (`store.cluster.pg_users`) and `store.queue` one too
(`store.cluster.pg_queue`); their tables are made by `migrate_database`.
To add a backend: implement the contract, pass its contract tests (tests/contracts/), and
choose it here from the configuration.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from sendgate.config.schema import Config
from sendgate.errors import StoreError
from sendgate.store.limits import LimitStore
from sendgate.store.local.announce import AnnouncePipe
from sendgate.store.local.limits import LocalLimitStore
from sendgate.store.local.queue import LocalQueueStore
from sendgate.store.local.users import LocalUserStore
from sendgate.store.queue import QueueStore, Recovery
from sendgate.store.users import UserStore

if TYPE_CHECKING:
    from sendgate.store.cluster.pg_queue import PostgresQueueStore, QueueStatus
    from sendgate.store.cluster.redis_limits import RedisLimitStore

Role = Literal["acceptor", "runner", "admin"]
SECRET_BYTES = 32


def users_path(config: Config) -> Path:
    return config.data_dir / "users.db"


def limits_path(config: Config) -> Path:
    return config.data_dir / "limits.db"


def spool_path(config: Config) -> Path:
    return config.data_dir / "spool"


def local_mail_path(config: Config) -> Path:
    """Where accepted mail meets this host's disk: the spool, or (with a shared queue) the
    directory where large bodies wait for their commit. /healthz checks it takes writes."""
    return spool_path(config) if config.store.queue == "local" else config.data_dir


def secret_path(config: Config) -> Path:
    """This installation's secret key (fingerprints of failed passwords in the limit store)."""
    return config.data_dir / "login.key"


def installation_secret(config: Config) -> bytes:
    """Read the installation's secret key, creating it (owner-only) on first use.

    With the limits on Redis the key is the cluster's, kept there: every node needs the same.
    """
    if config.store.limits != "local":
        store = _redis_limits(config.store.limits)
        try:
            return store.shared_secret()
        finally:
            store.close()
    path = secret_path(config)
    if not path.exists():
        # Written aside and linked into place: a concurrent reader never sees a partial key.
        aside = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        try:
            fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, secrets.token_bytes(SECRET_BYTES))
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(aside, path)
            except FileExistsError:
                pass  # another process made it first: use theirs
            finally:
                os.unlink(aside)
        except OSError as exc:
            raise StoreError(f"cannot create {path}: {exc.strerror or exc}") from exc
    try:
        key = path.read_bytes()
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(key) != SECRET_BYTES:
        raise StoreError(f"{path} is damaged: {len(key)} bytes, expected {SECRET_BYTES}")
    return key


def mta_sts_path(config: Config) -> Path:
    """The delivery runner's cache of MTA-STS policies (one JSON file per domain)."""
    return config.data_dir / "mta-sts"


def _redis_limits(url: str) -> RedisLimitStore:
    # Imported here: a single node never needs redis-py.
    try:
        from sendgate.store.cluster.redis_limits import RedisLimitStore
    except ImportError:
        raise StoreError(
            "store.limits names Redis, but redis-py is not installed:"
            " pip install 'sendgate[cluster]'"
        ) from None
    return RedisLimitStore(url)


def _postgres_users(url: str) -> UserStore:
    # Imported here: a single node never needs psycopg.
    try:
        from sendgate.store.cluster.pg_users import PostgresUserStore
    except ImportError:
        raise StoreError(_NO_PSYCOPG) from None
    return PostgresUserStore(url)


_NO_PSYCOPG = (
    "store.users names PostgreSQL, but psycopg is not installed: pip install 'sendgate[cluster]'"
)


def database_urls(config: Config) -> list[str]:
    """The distinct PostgreSQL databases the configuration names (users, queue)."""
    urls = []
    for url in (config.store.users, config.store.queue):
        if url != "local" and url not in urls:
            urls.append(url)
    return urls


def migrate_database(config: Config) -> tuple[int, int]:
    """`sendgate db migrate`: bring the shared databases to this sendgate's schema version.

    Returns (the oldest version found, the version now); StoreError when no store is on
    PostgreSQL.
    """
    urls = database_urls(config)
    if not urls:
        raise StoreError(
            'no store is on PostgreSQL (store.users and store.queue are "local"): nothing to'
            " migrate"
        )
    try:
        from sendgate.store.cluster.postgres import migrate
    except ImportError:
        raise StoreError(_NO_PSYCOPG) from None
    results = [migrate(url) for url in urls]
    return min(before for before, _ in results), max(after for _, after in results)


def _postgres_queue(config: Config, clock: Callable[[], float] | None) -> PostgresQueueStore:
    try:
        from sendgate.store.cluster.pg_queue import PostgresQueueStore
    except ImportError:
        raise StoreError(_NO_PSYCOPG) from None
    return PostgresQueueStore(
        config.store.queue,
        node=config.store.node_name or None,
        clock=clock,
        scan_interval=config.delivery.scan_interval,
        body_dir=str(local_mail_path(config)),
    )


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    """What `sendgate cluster status` reports: where each store is, and what is in it."""

    users: str
    """"local", or the PostgreSQL database (no credentials)."""
    limits: str
    """"local", or "Redis <version>"."""
    queue: QueueStatus | None
    """The shared queue's counts and nodes; None for the local spool."""
    queue_at: str
    """"local", or the PostgreSQL database (no credentials)."""


def cluster_status(config: Config) -> ClusterStatus:
    """Look at the shared stores (each reached once); StoreError or SpoolError if one fails."""
    users = config.store.users
    if users != "local":
        _postgres_users(users).close()  # reachable, and at this sendgate's schema version
    limits = "local"
    if config.store.limits != "local":
        store = _redis_limits(config.store.limits)
        try:
            limits = f"Redis {store.server_version()}"
        finally:
            store.close()
    status = None
    if config.store.queue != "local":
        queue = _postgres_queue(config, None)
        try:
            status = queue.status()
        finally:
            queue.close()
    return ClusterStatus(
        users=_where(users), limits=limits, queue=status, queue_at=_where(config.store.queue)
    )


def _where(url: str) -> str:
    if url == "local":
        return url
    from sendgate.store.cluster.postgres import describe

    return describe(url)


class Stores:
    """The stores of one process; each is opened on first use and closed by `close`."""

    def __init__(self, backends: Backends, role: Role, runner: int = 0) -> None:
        self._backends = backends
        self._role = role
        self._runner = runner
        self._users: UserStore | None = None
        self._queue: QueueStore | None = None
        self._limits: LimitStore | None = None

    @property
    def users(self) -> UserStore:
        if self._users is None:
            self._users = self._backends.open_users()
        return self._users

    @property
    def queue(self) -> QueueStore:
        if self._queue is None:
            self._queue = self._backends.open_queue(self._role, self._runner)
        return self._queue

    @property
    def limits(self) -> LimitStore:
        if self._limits is None:
            self._limits = self._backends.open_limits()
        return self._limits

    def close(self) -> None:
        for store in (self._users, self._queue, self._limits):
            if store is not None:
                store.close()
        self._users = self._queue = self._limits = None


class Backends:
    """The backends `config` chooses (see the module docstring)."""

    def __init__(self, config: Config, *, clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._clock = clock
        # A shared queue keeps the database's time unless a test gives a clock of its own.
        self._injected_clock = None if clock is time.time else clock
        self._pipe: AnnouncePipe | None = None
        self._runners = 1

    def prepare(self, runners: int = 1) -> Recovery:
        """Before serving, in the parent: create what is missing and recover the queue.

        Creating the schemas here, once, keeps the forked workers from racing to do it.
        `runners`: how many delivery runners will share the queue (`delivery.runners`).
        """
        installation_secret(self._config)
        # Opening checks the schema: a node does not start on tables it does not know.
        self.open_users().close()
        if self._config.store.limits == "local":
            LocalLimitStore(limits_path(self._config), clock=self._clock).close()
        if self._config.store.queue != "local":
            shared = self.open_queue("admin")  # checks the schema; nothing to recover
            try:
                return shared.recover()
            finally:
                shared.close()
        queue = LocalQueueStore(spool_path(self._config), clock=self._clock)
        try:
            recovery = queue.recover()
        finally:
            queue.close()
        self._pipe = AnnouncePipe(runners)
        self._runners = runners
        return recovery

    def open(self, role: Role, runner: int = 0) -> Stores:
        """The stores for a process of `role` (after the fork, for the serving roles); `runner`:
        which delivery runner (0 to runners-1) a "runner" process is.

        The first queue of an acceptor or a runner takes this process's ends of the announce
        pipes; a queue opened after it (or for the command line) neither announces nor listens.
        """
        return Stores(self, role, runner)

    def close(self) -> None:
        """Release what `prepare` made (the supervisor, once it stops)."""
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None

    def open_users(self) -> UserStore:
        url = self._config.store.users
        if url != "local":
            return _postgres_users(url)
        return LocalUserStore(users_path(self._config))

    def open_limits(self) -> LimitStore:
        url = self._config.store.limits
        if url != "local":
            return _redis_limits(url)
        return LocalLimitStore(limits_path(self._config), clock=self._clock)

    def open_queue(self, role: Role, runner: int = 0) -> QueueStore:
        if self._config.store.queue != "local":
            # Arrivals come by NOTIFY, from every node: no announce pipe. Claims are the
            # database's, so any number of runners on any nodes share the queue as it is.
            return _postgres_queue(self._config, self._injected_clock)
        pipe = self._pipe
        if pipe is not None and role != "admin":
            # Taking one end closes the other in this process: the handle owns the pipe from
            # now on, so neither `close` nor a second open may close its descriptors again.
            self._pipe = None
        else:
            pipe = None
        return LocalQueueStore(
            spool_path(self._config),
            clock=self._clock,
            scan_interval=self._config.delivery.scan_interval,
            announce_to=pipe.writer() if pipe is not None and role == "acceptor" else None,
            announced=pipe.reader(runner) if pipe is not None and role == "runner" else None,
            # Runner k of n claims share k; only a serving runner (after `prepare`) has one.
            share=(runner, self._runners) if role == "runner" else (0, 1),
        )


def open_stores(config: Config, *, clock: Callable[[], float] = time.time) -> Stores:
    """The stores for the command line and tests (no announce pipe, nothing prepared)."""
    return Backends(config, clock=clock).open("admin")

"""The storage backends the contract tests run against, behind one small interface.

A contract test receives a `StoreBackend` and asks it for store handles. Each call opens a new
handle on the same storage, as another process (or another node) would, so that a test can
check what one handle's writes look like through another. `advance` moves the stores' clock:
the local backend injects a clock, and so does the Redis one (its scripts take the time as an
argument when a clock is given); PostgreSQL's stores take every time from their callers. A
backend offers some of the stores (`STORES`), on the server its `SERVER` fixture starts; each
contract module runs against the backends that offer its store (its `STORE`, see conftest.py).
To run the contracts against a new backend, add a class here and name it in BACKENDS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, TypeVar

from tests.peers.postgres_server import PostgresServer
from tests.peers.redis_server import RedisServer
from tests.support.clock import FakeClock

from sendgate.store.cluster.pg_queue import PostgresQueueStore
from sendgate.store.cluster.pg_users import PostgresUserStore
from sendgate.store.cluster.postgres import migrate
from sendgate.store.cluster.redis_limits import RedisLimitStore
from sendgate.store.limits import LimitStore
from sendgate.store.local.limits import LocalLimitStore
from sendgate.store.local.queue import LocalQueueStore
from sendgate.store.local.users import LocalUserStore
from sendgate.store.queue import QueueStore
from sendgate.store.users import UserStore

_S = TypeVar("_S", UserStore, QueueStore, LimitStore)


class StoreBackend(Protocol):
    def users(self) -> UserStore: ...
    def queue(self) -> QueueStore: ...
    def limits(self) -> LimitStore: ...
    def advance(self, seconds: float) -> None: ...
    def close(self) -> None: ...


class _Handles:
    """What every backend here shares: the injected clock, and the handles it opened (closed
    together at the end of the test)."""

    STORES: frozenset[str] = frozenset()

    def __init__(self) -> None:
        self._clock = FakeClock()
        self._opened: list[UserStore | QueueStore | LimitStore] = []

    def _opening(self, store: _S) -> _S:
        self._opened.append(store)
        return store

    def users(self) -> UserStore:
        raise NotImplementedError(f"{type(self).__name__} keeps no users")

    def queue(self) -> QueueStore:
        raise NotImplementedError(f"{type(self).__name__} keeps no queue")

    def limits(self) -> LimitStore:
        raise NotImplementedError(f"{type(self).__name__} keeps no limits")

    def advance(self, seconds: float) -> None:
        self._clock.advance(seconds)

    def close(self) -> None:
        for store in self._opened:
            store.close()


class LocalBackend(_Handles):
    """The embedded backends in a temporary directory, on an injected clock."""

    STORES = frozenset({"users", "queue", "limits"})

    def __init__(self, root: Path, server: object = None) -> None:
        super().__init__()
        self._root = root

    def users(self) -> UserStore:
        return self._opening(LocalUserStore(self._root / "users.db"))

    def queue(self) -> QueueStore:
        # scan_interval 0: a handle looks at the spool at every claim, as if the interval passed.
        return self._opening(
            LocalQueueStore(self._root / "spool", clock=self._clock, scan_interval=0.0)
        )

    def limits(self) -> LimitStore:
        return self._opening(LocalLimitStore(self._root / "limits.db", clock=self._clock))


class RedisBackend(_Handles):
    """The Redis limit store on a throwaway redis-server (emptied for each test), on an
    injected clock."""

    STORES = frozenset({"limits"})

    SERVER = "redis_server"

    def __init__(self, root: Path, server: object = None) -> None:
        super().__init__()
        assert isinstance(server, RedisServer)
        server.flush()
        self._url = server.url

    def limits(self) -> LimitStore:
        return self._opening(RedisLimitStore(self._url, clock=self._clock))


class PostgresBackend(_Handles):
    """The PostgreSQL user and queue stores on a throwaway server, its database emptied and
    migrated for each test; the queue on the injected clock (the users' times are the
    callers' own `at`)."""

    STORES = frozenset({"users", "queue"})
    SERVER = "postgres_server"

    def __init__(self, root: Path, server: object = None) -> None:
        super().__init__()
        assert isinstance(server, PostgresServer)
        server.reset()
        self._url = server.url
        migrate(self._url)

    def users(self) -> UserStore:
        return self._opening(PostgresUserStore(self._url))

    def queue(self) -> QueueStore:
        return self._opening(
            PostgresQueueStore(self._url, clock=self._clock, scan_interval=0.0, node="contract")
        )


Backend = type[LocalBackend] | type[RedisBackend] | type[PostgresBackend]
BACKENDS: dict[str, Backend] = {
    "local": LocalBackend,
    "redis": RedisBackend,
    "postgresql": PostgresBackend,
}

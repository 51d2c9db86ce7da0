"""Every contract test runs once per backend that offers its store (backends.BACKENDS).

A contract module names its store in `STORE` ("users", "queue" or "limits"); the backends whose
`STORES` include it are its parameters. Backends on services (Redis, PostgreSQL) share one throwaway
server for the session, emptied before each test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.contracts.backends import BACKENDS, StoreBackend
from tests.peers.postgres_server import PostgresServer
from tests.peers.redis_server import RedisServer


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        store = metafunc.module.STORE
        names = sorted(name for name, kind in BACKENDS.items() if store in kind.STORES)
        metafunc.parametrize("backend", names, indirect=True)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    with PostgresServer(tmp_path_factory.mktemp("postgres")) as server:
        yield server


@pytest.fixture
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreBackend]:
    kind = BACKENDS[request.param]
    fixture = getattr(kind, "SERVER", None)
    server = request.getfixturevalue(fixture) if fixture is not None else None
    made: StoreBackend = kind(tmp_path, server)
    try:
        yield made
    finally:
        made.close()

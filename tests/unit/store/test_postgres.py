"""What the PostgreSQL stores add to the contract (tests/contracts): the versioned schema and its
migration, refusal of unknown schemas, messages without the URL's password, an outage and the
recovery after it, and two nodes racing for one name. A throwaway PostgreSQL server."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from tests.peers.postgres_server import PostgresServer

from sendgate.errors import StoreError, UserError
from sendgate.store.cluster.pg_users import PostgresUserStore
from sendgate.store.cluster.postgres import SCHEMA_VERSION, describe, migrate, schema_version

HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    with PostgresServer(tmp_path_factory.mktemp("postgres")) as made:
        yield made


@pytest.fixture
def url(server: PostgresServer) -> str:
    server.reset()
    return server.url


def version_of(server: PostgresServer) -> int:
    with server.connect() as conn:
        return schema_version(conn)


def test_migrate_creates_the_tables_once(url: str, server: PostgresServer) -> None:
    assert version_of(server) == 0
    assert migrate(url) == (0, SCHEMA_VERSION)
    assert migrate(url) == (SCHEMA_VERSION, SCHEMA_VERSION)
    assert version_of(server) == SCHEMA_VERSION
    store = PostgresUserStore(url)
    try:
        store.add_user("alice@example.org", HASH)
        assert [user.username for user in store.list_users()] == ["alice@example.org"]
    finally:
        store.close()


def test_nodes_migrating_at_once_apply_each_step_once(url: str, server: PostgresServer) -> None:
    results: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(migrate(url))
        except BaseException as exc:  # collected: a thread's failure must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    # The advisory lock puts them in order: one migrates, the others find the work done.
    assert sorted(results) == [(0, SCHEMA_VERSION)] + [(SCHEMA_VERSION, SCHEMA_VERSION)] * 3


def test_a_store_refuses_a_database_that_was_never_migrated(url: str) -> None:
    with pytest.raises(StoreError, match=r"schema version 0, .* run `sendgate db migrate`"):
        PostgresUserStore(url)


def test_a_store_refuses_a_newer_schema(url: str, server: PostgresServer) -> None:
    migrate(url)
    with server.connect() as conn:
        conn.execute("UPDATE sendgate_schema SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match=r"made by a newer sendgate.*upgrade this node"):
        PostgresUserStore(url)
    with pytest.raises(StoreError, match="made by a newer sendgate"):
        migrate(url)


def test_a_failed_migration_leaves_the_database_as_it_was(url: str, server: PostgresServer) -> None:
    broken = (("CREATE TABLE one (x integer)",), ("CREATE TABLE two (x nonsense_type)",))
    with pytest.raises(StoreError, match=r"schema migration at .*nonsense_type"):
        migrate(url, broken)
    assert version_of(server) == 0
    with server.connect() as conn:
        assert conn.execute("SELECT to_regclass('one')").fetchone() == (None,)


def test_messages_name_the_database_without_its_password(server: PostgresServer) -> None:
    secret = "s3cret-pass"
    closed = f"postgresql://user:{secret}@127.0.0.1:1/sendgate?sslmode=disable"
    with pytest.raises(StoreError) as raised:
        PostgresUserStore(closed)
    message = str(raised.value)
    assert secret not in message
    assert message.startswith("user store: cannot connect at postgresql://127.0.0.1:1/sendgate: ")
    with pytest.raises(StoreError) as raised:
        migrate(closed)
    assert secret not in str(raised.value)
    assert describe(f"postgres://u:{secret}@[::1]:5433/db") == "postgres://[::1]:5433/db"


def test_an_outage_is_a_store_error_and_the_store_recovers_by_itself(
    url: str, server: PostgresServer
) -> None:
    migrate(url)
    store = PostgresUserStore(url)
    try:
        store.add_user("alice@example.org", HASH)
        server.stop()
        try:
            with pytest.raises(StoreError, match=r"user store at postgresql://127\.0\.0\.1"):
                store.get_user("alice@example.org")
        finally:
            server.start()
        # The pooled connection died with the server: it is checked and replaced, so the first
        # operation after the restart already succeeds.
        found = store.get_user("alice@example.org")
        assert found is not None
        assert found.username == "alice@example.org"
    finally:
        store.close()


def test_two_nodes_adding_one_user_at_once_give_one_refusal(url: str) -> None:
    migrate(url)
    stores = [PostgresUserStore(url) for _ in range(2)]
    outcomes: list[str] = []
    start = threading.Barrier(2)

    def add(store: PostgresUserStore) -> None:
        start.wait(10)
        try:
            store.add_user("carol@example.org", HASH)
            outcomes.append("added")
        except UserError as exc:
            outcomes.append(str(exc))

    try:
        threads = [threading.Thread(target=add, args=(store,)) for store in stores]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(outcomes)[0] == "added"
        assert len(outcomes) == 2
        assert "already" in sorted(outcomes)[1]
        assert [user.username for user in stores[1].list_users()] == ["carol@example.org"]
    finally:
        for store in stores:
            store.close()


def test_a_damaged_settings_row_names_the_database_and_the_user(
    url: str, server: PostgresServer
) -> None:
    migrate(url)
    store = PostgresUserStore(url)
    try:
        store.add_user("dave@example.org", HASH)
        with server.connect() as conn:
            conn.execute("UPDATE users SET settings = '{\"messages_per_hour\": -1}'")
        with pytest.raises(StoreError, match=r"postgresql://127\.0\.0\.1:\d+/sendgate: settings "):
            store.get_user("dave@example.org")
    finally:
        store.close()

"""What the PostgreSQL stores add to the contract (tests/contracts): the versioned schema and its
migration, refusal of unknown schemas, messages without the URL's password, an outage and the
recovery after it, two nodes racing for one name; for the queue, NOTIFY waking another node's
runner, the status report, the server's clock and streamed bodies. A throwaway PostgreSQL."""

from __future__ import annotations

import select
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.peers.postgres_server import PostgresServer
from tests.support.mail import make_envelope

from sendgate.errors import SpoolError, StoreError, UserError
from sendgate.store.cluster.pg_queue import PostgresQueueStore
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


# --- the queue (store.queue) -------------------------------------------------------------------


def _queued(store: PostgresQueueStore, tag: str = "x") -> str:
    message = f"Subject: {tag}\r\n\r\nbody\r\n".encode()
    queue_id = store.new_id()
    store.put(make_envelope(queue_id, message), message)
    return queue_id


def _readable(fd: int, within: float) -> bool:
    return bool(select.select([fd], [], [], within)[0])


def test_mail_queued_on_one_node_wakes_another_nodes_runner(url: str) -> None:
    migrate(url)
    runner, acceptor = PostgresQueueStore(url, node="r"), PostgresQueueStore(url, node="a")
    try:
        fd = runner.arrivals_fd()
        assert fd is not None
        assert _readable(fd, 10)  # the listener says so once it listens: mail may be waiting
        runner.claim(10, 60)  # consumes it
        assert not _readable(fd, 0.2)
        queue_id = _queued(acceptor)
        assert _readable(fd, 10)  # NOTIFY, delivered at the put's commit
        [claim] = runner.claim(10, 60).claims
        assert claim.queue_id == queue_id
        assert claim.message is not None  # small: read with the claim
        assert runner.arrivals_fd() == fd  # one listener, one descriptor, for good
    finally:
        runner.close()
        acceptor.close()


def test_the_listener_comes_back_after_an_outage_on_the_same_descriptor(
    url: str, server: PostgresServer
) -> None:
    migrate(url)
    runner = PostgresQueueStore(url, node="r")
    try:
        fd = runner.arrivals_fd()
        assert fd is not None
        assert _readable(fd, 10)
        runner.claim(10, 60)
        server.stop()
        try:
            with pytest.raises(SpoolError, match=r"^queue store at postgresql://127\.0\.0\.1"):
                runner.claim(10, 60)
        finally:
            server.start()
        assert _readable(fd, 30)  # relistening: mail queued meanwhile is looked for
        runner.claim(10, 60)
        other = PostgresQueueStore(url, node="a")
        try:
            _queued(other)
        finally:
            other.close()
        assert _readable(fd, 10)
    finally:
        runner.close()


def test_status_counts_the_queue_and_the_nodes_with_their_leases(url: str) -> None:
    migrate(url)
    first, second = PostgresQueueStore(url, node="n1"), PostgresQueueStore(url, node="n2")
    try:
        for tag in "abc":
            _queued(first, tag)
        held = _queued(first, "held")
        first.hold(held, "review")
        assert len(first.claim(2, 60).claims) == 2
        assert len(second.claim(5, 60).claims) == 1
        status = second.status()
        assert (status.queued, status.held, status.leased, status.deferred) == (4, 1, 3, 0)
        assert [(node.name, node.leases) for node in status.nodes] == [("n1", 2), ("n2", 1)]
        assert all(abs(node.seen - time.time()) < 60 for node in status.nodes)
        assert status.schema_version == SCHEMA_VERSION
        assert status.server_version[0].isdigit()
    finally:
        first.close()
        second.close()


def test_the_queue_keeps_the_servers_time(url: str, server: PostgresServer) -> None:
    migrate(url)
    store = PostgresQueueStore(url)
    try:
        with server.connect() as conn:
            row = conn.execute("SELECT extract(epoch from clock_timestamp())").fetchone()
        assert row is not None
        assert abs(store.now() - float(str(row[0]))) < 1.0  # one host: the clocks agree
        queue_id = _queued(store)
        [claim] = store.claim(1, 30).claims
        assert claim.queue_id == queue_id
        assert abs(claim.lease_until - (store.now() + 30)) < 2.0
    finally:
        store.close()


def test_a_streamed_body_waits_in_an_unlinked_file_of_the_given_directory(
    url: str, tmp_path: Path
) -> None:
    migrate(url)
    store = PostgresQueueStore(url, body_dir=str(tmp_path))
    try:
        head, line = b"Subject: big\r\n\r\n", b"x" * 76 + b"\r\n"
        body = store.new_body()
        for _ in range(1000):
            body.write(line)
        assert list(tmp_path.iterdir()) == []  # unlinked from the start
        queue_id = store.new_id()
        envelope = make_envelope(queue_id, head + line * 1000)
        store.put_streamed(envelope, head, body)
        assert store.message(queue_id) == head + line * 1000
        [claim] = store.claim(1, 60).claims
        assert claim.message is None  # over 64 KiB: read on its own
        with pytest.raises(SpoolError, match="body written after it was used"):
            body.write(line)
    finally:
        store.close()


def test_a_queue_id_used_twice_is_refused_and_the_first_message_kept(url: str) -> None:
    migrate(url)
    store = PostgresQueueStore(url)
    try:
        queue_id = _queued(store, "first")
        message = b"Subject: second\r\n\r\nbody\r\n"
        with pytest.raises(SpoolError, match="queue id already in use"):
            store.put(make_envelope(queue_id, message), message)
        assert b"first" in store.message(queue_id)
    finally:
        store.close()

"""Tests for sendgate.store.backends: what `prepare` makes, the handles each role gets, lazy stores.

Real stores in an instance made by `init_instance`; the announce pipe is tested across a real
fork, as `serve` uses it (the runner in a child, the acceptor's puts in this process).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import select
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.peers.postgres_server import PostgresServer
from tests.peers.redis_server import RedisServer
from tests.support.clock import FakeClock
from tests.support.forked import WAIT, Forked

from sendgate.cli import main
from sendgate.config.load import load_config
from sendgate.config.schema import Config, StoreConfig
from sendgate.errors import StoreError
from sendgate.log import EventLog
from sendgate.scaffold import init_instance
from sendgate.store.backends import (
    SECRET_BYTES,
    Backends,
    Stores,
    installation_secret,
    limits_path,
    migrate_database,
    open_stores,
    secret_path,
    users_path,
)
from sendgate.store.cluster.pg_users import PostgresUserStore
from sendgate.store.cluster.postgres import SCHEMA_VERSION
from sendgate.store.cluster.redis_limits import RedisLimitStore
from sendgate.store.envelope import Envelope
from sendgate.store.queue import QueueStore, Recovery

MESSAGE = b"Subject: hi\r\n\r\nbody\r\n"
PASSWORD = "correct horse battery staple 42"


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    path = init_instance(
        tmp_path / "sg",
        hostname="mx.example.test",
        submission="127.0.0.1:0",
        submissions="127.0.0.1:0",
    )
    return load_config(path)


@pytest.fixture
def opened() -> Iterator[list[Stores]]:
    """Stores a test opened, closed at its end whatever happens."""
    made: list[Stores] = []
    yield made
    for stores in made:
        stores.close()


def _queue_message(queue: QueueStore) -> str:
    queue_id = queue.new_id()
    envelope = Envelope(queue_id, "", ("bob@example.org",), "alice", 0.0, len(MESSAGE))
    queue.put(envelope, MESSAGE)
    return queue_id


def _descriptors() -> dict[int, str]:
    """What each open descriptor of this process refers to (a path, or e.g. "pipe:[123]")."""
    found = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor is gone by now
            found[int(name)] = os.readlink(f"/proc/self/fd/{name}")
    return found


def _open_under(directory: Path) -> list[str]:
    return sorted(t for t in _descriptors().values() if t.startswith(f"{directory}/"))


def _pipes() -> set[str]:
    return {t for t in _descriptors().values() if t.startswith("pipe:")}


def test_prepare_creates_the_stores_and_the_spool(cfg: Config) -> None:
    assert list(cfg.data_dir.iterdir()) == []
    backends = Backends(cfg)
    try:
        recovery = backends.prepare()
    finally:
        backends.close()
    assert recovery == Recovery(removed_partial=0, corrupt=(), unknown_entries=0)
    assert {p.name for p in cfg.data_dir.iterdir()} >= {"users.db", "limits.db", "spool"}
    assert {p.name for p in (cfg.data_dir / "spool").iterdir()} >= {"tmp", "queue"}
    assert _open_under(cfg.data_dir) == []  # the handles prepare used are closed again


def test_prepare_recovers_the_queue_and_keeps_what_was_queued(
    cfg: Config, opened: list[Stores]
) -> None:
    earlier = Backends(cfg)
    earlier.prepare()
    earlier.close()
    admin = open_stores(cfg)
    opened.append(admin)
    kept = _queue_message(admin.queue)
    spool = cfg.data_dir / "spool"
    (spool / "tmp" / "01HX0000000000PART").write_bytes(b'{"queue_id": "01HX00')
    broken = admin.queue.new_id()
    (spool / "queue" / broken).write_bytes(b"not an envelope\n" + MESSAGE)

    backends = Backends(cfg)
    try:
        recovery = backends.prepare()
    finally:
        backends.close()
    assert recovery == Recovery(removed_partial=1, corrupt=(broken,), unknown_entries=0)
    assert admin.queue.ids() == [kept]
    assert list((spool / "tmp").iterdir()) == []


def test_stores_open_each_store_on_first_use_and_keep_it(cfg: Config, opened: list[Stores]) -> None:
    stores = open_stores(cfg)
    opened.append(stores)
    assert list(cfg.data_dir.iterdir()) == []

    users = stores.users
    assert users.list_users() == []
    assert stores.users is users
    made = {p.name for p in cfg.data_dir.iterdir()}
    assert "users.db" in made
    assert made <= {"users.db", "users.db-wal", "users.db-shm", "users.db-mark"}

    limits = stores.limits
    assert stores.limits is limits
    assert (cfg.data_dir / "limits.db").exists()
    assert not (cfg.data_dir / "spool").exists()

    queue = stores.queue
    assert stores.queue is queue
    assert queue.ids() == []
    assert (cfg.data_dir / "spool" / "queue").is_dir()


def test_a_user_command_does_not_create_the_spool(
    cfg: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    config_path = tmp_path / "sg" / "sendgate.toml"
    assert main(["--config", str(config_path), "user", "add", "alice@example.test"]) == 0
    assert capsys.readouterr().out == "added alice@example.test\n"
    assert (cfg.data_dir / "users.db").exists()
    assert not (cfg.data_dir / "spool").exists()
    assert not (cfg.data_dir / "limits.db").exists()


def test_close_closes_what_was_opened_and_opens_nothing(cfg: Config) -> None:
    unused = open_stores(cfg)
    unused.close()
    assert list(cfg.data_dir.iterdir()) == []

    stores = open_stores(cfg)
    stores.users.list_users()
    assert stores.limits.count("probe", 60.0) == 0
    _queue_message(stores.queue)
    names = {Path(t).name for t in _open_under(cfg.data_dir)}
    assert {"users.db", "limits.db"} <= names
    stores.close()
    assert _open_under(cfg.data_dir) == []
    # Closed stores are opened afresh on the next use.
    try:
        assert [u.username for u in stores.users.list_users()] == []
    finally:
        stores.close()


def test_close_releases_the_announce_pipe(cfg: Config) -> None:
    before = _pipes()
    backends = Backends(cfg)
    backends.prepare()
    assert len(_pipes() - before) == 1  # both ends of one new pipe
    backends.close()
    assert _pipes() == before
    backends.close()  # twice is harmless
    Backends(cfg).close()  # never prepared: nothing to release


def test_a_process_holding_an_end_of_the_pipe_never_closes_it_twice(cfg: Config) -> None:
    backends = Backends(cfg)
    backends.prepare()
    stores = backends.open("acceptor")
    stores.queue.ids()  # takes the writing end, closing the reading end here
    stores.close()  # closes the writing end
    # The descriptors the pipe had are free: new files may get their numbers.
    spares = [os.open(os.devnull, os.O_RDONLY) for _ in range(4)]
    try:
        backends.close()
        for fd in spares:
            os.fstat(fd)  # EBADF if close() closed a reused number again
    finally:
        for fd in spares:
            os.close(fd)


def test_admin_handles_neither_announce_nor_listen(cfg: Config, opened: list[Stores]) -> None:
    backends = Backends(cfg)
    backends.prepare()
    try:
        admin = backends.open("admin")
        command_line = open_stores(cfg)
        opened += [admin, command_line]
        assert admin.queue.arrivals_fd() is None
        assert command_line.queue.arrivals_fd() is None
    finally:
        backends.close()


def test_the_runner_hears_what_an_acceptor_queues_and_not_what_an_admin_does(
    cfg: Config, opened: list[Stores]
) -> None:
    # Time stands still: after its first scan the runner looks at the spool again only when
    # an announcement arrives, and then loads only the ids announced.
    backends = Backends(cfg, clock=FakeClock())
    backends.prepare()

    def runner(log: EventLog) -> int:
        stores = backends.open("runner")
        queue = stores.queue
        fd = queue.arrivals_fd()
        assert fd is not None
        assert queue.claim(10, 600.0).claims == ()  # the first scan: nothing queued
        log.event("runner_ready")
        assert select.select([fd], [], [], WAIT)[0] == [fd]
        claimed = queue.claim(10, 600.0)
        log.event("claimed", ids=",".join(c.queue_id for c in claimed.claims))
        stores.close()
        return 0

    with Forked(runner) as child:
        child.wait_for("event=runner_ready")
        admin = backends.open("admin")
        acceptor = backends.open("acceptor")
        opened += [admin, acceptor]
        assert acceptor.queue.arrivals_fd() is None
        unannounced = _queue_message(admin.queue)
        announced = _queue_message(acceptor.queue)
        line = child.wait_for("event=claimed")
        assert child.wait() == 0
    assert line.endswith(f" ids={announced}")
    assert sorted(admin.queue.ids()) == sorted([unannounced, announced])
    backends.close()  # the pipe went with the handles: nothing left to close


def test_the_installation_secret_is_made_once_owner_only_and_kept(cfg: Config) -> None:
    path = secret_path(cfg)
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    key = installation_secret(cfg)
    assert len(key) == SECRET_BYTES
    assert path.stat().st_mode & 0o777 == 0o600
    assert installation_secret(cfg) == key
    assert [entry.name for entry in cfg.data_dir.iterdir() if "login.key" in entry.name] == [
        "login.key"
    ]  # nothing left aside


def test_a_damaged_installation_secret_is_a_one_line_error(cfg: Config) -> None:
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    secret_path(cfg).write_bytes(b"short")
    with pytest.raises(StoreError, match=r"^[^\n]*login\.key is damaged: 5 bytes, expected 32$"):
        installation_secret(cfg)


# --- the limits on Redis (store.limits) ------------------------------------------------------


def test_limits_on_redis_share_the_secret_and_make_no_local_limit_file(
    cfg: Config, tmp_path: Path
) -> None:
    with RedisServer(tmp_path / "redis") as redis_server:
        shared = dataclasses.replace(cfg, store=StoreConfig(limits=redis_server.url))
        backends = Backends(shared)
        backends.prepare()
        try:
            stores = backends.open("acceptor")
            try:
                limits = stores.limits
                assert isinstance(limits, RedisLimitStore)
                assert limits.record("net:192.0.2.0/24", "a", 60) == 1
                assert installation_secret(shared) == limits.shared_secret()
            finally:
                stores.close()
        finally:
            backends.close()
        assert not limits_path(shared).exists()
        assert not secret_path(shared).exists()  # the cluster's secret lives in Redis


def test_limits_on_an_unreachable_redis_refuse_to_prepare(cfg: Config) -> None:
    shared = dataclasses.replace(cfg, store=StoreConfig(limits="redis://127.0.0.1:1/0"))
    with pytest.raises(StoreError, match=r"^limit store \(Redis\): "):
        Backends(shared).prepare()


# --- the users on PostgreSQL (store.users) ----------------------------------------------------


def test_users_on_postgresql_wait_for_migrate_then_are_what_every_handle_sees(
    cfg: Config, tmp_path: Path
) -> None:
    with PostgresServer(tmp_path / "postgres") as postgres:
        shared = dataclasses.replace(cfg, store=StoreConfig(users=postgres.url))
        with pytest.raises(StoreError, match=r"run `sendgate db migrate`$"):
            Backends(shared).prepare()
        assert migrate_database(shared) == (0, SCHEMA_VERSION)
        backends = Backends(shared)
        backends.prepare()
        try:
            stores = backends.open("acceptor")
            try:
                assert isinstance(stores.users, PostgresUserStore)
                stores.users.add_user("alice@example.org", "$argon2id$v=19$m=8,t=1,p=1$x$y")
            finally:
                stores.close()
            other = open_stores(shared)
            try:
                assert [user.username for user in other.users.list_users()] == ["alice@example.org"]
            finally:
                other.close()
        finally:
            backends.close()
        assert not users_path(shared).exists()


def test_migrate_with_local_users_is_a_one_line_refusal(cfg: Config) -> None:
    refusal = r'^no store is on PostgreSQL \(store.users and store.queue are "local"\)'
    with pytest.raises(StoreError, match=refusal):
        migrate_database(cfg)

"""What the Redis limit store adds to the contract (tests/contracts): Redis's own clock, the
cluster's shared secret, and clear failures when Redis is away. A throwaway redis-server."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
import redis
from tests.peers.redis_server import RedisServer
from tests.support.clock import FakeClock

from sendgate.errors import StoreError
from sendgate.store.cluster.redis_limits import SECRET_BYTES, RedisLimitStore


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as made:
        yield made


@pytest.fixture
def store(server: RedisServer) -> Iterator[RedisLimitStore]:
    server.flush()
    made = RedisLimitStore(server.url)
    yield made
    made.close()


def test_time_is_redis_time(store: RedisLimitStore) -> None:
    before = time.time()
    now = store.now()
    assert before - 1 < now < time.time() + 1  # the same host: the clocks agree


def test_a_window_counts_on_redis_clock_and_the_key_expires(
    store: RedisLimitStore, server: RedisServer
) -> None:
    assert store.record("net:192.0.2.0/24", "a", 60) == 1
    assert store.record("net:192.0.2.0/24", "b", 60) == 2
    assert store.seen("net:192.0.2.0/24", "a", 60)
    client = redis.Redis.from_url(server.url)
    try:
        ttl = client.pttl("{sendgate}:m:net:192.0.2.0/24")
    finally:
        client.close()
    assert 0 < ttl <= 60_000  # nobody needs the members after the window


def test_every_handle_gets_the_same_secret_made_once(server: RedisServer) -> None:
    server.flush()
    first, second = RedisLimitStore(server.url), RedisLimitStore(server.url)
    try:
        key = first.shared_secret()
        assert len(key) == SECRET_BYTES
        assert second.shared_secret() == key
    finally:
        first.close()
        second.close()


def test_a_damaged_secret_is_refused(store: RedisLimitStore, server: RedisServer) -> None:
    client = redis.Redis.from_url(server.url)
    try:
        client.set("{sendgate}:secret", "not hex")
    finally:
        client.close()
    with pytest.raises(StoreError, match="secret is damaged"):
        store.shared_secret()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed again when the block ends


def test_an_unreachable_redis_is_a_store_error_without_the_password() -> None:
    store = RedisLimitStore(f"redis://:s3cret@127.0.0.1:{_closed_port()}/0", timeout=1.0)
    try:
        started = time.monotonic()
        for call in (
            lambda: store.record("k", "m", 60),
            lambda: store.take("k", 5, 60),
            lambda: store.active_bans(["k"]),
            store.now,
            store.shared_secret,
            lambda: store.forget("k"),
        ):
            with pytest.raises(StoreError, match=r"^limit store \(Redis\): ") as caught:
                call()
            assert "s3cret" not in str(caught.value)
        assert time.monotonic() - started < 10  # refused at once, not waited on
    finally:
        store.close()


def test_a_bad_url_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="bad Redis URL"):
        RedisLimitStore("redis://host:notaport/0")


def test_active_bans_never_answer_on_the_event_loop(store: RedisLimitStore) -> None:
    store.ban("net:192.0.2.0/24", 60, "host_failures", memory=600)
    assert store.active_bans_at_once(["net:192.0.2.0/24"]) is None
    assert store.active_bans_at_once([]) == []
    assert [ban.key for ban in store.active_bans(["net:192.0.2.0/24"])] == ["net:192.0.2.0/24"]


def test_the_time_costs_no_round_trip_per_call(store: RedisLimitStore, server: RedisServer) -> None:
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        client.config_resetstat()
        times = [store.now() for _ in range(200)]
        calls = client.info("commandstats").get("cmdstat_time", {}).get("calls", 0)
    finally:
        client.close()
    assert calls <= 1  # measured once, then this host's clock plus the difference
    assert times == sorted(times)


def test_the_index_of_bans_keeps_active_bans_only(server: RedisServer) -> None:
    server.flush()
    clock = FakeClock()
    store = RedisLimitStore(server.url, clock=clock)
    client = redis.Redis.from_url(server.url)
    try:
        for number in range(5):
            store.ban(f"net:192.0.2.{number}/32", 10, "host_failures", memory=86400)
            clock.advance(20)  # each ban has ended before the next
        # Nobody listed the bans meanwhile: the index still holds only the one still active.
        assert client.zcard("{sendgate}:bans") == 1
        assert store.offences("net:192.0.2.0/32", memory=86400) == 1  # remembered all the same
    finally:
        client.close()
        store.close()

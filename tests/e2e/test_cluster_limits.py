"""`sendgate serve` nodes sharing their limits on one Redis (`store.limits`), end to end.

A throwaway redis-server (Debian's redis-server) on a loopback port; instances, each with its
own data directory and the same user, all pointing `store.limits` at it. Covered: failed logins
spread round robin over three nodes trip the network ban at exactly the count one node would,
and the ban made by one node refuses the next connection on another within a second; an
account attack spread over three nodes (users on a throwaway PostgreSQL too) locks the account
at one node's count while the user logs in from the network another node learnt; a sending
quota spread over three nodes lets exactly the quota through; and a Redis outage refuses (421,
454) rather than letting anything through uncounted, then heals by itself.

Security: everything listens on loopback.
"""

from __future__ import annotations

import contextlib
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from tests.e2e.sources import FAILED, REFUSED, attempt, auth, sends, starttls_client
from tests.peers.postgres_server import PostgresServer
from tests.peers.redis_server import RedisServer

if TYPE_CHECKING:
    from tests.e2e.conftest import (
        Instance,
        InstanceFactory,
        ServerFactory,
        ServerProcess,
        TomlScalar,
    )

pytestmark = pytest.mark.e2e

ATTACKER = "127.1.3.1"
USER_NET = "127.2.3.1"
HOST_FAILURES = 6


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as server:
        yield server


def _node(instance: InstanceFactory, redis: RedisServer) -> Instance:
    return instance(
        {
            "store.limits": redis.url,
            "login_limits.host_failures": HOST_FAILURES,
            "login_limits.delay_after": 100,  # no slowing down: this test counts, it does not wait
        }
    )


def test_failures_spread_over_three_nodes_ban_at_one_nodes_count_and_everywhere(
    instance: InstanceFactory, server: ServerFactory, redis_server: RedisServer
) -> None:
    nodes: list[ServerProcess] = [server(_node(instance, redis_server)) for _ in range(3)]
    marks = [node.mark() for node in nodes]
    user = nodes[0].instance.user
    for guess in range(HOST_FAILURES):
        node = nodes[guess % 3]  # round robin, as a load balancer would
        with contextlib.closing(starttls_client(node, ATTACKER)) as client:
            assert auth(client, user, f"guess {guess}") == FAILED
    # The sixth failure, made on the third node, is the one that bans: 2 + 2 + 2, not 6 each.
    [ban] = nodes[2].wait_for(r"event=ban ", since=marks[2])
    assert f"key=net:{ATTACKER}/32 " in ban
    assert "reason=host_failures" in ban
    assert nodes[0].matching(r"event=ban ") == nodes[1].matching(r"event=ban ") == []
    # The ban made on the third node refuses the next connection on the first within a second.
    started = time.monotonic()
    assert attempt(nodes[0], ATTACKER, user, nodes[0].instance.password) == 421
    assert time.monotonic() - started < 1.0
    nodes[0].wait_for(rf"event=refused .*client={ATTACKER} reason=banned ", since=marks[0])
    # The real user, from another network, goes on on all three.
    for node in nodes:
        sends(node, USER_NET, "from-the-user")


SPREAD = [f"127.{number}.3.1" for number in range(70, 90)]  # 20 different /24s
ACCOUNT_FAILURES = 9


def test_an_account_attack_spread_over_three_nodes_locks_at_one_nodes_count(
    instance: InstanceFactory,
    server: ServerFactory,
    redis_server: RedisServer,
    postgres: PostgresServer,
) -> None:
    settings: dict[str, TomlScalar] = {
        "store.limits": redis_server.url,
        "store.users": postgres.url,
        "login_limits.account_failures": ACCOUNT_FAILURES,
        "login_limits.delay_after": 100,
    }
    first = instance(settings, with_user=False)
    first.cli("db", "migrate").ok()
    first.cli("user", "add", first.user, stdin=first.password + "\n").ok()
    nodes = [server(first)] + [server(instance(settings, with_user=False)) for _ in range(2)]
    sends(nodes[0], USER_NET, "known")  # the user's network, known to every node from now on
    codes = []
    for number, source in enumerate(SPREAD):
        node = nodes[number % 3]
        with contextlib.closing(starttls_client(node, source)) as attacker:
            codes.append(auth(attacker, first.user, f"guess {number}"))
    # Exactly as on one node: 9 failures in all lock the account, the rest are refused.
    assert codes == [FAILED] * ACCOUNT_FAILURES + [REFUSED] * (len(SPREAD) - ACCOUNT_FAILURES)
    [lock] = nodes[(ACCOUNT_FAILURES - 1) % 3].wait_for(r"event=ban .*reason=account_failures")
    assert f"key=account:{first.user} " in lock
    # The user, from the network node a learnt, still logs in and sends on node c.
    sends(nodes[2], USER_NET, "during-the-attack")


def test_a_redis_outage_refuses_for_its_length_and_then_heals(
    instance: InstanceFactory, server: ServerFactory, redis_server: RedisServer
) -> None:
    running = server(_node(instance, redis_server))
    made = running.instance
    sends(running, USER_NET, "before")
    waiting = starttls_client(running, USER_NET)  # admitted before the outage
    redis_server.stop()
    mark = running.mark()
    # A login cannot be counted: a temporary failure, never a pass.
    with contextlib.closing(waiting):
        assert auth(waiting, made.user, made.password) == (
            454,
            "4.7.0 Temporary authentication failure",
        )
    # Bans cannot be checked: the connection is refused (421), never admitted unchecked.
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        starttls_client(running, USER_NET)
    assert refused.value.smtp_code == 421
    running.wait_for(r"event=admission_error .*StoreError", since=mark)

    redis_server.start()  # the same port: the nodes reconnect on their own
    sends(running, USER_NET, "after")
    with contextlib.closing(starttls_client(running, ATTACKER)) as client:
        assert auth(client, made.user, "wrong") == FAILED  # counted again, in the restarted Redis


QUOTA = 5


def test_a_sending_quota_shared_by_three_nodes_lets_exactly_the_quota_through(
    instance: InstanceFactory, server: ServerFactory, redis_server: RedisServer
) -> None:
    settings: dict[str, TomlScalar] = {
        "store.limits": redis_server.url,
        "sending_limits.messages_per_hour": QUOTA,
    }
    nodes = [server(instance(settings)) for _ in range(3)]
    for number in range(3 * QUOTA):
        node = nodes[number % 3]
        with contextlib.closing(starttls_client(node, USER_NET)) as client:
            assert auth(client, node.instance.user, node.instance.password)[0] == 235
            client.mail(node.instance.user)
            client.rcpt("bob@example.org")
            client.data(node.instance.message(f"m{number}"))
    # Past the quota a message is refused, or held once the node has flagged the account
    # (flags are each node's own until the users are shared): never sent.
    outcomes = [
        line
        for node in nodes
        for line in node.wait_for(r"event=(accepted|sending_limit) ", count=QUOTA)
    ]
    sent = [line for line in outcomes if "event=accepted " in line and " held=" not in line]
    assert len(sent) == QUOTA
    refused = [line for line in outcomes if "event=sending_limit " in line]
    assert refused
    assert all("limit=messages_per_hour" in line for line in refused)

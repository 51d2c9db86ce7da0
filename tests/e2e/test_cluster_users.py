"""Three `sendgate serve` nodes sharing their users on one PostgreSQL (`store.users`), end to end.

A throwaway PostgreSQL (Debian's postgresql package) on a loopback port; three instances, each
with its own data directory, all pointing `store.users` at it. `sendgate db migrate` makes the
tables; then a user added on one node logs in on the others at once, an app password revoked
on one stops working on another at once, a flag set on one shows on another, and while
PostgreSQL is down a login gets 454 (never a pass), service resuming by itself.

Security: everything listens on loopback.
"""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING

import pytest
from tests.e2e.sources import FAILED, auth, starttls_client
from tests.peers.postgres_server import PostgresServer

from sendgate.store.cluster.postgres import SCHEMA_VERSION

if TYPE_CHECKING:
    from tests.e2e.conftest import Instance, InstanceFactory, ServerFactory, ServerProcess

pytestmark = pytest.mark.e2e

CLIENT = "127.2.4.1"
NEWCOMER = "carol@example.test"
NEWCOMER_PASSWORD = "quiet harbour lantern 4417"


def _nodes(
    instance: InstanceFactory, server: ServerFactory, postgres: PostgresServer
) -> list[ServerProcess]:
    settings = {"store.users": postgres.url}
    first = instance(settings, with_user=False)
    # Before the tables exist a node refuses to start, with the command that makes them.
    refused = first.cli("user", "list")
    assert refused.code == 1
    assert "run `sendgate db migrate`" in refused.stderr
    migrated = first.cli("db", "migrate").ok().stdout
    assert migrated == f"schema version 0 -> {SCHEMA_VERSION}\n"
    assert json.loads(first.cli("db", "migrate", "--json").ok().stdout) == {
        "before": SCHEMA_VERSION,
        "after": SCHEMA_VERSION,
    }
    first.cli("user", "add", first.user, stdin=first.password + "\n").ok()
    made: list[Instance] = [first] + [instance(settings, with_user=False) for _ in range(2)]
    return [server(node) for node in made]


def _login(node: ServerProcess, username: str, password: str) -> tuple[int, str]:
    with contextlib.closing(starttls_client(node, CLIENT)) as client:
        return auth(client, username, password)


def test_a_user_added_on_one_node_logs_in_on_the_others_and_a_revoked_app_password_fails(
    instance: InstanceFactory, server: ServerFactory, postgres: PostgresServer
) -> None:
    nodes = _nodes(instance, server, postgres)
    a, b, c = nodes
    for node in nodes:  # the user made on the first node, before the others existed
        assert _login(node, a.instance.user, a.instance.password)[0] == 235

    assert _login(b, NEWCOMER, NEWCOMER_PASSWORD) == FAILED  # not there yet
    a.instance.cli("user", "add", NEWCOMER, stdin=NEWCOMER_PASSWORD + "\n").ok()
    assert _login(b, NEWCOMER, NEWCOMER_PASSWORD)[0] == 235
    assert _login(c, NEWCOMER, NEWCOMER_PASSWORD)[0] == 235
    listed = c.instance.cli("user", "list").ok().stdout
    assert NEWCOMER in listed  # every node's command line sees the one store

    added = a.instance.cli("user", "app-password", "add", NEWCOMER, "phone").ok().stdout
    app_password = added.splitlines()[-1]
    assert _login(c, NEWCOMER, app_password)[0] == 235  # and c caches it now
    a.instance.cli("user", "app-password", "remove", NEWCOMER, "phone").ok()
    assert _login(c, NEWCOMER, app_password) == FAILED
    assert _login(b, NEWCOMER, NEWCOMER_PASSWORD)[0] == 235  # the main password still works

    a.instance.cli("user", "remove", NEWCOMER).ok()
    assert _login(c, NEWCOMER, NEWCOMER_PASSWORD) == FAILED


def test_a_flag_set_on_one_node_is_seen_on_every_node(
    instance: InstanceFactory, server: ServerFactory, postgres: PostgresServer
) -> None:
    a, _, c = _nodes(instance, server, postgres)
    user = a.instance.user
    with postgres.connect() as conn:  # as a node's defences set it (`UserStore.set_flag`)
        conn.execute(
            "INSERT INTO flags (username, since, reason) VALUES (%s, %s, %s)",
            (user, 1.0, "messages_per_hour"),
        )
    status = json.loads(c.instance.cli("user", "status", user, "--json").ok().stdout)
    assert status["flag"]["reason"] == "messages_per_hour"
    assert "cleared" in a.instance.cli("user", "unflag", user).ok().stdout.lower()
    status = json.loads(c.instance.cli("user", "status", user, "--json").ok().stdout)
    assert status["flag"] is None


def test_while_postgresql_is_down_logins_get_454_and_service_resumes_by_itself(
    instance: InstanceFactory, server: ServerFactory, postgres: PostgresServer
) -> None:
    a, b, _ = _nodes(instance, server, postgres)
    made = a.instance
    waiting = starttls_client(b, CLIENT)
    postgres.stop()
    mark = b.mark()
    with contextlib.closing(waiting):
        assert auth(waiting, made.user, made.password) == (
            454,
            "4.7.0 Temporary authentication failure",
        )
    b.wait_for(r"event=auth_error .*user=alice@example\.test error=StoreError", since=mark)
    postgres.start()  # the same port: the pools reconnect on their own
    assert _login(b, made.user, made.password)[0] == 235
    assert _login(a, made.user, "wrong") == FAILED

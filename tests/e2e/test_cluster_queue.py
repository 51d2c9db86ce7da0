"""Nodes sharing their queue on one PostgreSQL (`store.queue`): a dead or paused node loses nothing.

A throwaway PostgreSQL; nodes with their own data directories and node names, the users and the
queue in that database, and delivery through a smarthost route to aiosmtpd receivers on
loopback (each node may have its own receiver, so that the test sees who delivered what). The
leases are 6 s (`delivery.lease`), so a lease that is not renewed runs out within the test.

Covered: a node SIGKILLed while its deliveries hang mid-DATA loses none of the mail it accepted
(the others deliver each message once after the lease runs out); a node SIGSTOPped past its
lease, whose message another node then claims, gets its late result refused by the fencing
token (`lease_lost`); a PostgreSQL restart under load gives 451 while it is down, loses no
message that got a 250, and service resumes by itself.

The duplicate window, stated: a node stopped after its receiver took the whole message but
before it recorded the result leaves a message that another node delivers again (delivery is at
least once), and so does a delivery that ended while PostgreSQL was down (its result could not
be recorded). The first test's dead node never got its receiver's answer; its second receiver
is where every message must arrive exactly once.

Security: everything listens on loopback.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import smtplib
import threading
from email import message_from_bytes
from typing import TYPE_CHECKING, Any

import pytest
from tests.e2e.settings import UNLIMITED_SENDING
from tests.e2e.sources import login
from tests.peers.mx import Receiver
from tests.peers.postgres_server import PostgresServer
from tests.support.waiting import wait_until

from sendgate.store.cluster.postgres import SCHEMA_VERSION

if TYPE_CHECKING:
    from tests.e2e.conftest import Instance, InstanceFactory, ServerFactory, ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CLIENT = "127.2.5.1"
LEASE = 6.0
_NO_ROUTES = "routes = []\n"


def _node(
    instance: InstanceFactory, postgres: PostgresServer, name: str, receiver: Receiver
) -> Instance:
    made = instance(
        {
            "store.users": postgres.url,
            "store.queue": postgres.url,
            "store.node_name": name,
            "delivery.lease": LEASE,
            "delivery.hold": False,
            **UNLIMITED_SENDING,
        },
        with_user=False,
    )
    text = made.config.read_text()
    route = (
        f'routes = [{{ domains = ["*"], smarthost = "{receiver.address}:{receiver.port}", '
        'tls = "none" }]\n'
    )
    made.config.write_text(text.replace(_NO_ROUTES, route))
    return made


def _first_node(
    instance: InstanceFactory, postgres: PostgresServer, name: str, receiver: Receiver
) -> Instance:
    made = _node(instance, postgres, name, receiver)
    made.cli("db", "migrate").ok()
    made.cli("user", "add", made.user, stdin=made.password + "\n").ok()
    return made


def _submit(running: ServerProcess, tags: list[str]) -> list[str]:
    with contextlib.closing(login(running, CLIENT)) as client:
        ids = [running.submit(client, running.instance.message(tag)) for tag in tags]
        client.quit()
    return ids


def _leases(postgres: PostgresServer) -> dict[str, str | None]:
    with postgres.connect() as conn:
        rows = conn.execute(
            "SELECT queue_id, CASE WHEN lease_until IS NULL THEN NULL ELSE node END FROM queue"
        ).fetchall()
    return {str(queue_id): None if node is None else str(node) for queue_id, node in rows}


def _status(node: ServerProcess) -> dict[str, Any]:
    report = json.loads(node.instance.cli("cluster", "status", "--json").ok().stdout)
    assert report["users"] == report["queue"]
    assert report["limits"] == "local"
    status: dict[str, Any] = report["queue_status"]
    assert status["schema_version"] == SCHEMA_VERSION
    return status


def _tags(receiver: Receiver) -> list[str]:
    subjects = [str(message_from_bytes(item.content)["Subject"]) for item in receiver.received]
    return sorted(subjects)


def test_a_node_killed_mid_delivery_loses_nothing_the_others_deliver_each_message_once(
    instance: InstanceFactory, server: ServerFactory, postgres: PostgresServer
) -> None:
    hang = threading.Event()
    with (
        Receiver("127.0.0.1", 0, hold=hang) as stuck,
        Receiver("127.0.0.1", 0) as healthy,
    ):
        try:
            a = server(_first_node(instance, postgres, "node-a", stuck))
            tags = [f"killed-{number}" for number in range(5)]
            ids = _submit(a, tags)
            # Every message leased by node-a, its deliveries hanging at the end of DATA.
            assert wait_until(lambda: _leases(postgres) == dict.fromkeys(ids, "node-a"), within=30)
            assert stuck.data_started.wait(30)
            seen = _status(a)
            assert (seen["queued"], seen["leased"], seen["held"]) == (5, 5, 0)
            [node_a] = seen["nodes"]
            assert (node_a["name"], node_a["leases"]) == ("node-a", 5)
            a.kill()
            others = [server(_node(instance, postgres, name, healthy)) for name in ("b", "c")]
            # Taken over once the leases run out; each message reaches the receiver once.
            healthy.wait_for(len(tags), timeout=LEASE + 60)
            assert wait_until(lambda: _leases(postgres) == {}, within=30)
            assert _tags(healthy) == sorted(tags)
            pattern = r"event=delivery .*result=sent "
            after = _status(others[0])
            assert after["queued"] == 0
            assert {node["name"]: node["leases"] for node in after["nodes"]} == {
                "node-a": 0,
                "b": 0,
                "c": 0,
            }
            text = others[1].instance.cli("cluster", "status").ok().stdout
            assert re.search(
                r"^queue   postgresql://127\.0\.0\.1:\d+/sendgate \(Postgre", text, re.M
            )
            assert re.search(
                r"^node    node-a seen \S+ \(\d+ s ago\) version \S+ leases 0$", text, re.M
            )
            # The survivors did it (their log lines may trail the receiver a little).
            assert wait_until(
                lambda: sum(len(node.matching(pattern)) for node in others) == len(tags),
                within=30,
            )
        finally:
            hang.set()


def test_a_paused_node_past_its_lease_has_its_late_result_refused(
    instance: InstanceFactory, server: ServerFactory, postgres: PostgresServer
) -> None:
    first_hang, second_hang = threading.Event(), threading.Event()
    with (
        Receiver("127.0.0.1", 0, hold=first_hang) as first,
        Receiver("127.0.0.1", 0, hold=second_hang) as second,
    ):
        try:
            a = server(_first_node(instance, postgres, "node-a", first))
            [queue_id] = _submit(a, ["paused"])
            assert first.data_started.wait(30)  # node-a's attempt waits for the reply to DATA
            a.send_group_signal(signal.SIGSTOP)
            try:
                b = server(_node(instance, postgres, "node-b", second))
                # node-b claims the message once node-a's lease runs out (a larger token).
                assert second.data_started.wait(LEASE + 60)
                assert _leases(postgres) == {queue_id: "node-b"}
                first_hang.set()  # node-a's receiver answers 250: too late, node-a sleeps
                first.wait_for(1)
            finally:
                a.send_group_signal(signal.SIGCONT)
            # node-a wakes, reads the 250 and tries to record it under its old token.
            [lost] = a.wait_for(rf"event=lease_lost .*queue_id={queue_id}", timeout=30)
            assert "level=warning" in lost
            assert _leases(postgres) == {queue_id: "node-b"}  # node-b's lease stands
            second_hang.set()
            second.wait_for(1)
            assert wait_until(lambda: _leases(postgres) == {}, within=30)
            b.wait_for(rf"event=delivery .*queue_id={queue_id} .*result=sent ")
        finally:
            first_hang.set()
            second_hang.set()


def test_a_postgresql_restart_under_load_gives_451_and_loses_nothing(
    instance: InstanceFactory, server: ServerFactory, postgres: PostgresServer
) -> None:
    with Receiver("127.0.0.1", 0) as receiver:
        a = server(_first_node(instance, postgres, "node-a", receiver))
        b = server(_node(instance, postgres, "node-b", receiver))
        accepted: list[str] = []
        refused: list[str] = []
        problems: list[str] = []
        stop = threading.Event()

        def load(node: ServerProcess, prefix: str) -> None:
            number = 0
            while not stop.is_set():
                try:
                    with contextlib.closing(login(node, CLIENT)) as client:
                        while not stop.is_set():
                            tag = f"{prefix}-{number}"
                            number += 1
                            code, text = _try_submit(client, node, tag)
                            if code == 250:
                                accepted.append(tag)
                            elif code == 451:
                                refused.append(text)
                            else:
                                problems.append(f"{code} {text}")
                except (smtplib.SMTPException, OSError, AssertionError) as exc:
                    # A login while PostgreSQL is down gets 454: try again, as a client would.
                    if "454" not in str(exc) and not stop.is_set():
                        problems.append(repr(exc))
                    stop.wait(0.2)

        threads = [
            threading.Thread(target=load, args=(node, name)) for node, name in ((a, "a"), (b, "b"))
        ]
        for thread in threads:
            thread.start()
        try:
            assert wait_until(lambda: len(accepted) >= 20, within=60)
            postgres.stop()
            assert wait_until(lambda: len(refused) >= 2, within=60)
            postgres.start()
            settled = len(accepted)
            assert wait_until(lambda: len(accepted) >= settled + 20, within=60)
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
        assert problems == []
        assert all(re.match(r"4\.3\.0 ", text) for text in refused), refused[:3]
        # None lost. Some may come twice: a delivery that ended while PostgreSQL was down
        # could not be recorded, and is made again once its lease runs out (at least once).
        assert wait_until(lambda: set(_tags(receiver)) >= set(accepted), within=LEASE + 60)
        assert set(_tags(receiver)) == set(accepted)


def _try_submit(client: smtplib.SMTP, node: ServerProcess, tag: str) -> tuple[int, str]:
    code, text = client.mail(node.instance.user)
    if code != 250:
        return code, text.decode()
    code, text = client.rcpt("bob@example.org")
    if code != 250:
        client.rset()
        return code, text.decode()
    try:
        code, text = client.data(node.instance.message(tag))
    except smtplib.SMTPDataError as exc:
        error = exc.smtp_error
        return exc.smtp_code, error.decode() if isinstance(error, bytes) else error
    return code, text.decode()

"""Failed-login limits hold across workers and across restarts of a live `sendgate serve`.

Across workers: failures spread over many connections, one per attempt, ban an address (and lock
an account attacked from many /24s) at exactly the configured total, whether one worker or
three served them, because every count lives in the shared store. Across restarts: a counter
left one short of the ban, a ban, an account lock with its known network and a compromised-
account flag are all still in force after SIGTERM and start, and after SIGKILL of the whole
process group and start.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING

import pytest
from tests.e2e.sources import attempt, auth, events, starttls_client

if TYPE_CHECKING:
    from tests.e2e.conftest import (
        Instance,
        InstanceFactory,
        ServerFactory,
        ServerProcess,
        TomlScalar,
    )

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

HOST_FAILURES = 8
ACCOUNT_FAILURES = 6
ATTACKER = "127.0.0.2"
REFUSED = "4.7.0 Too many failed logins, try again later"


def limits(workers: int, more: Mapping[str, TomlScalar] | None = None) -> dict[str, TomlScalar]:
    """Config: thresholds small enough for a test, no delays, no /24 ban to get in the way."""
    return {
        "listen.workers": workers,
        "login_limits.host_failures": HOST_FAILURES,
        "login_limits.block_failures": 1000,
        "login_limits.account_failures": ACCOUNT_FAILURES,
        "login_limits.delay": 0,
        **(more or {}),
    }


def served_by(lines: list[dict[str, str]]) -> set[str]:
    return {line["worker"] for line in lines}


@pytest.mark.parametrize("workers", [1, 3])
def test_failures_over_many_connections_ban_an_address_at_the_same_total(
    instance: InstanceFactory, server: ServerFactory, workers: int
) -> None:
    running = server(instance(limits(workers)))
    for number in range(1, HOST_FAILURES + 1):
        # A new connection, name and password each time: only the address ties them together.
        code = attempt(running, ATTACKER, f"guess{number}@example.test", f"wrong {number}")
        assert code == 535, f"attempt {number}"
    assert attempt(running, ATTACKER, "guess@example.test", "one more") == 421
    running.wait_for(rf"event=refused .*client={ATTACKER} reason=banned")

    seen = events(running, "auth_fail", "ban", "refused", client=ATTACKER)
    assert [line["event"] for line in seen] == ["auth_fail"] * HOST_FAILURES + ["ban", "refused"]
    fails, ban, refused = seen[:HOST_FAILURES], seen[-2], seen[-1]
    assert [int(line["failures"]) for line in fails] == list(range(1, HOST_FAILURES + 1))
    assert (ban["key"], ban["reason"], ban["offences"]) == (
        f"net:{ATTACKER}/32",
        "host_failures",
        "1",
    )
    # The ban came from the connection of the last failure, whichever worker served it.
    assert (ban["worker"], ban["conn"]) == (fails[-1]["worker"], fails[-1]["conn"])
    assert (refused["key"], refused["code"]) == (f"net:{ATTACKER}/32", "421 4.7.0")
    workers_seen = served_by(fails)
    if workers == 1:
        assert len(workers_seen) == 1
    else:
        assert len(workers_seen) >= 2, f"all failures served by worker {workers_seen}"


@pytest.mark.parametrize("workers", [1, 3])
def test_failures_from_many_networks_lock_an_account_at_the_same_total(
    instance: InstanceFactory, server: ServerFactory, workers: int
) -> None:
    made = instance(limits(workers))
    running = server(made)
    for number in range(1, ACCOUNT_FAILURES + 1):
        # One attempt per /24: no network comes near a limit of its own.
        code = attempt(running, f"127.{10 + number}.0.1", made.user, f"wrong {number}")
        assert code == 535, f"attempt {number}"
    last = f"127.{11 + ACCOUNT_FAILURES}.0.1"
    client = starttls_client(running, last)
    try:
        assert auth(client, made.user, made.password) == (454, REFUSED)
    finally:
        client.quit()
    running.wait_for(rf"event=auth_refused .*client={last} ")

    seen = events(running, "auth_fail", "ban", "auth_refused")
    assert [line["event"] for line in seen] == ["auth_fail"] * ACCOUNT_FAILURES + [
        "ban",
        "auth_refused",
    ]
    fails, ban, refused = seen[:ACCOUNT_FAILURES], seen[-2], seen[-1]
    assert {line["user"] for line in fails} == {made.user}
    assert len({line["client"] for line in fails}) == ACCOUNT_FAILURES
    assert (ban["key"], ban["reason"]) == (f"account:{made.user}", "account_failures")
    assert (ban["worker"], ban["conn"]) == (fails[-1]["worker"], fails[-1]["conn"])
    assert (refused["client"], refused["reason"]) == (last, "account_locked")
    workers_seen = served_by(fails)
    if workers == 1:
        assert len(workers_seen) == 1
    else:
        assert len(workers_seen) >= 2, f"all failures served by worker {workers_seen}"


# --- across restarts -----------------------------------------------------------------------------

RESTART_HOST_FAILURES = 4
RESTART_ACCOUNT_FAILURES = 3
COUNTED = "127.1.0.1"  # one failure short of a ban when the server goes down
BANNED = "127.1.0.2"  # banned before it goes down
HOME = "127.2.0.1"  # the real user's network
STRANGER = "127.40.0.1"  # a network the real user never logged in from
BOB = "bob@example.test"
BOB_PASSWORD = "a long and unguessable passphrase 7"
BOB_NETWORKS = ("127.20.0.1", "127.21.0.1")


def status(made: Instance, username: str) -> dict[str, object]:
    document = json.loads(made.cli("user", "status", username, "--json").ok().stdout)
    assert isinstance(document, dict)
    return document


def known_networks(document: dict[str, object]) -> list[str]:
    known = document["known_networks"]
    assert isinstance(known, list)
    return [entry["network"] for entry in known]


def restart(running: ServerProcess, how: str) -> None:
    if how == "sigkill":
        running.kill()
    else:
        assert running.stop() == 0, running.tail()
    running.start()


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_counters_bans_known_networks_and_flags_survive_a_restart(
    instance: InstanceFactory, server: ServerFactory, how: str
) -> None:
    made = instance(
        limits(
            2,
            {
                "login_limits.host_failures": RESTART_HOST_FAILURES,
                "login_limits.account_failures": RESTART_ACCOUNT_FAILURES,
                "login_limits.networks_per_hour": 1,
                "sending_limits.flagged": "refuse",
            },
        )
    )
    made.cli("user", "add", BOB, stdin=BOB_PASSWORD + "\n").ok()
    running = server(made)

    for number in range(1, RESTART_HOST_FAILURES):
        assert attempt(running, COUNTED, f"guess{number}@example.test", f"wrong {number}") == 535
    for number in range(1, RESTART_HOST_FAILURES + 1):
        assert attempt(running, BANNED, f"other{number}@example.test", f"wrong {number}") == 535
    assert attempt(running, BANNED, "other@example.test", "again") == 421
    # Alice logs in at home, then a distributed attack locks her account everywhere else.
    assert attempt(running, HOME, made.user, made.password) == 235
    for number in range(1, RESTART_ACCOUNT_FAILURES + 1):
        assert attempt(running, f"127.{30 + number}.0.1", made.user, f"wrong {number}") == 535
    assert attempt(running, STRANGER, made.user, made.password) == 454
    assert attempt(running, HOME, made.user, made.password) == 235
    # Bob logs in from two networks within the hour (more than networks_per_hour): flagged.
    for network in BOB_NETWORKS:
        assert attempt(running, network, BOB, BOB_PASSWORD) == 235
    running.wait_for(rf"event=flagged .*user={BOB} ")
    alice_before, bob_before = status(made, made.user), status(made, BOB)
    assert alice_before["account_lock"] is not None
    assert known_networks(alice_before) == ["127.2.0.0/24"]
    assert bob_before["flag"] is not None

    restart(running, how)

    # The whole state `user status` shows is as it was.
    assert (status(made, made.user), status(made, BOB)) == (alice_before, bob_before)
    # The ban still refuses at accept; the lock still refuses a stranger, not alice at home.
    assert attempt(running, BANNED, "other@example.test", "after") == 421
    assert attempt(running, STRANGER, made.user, made.password) == 454
    assert attempt(running, HOME, made.user, made.password) == 235
    # The counter went on from where it was: one more failure bans.
    assert attempt(running, COUNTED, "guess@example.test", "the last straw") == 535
    ban = running.wait_for(rf"event=ban .*client={COUNTED} ")[0]
    assert f"key=net:{COUNTED}/32 " in ban
    assert "reason=host_failures" in ban
    assert attempt(running, COUNTED, "guess@example.test", "after the ban") == 421
    # Bob's flag still refuses his mail.
    client = starttls_client(running, BOB_NETWORKS[0])
    try:
        client.login(BOB, BOB_PASSWORD)
        assert client.mail(BOB)[0] == 250
        assert client.rcpt("someone@example.org")[0] == 250
        code, text = client.data(made.message("while flagged", sender=BOB))
        assert (code, text.decode()) == (
            451,
            "4.7.1 Account suspended for review; contact your administrator",
        )
    finally:
        client.quit()

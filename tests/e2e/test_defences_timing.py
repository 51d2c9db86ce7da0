"""What the failed-login defences reveal and cost: AUTH answer times, and TLS for a banned client.

Timing: on open TLS sessions, AUTH for an unknown user, a wrong password and a locked account
(refused without checking the password) are answered in the same median time, with the real
argon2 cost; the three kinds take turns so that machine noise hits them alike. The client's
networks are allow-listed, so no escalating delay distorts the measure, while the account lock
still applies. Port 465: a banned client's connection is closed before any TLS byte, and the
server logs the refusal and no handshake.
"""

from __future__ import annotations

import contextlib
import smtplib
import socket
import ssl
import statistics
import time
from typing import TYPE_CHECKING

import pytest
from tests.e2e.conftest import CLIENT_NAME, SOCKET_TIMEOUT
from tests.e2e.sources import attempt, auth, events, fields, starttls_client

if TYPE_CHECKING:
    from tests.e2e.conftest import InstanceFactory, ServerFactory

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CAROL = "carol@example.test"
CAROL_PASSWORD = "a different long passphrase 31"
ACCOUNT_FAILURES = 3
WARM_UP = 3
ROUNDS = 55
MAX_GAP = 0.010


def test_auth_takes_as_long_for_an_unknown_user_a_wrong_password_and_a_locked_account(
    instance: InstanceFactory, server: ServerFactory
) -> None:
    made = instance(
        {
            "login_limits.allow": ["127.0.0.0/8"],  # never delayed or banned; locks still apply
            "login_limits.account_failures": ACCOUNT_FAILURES,
            "limits.max_errors": 1000,  # each 535 counts as an error of the session
        }
    )
    made.cli("user", "add", CAROL, stdin=CAROL_PASSWORD + "\n").ok()
    running = server(made)
    for number in range(1, ACCOUNT_FAILURES + 1):
        assert attempt(running, f"127.{50 + number}.0.1", CAROL, f"wrong {number}") == 535
    running.wait_for(rf"event=ban .*key=account:{CAROL} ")

    # The same name and password each time: a repeated failure counts once, so neither the
    # unknown name nor alice gets locked by the measure itself.
    kinds = {
        "unknown user": ("127.0.0.11", "nobody@example.test", "some password 1", 535),
        "wrong password": ("127.0.0.12", made.user, "not alice's password", 535),
        "locked account": ("127.0.0.13", CAROL, CAROL_PASSWORD, 454),
    }
    clients = {kind: starttls_client(running, source) for kind, (source, *_) in kinds.items()}
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    order = list(kinds)
    try:
        for round_ in range(WARM_UP + ROUNDS):
            turn = round_ % len(order)  # who goes first changes too
            for kind in order[turn:] + order[:turn]:
                _, username, password, expected = kinds[kind]
                started = time.perf_counter()
                code, _ = auth(clients[kind], username, password)
                elapsed = time.perf_counter() - started
                assert code == expected, (kind, round_)
                if round_ >= WARM_UP:
                    times[kind].append(elapsed)
    finally:
        for client in clients.values():
            client.quit()

    medians = {kind: statistics.median(values) for kind, values in times.items()}
    shown = ", ".join(f"{kind} {median * 1000:.1f} ms" for kind, median in medians.items())
    assert max(medians.values()) - min(medians.values()) < MAX_GAP, shown
    # The measure was of what it claims: no delay, and the lock refused every attempt for carol.
    running.wait_for(r"event=auth_refused ", count=WARM_UP + ROUNDS)
    fails = events(running, "auth_fail")
    assert {float(line["delay"]) for line in fails} == {0.0}
    refused = events(running, "auth_refused", client="127.0.0.13")
    assert len(refused) == WARM_UP + ROUNDS
    assert {line["reason"] for line in refused} == {"account_locked"}


BANNED = "127.0.0.9"
OTHER = "127.0.0.10"


def client_hello() -> bytes:
    """The first flight of a TLS client: what a 465 client sends right after connecting."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16", "not a TLS handshake record"
    return hello


def test_a_banned_client_gets_no_tls_handshake_on_the_implicit_tls_port(
    instance: InstanceFactory, server: ServerFactory
) -> None:
    running = server(instance({"login_limits.host_failures": 3}))
    for number in range(1, 4):
        assert attempt(running, BANNED, f"guess{number}@example.test", f"wrong {number}") == 535
    running.wait_for(rf"event=ban .*client={BANNED} ")
    mark = running.mark()

    received = b""
    with socket.create_connection(
        ("127.0.0.1", running.tls_port), SOCKET_TIMEOUT, source_address=(BANNED, 0)
    ) as sock:
        with contextlib.suppress(ConnectionError):  # closed before the hello went out
            sock.sendall(client_hello())
        with contextlib.suppress(ConnectionResetError):  # closed with the hello unread
            received = sock.recv(4096)  # b"" at the close; a ServerHello had TLS begun
    assert received == b"", "the server answered a banned client's ClientHello"
    refused = fields(running.wait_for(rf"event=refused .*client={BANNED} ", since=mark)[0])
    assert (refused["reason"], refused["key"], refused["code"]) == (
        "banned",
        f"net:{BANNED}/32",
        "421 4.7.0",
    )

    # Another address still gets TLS on 465; its lines come after all of the banned one's.
    with smtplib.SMTP_SSL(
        "127.0.0.1",
        running.tls_port,
        CLIENT_NAME,
        timeout=SOCKET_TIMEOUT,
        context=running.instance.client_context(),
        source_address=(OTHER, 0),
    ) as client:
        assert client.noop()[0] == 250
    running.wait_for(rf"event=disconnect .*client={OTHER} ", since=mark)
    assert [line["event"] for line in events(running, "tls", client=OTHER, since=mark)] == ["tls"]
    # The banned connection's whole story: no tls (handshake done) nor tls_failed (begun).
    story = events(running, "connect", "tls", "tls_failed", "refused", "disconnect", since=mark)
    assert [line["event"] for line in story if line["conn"] == refused["conn"]] == [
        "connect",
        "refused",
        "disconnect",
    ]

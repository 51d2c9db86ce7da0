"""The login guard end to end: a live `sendgate serve` attacked from several loopback addresses.

Linux routes all of 127.0.0.0/8 to the loopback interface, so a client socket bound to
127.A.B.C (smtplib's `source_address`) is a client from that address. The guard's network is
the /24: tests use different /24s where networks must differ and one address where they must
share. Thresholds and delays are made small through the configuration; tests wait on log
lines, never on sleeps. Covered: an attacker loop from one address slowed then banned (454 in
its open session, 421 at connect on 587, the socket closed before any TLS on 465) while the
real user sends from another network; an attack spread over 50 networks that locks the account
for unknown networks but not for the user's known one; an attacker behind the user's own NAT
address refused while the user goes on.

Security: everything runs on loopback; replies and log lines are only matched and compared.
"""

from __future__ import annotations

import contextlib
import re
import socket
import time
from typing import TYPE_CHECKING

import pytest
from tests.e2e.conftest import SOCKET_TIMEOUT, RawClient, SmtpReply
from tests.e2e.sources import FAILED, REFUSED, auth, field, sends, starttls_client
from tests.support.tls import client_hello

if TYPE_CHECKING:
    from tests.e2e.conftest import Instance, InstanceFactory, ServerFactory, ServerProcess

pytestmark = pytest.mark.e2e

USER_NET = "127.2.0.1"  # the real user's address, in a /24 of its own
BANNED = "4.7.0 Too many failed logins from your network, try again later"


def raw_from(source: str, port: int) -> RawClient:
    """A raw client from `source` connected to `port` (nothing read yet)."""
    sock = socket.create_connection(
        ("127.0.0.1", port), timeout=SOCKET_TIMEOUT, source_address=(source, 0)
    )
    return RawClient(sock)


def answer_to_hello(source: str, running: ServerProcess) -> bytes:
    """Connect from `source` to the implicit-TLS port, send a ClientHello, read to the end."""
    sock = socket.create_connection(
        ("127.0.0.1", running.tls_port), timeout=SOCKET_TIMEOUT, source_address=(source, 0)
    )
    received = b""
    with contextlib.closing(sock):
        try:
            sock.sendall(client_hello(running.instance.client_context()))
            while chunk := sock.recv(4096):
                received += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass  # closed with our hello unread: a reset, and still nothing for us
    return received


def fast_limits(made: Instance, **settings: int | float) -> None:
    made.configure({f"login_limits.{key}": value for key, value in settings.items()})


# --- 1. one attacker address: slowed, then banned -------------------------------------------


ATTACKER = "127.1.0.1"
HOST_FAILURES = 5
_FAILURE = re.compile(r" failures=(\d+) delay=([\d.]+) repeated=false$")
DELAYS = [0.0, 0.0, 0.1, 0.2, 0.4]  # delay_after=2, delay=0.1, doubling, delay_max=0.4


def test_an_attacker_loop_is_slowed_then_banned_while_the_user_sends(
    instance: InstanceFactory, server: ServerFactory
) -> None:
    made = instance()
    fast_limits(made, host_failures=HOST_FAILURES, delay_after=2, delay=0.1, delay_max=0.4)
    running = server(made)
    mark = running.mark()
    with contextlib.closing(starttls_client(running, ATTACKER)) as attacker:
        elapsed = []
        for guess in range(HOST_FAILURES):
            started = time.monotonic()
            code, text = auth(attacker, made.user, f"guess {guess}")
            elapsed.append(time.monotonic() - started)
            assert (code, text) == FAILED
        fails = running.wait_for(
            rf"event=auth_fail .*client={ATTACKER} user={made.user} ",
            since=mark,
            count=HOST_FAILURES,
        )
        logged = [_FAILURE.search(line) for line in fails]
        counted = [(int(m.group(1)), float(m.group(2))) for m in logged if m is not None]
        assert counted == list(enumerate(DELAYS, start=1)), fails
        # The delay is waited out before the reply, not only logged.
        assert all(took >= delay for took, delay in zip(elapsed, DELAYS, strict=True)), elapsed
        [ban] = running.wait_for(r"event=ban ", since=mark)
        assert f"key=net:{ATTACKER}/32 " in ban
        assert "reason=host_failures" in ban

        # The open session is refused from now on, even with the right password.
        assert auth(attacker, made.user, made.password) == REFUSED
        running.wait_for(
            rf"event=auth_refused .*client={ATTACKER} user={made.user} reason=network_banned",
            since=mark,
        )

    # A new connection is refused at once: the 421 is the banner on 587.
    raw = raw_from(ATTACKER, running.port)
    try:
        assert raw.reply() == SmtpReply(421, (BANNED,))
        assert raw.closed_by_server()
    finally:
        raw.close()
    # On 465 the socket is closed without a byte of TLS: no ServerHello, no alert.
    assert answer_to_hello(ATTACKER, running) == b""
    running.wait_for(
        rf"event=refused .*client={ATTACKER} reason=banned key=net:{ATTACKER}/32 "
        r'code="421 4.7.0"',
        since=mark,
        count=2,
    )

    # The real user, from another /24, logs in and sends meanwhile.
    sends(running, USER_NET, "from-the-user")
    running.wait_for(rf"event=auth_ok .*client={USER_NET} user={made.user} ", since=mark)


# --- 2. an attack spread over 50 networks against one account -------------------------------


SPREAD = [f"127.{number}.0.1" for number in range(10, 60)]  # 50 different /24s
ACCOUNT_FAILURES = 10


@pytest.mark.slow  # 51 logins, each costing an argon2 verification or as long
def test_a_spread_attack_locks_the_account_for_new_networks_only(
    instance: InstanceFactory, server: ServerFactory
) -> None:
    made = instance({"listen.workers": 2})
    fast_limits(made, account_failures=ACCOUNT_FAILURES)
    running = server(made)
    sends(running, USER_NET, "before-the-attack")  # the user's network is known from now on
    mark = running.mark()
    codes = []
    for number, source in enumerate(SPREAD):
        with contextlib.closing(starttls_client(running, source)) as attacker:
            codes.append(auth(attacker, made.user, f"guess {number}"))
            attacker.quit()
    expected = [FAILED] * ACCOUNT_FAILURES + [REFUSED] * (len(SPREAD) - ACCOUNT_FAILURES)
    assert codes == expected
    [lock] = running.wait_for(r"event=ban ", since=mark)
    assert f"key=account:{made.user} " in lock
    assert "reason=account_failures" in lock
    # Refused without a password check; one line each, naming the lock, never a network ban.
    refusals = running.wait_for(
        rf"event=auth_refused .*user={made.user} reason=account_locked key=account:{made.user}$",
        since=mark,
        count=len(SPREAD) - ACCOUNT_FAILURES,
    )
    assert [field(line, "client") for line in refusals] == SPREAD[ACCOUNT_FAILURES:]

    # Even the right password is refused from a network the account never used...
    with contextlib.closing(starttls_client(running, "127.60.0.1")) as stranger:
        assert auth(stranger, made.user, made.password) == REFUSED
        stranger.quit()
    running.wait_for(
        rf"event=auth_refused .*client=127\.60\.0\.1 user={made.user} reason=account_locked",
        since=mark,
    )
    # ...while the real user, from its known network, logs in and sends.
    sends(running, USER_NET, "during-the-attack")
    running.wait_for(rf"event=auth_ok .*client={USER_NET} user={made.user} ", since=mark)
    status = made.cli("user", "status", made.user).ok().stdout
    assert re.search(r"^account-lock: until \S+ \(account_failures, since \S+\)$", status, re.M)
    assert f"known-network: {USER_NET.rsplit('.', 1)[0]}.0/24 " in status


# --- 3. NAT: the attacker and the user behind one address ------------------------------------


NAT = "127.3.0.1"


def test_behind_one_nat_address_the_known_user_goes_on_while_the_attacker_is_refused(
    instance: InstanceFactory, server: ServerFactory
) -> None:
    made = instance()
    fast_limits(made, host_failures=HOST_FAILURES, delay_after=HOST_FAILURES)
    running = server(made)
    sends(running, NAT, "before-the-attack")  # the account is known at the NAT address
    mark = running.mark()
    with contextlib.closing(starttls_client(running, NAT)) as attacker:
        for number in range(HOST_FAILURES):
            assert auth(attacker, f"user{number}@example.test", "guess")[0] == 535
        [ban] = running.wait_for(r"event=ban ", since=mark)
        assert f"key=net:{NAT}/32 " in ban
        assert "reason=host_failures" in ban
        attacker.quit()

    # New connections are still admitted (an account is known here): no 421, a 220 banner...
    mark = running.mark()
    with contextlib.closing(starttls_client(running, NAT)) as attacker:
        # ...but every account not known here is refused without a password check.
        assert auth(attacker, "someone@example.test", "guess") == REFUSED
        assert auth(attacker, "user0@example.test", "guess") == REFUSED
        attacker.quit()
    refusals = running.wait_for(
        rf"event=auth_refused .*client={NAT} .*reason=network_banned key=net:{NAT}/32$",
        since=mark,
        count=2,
    )
    assert len(refusals) == 2
    # The user, known behind the same address, still logs in and sends.
    sends(running, NAT, "during-the-attack")
    running.wait_for(rf"event=auth_ok .*client={NAT} user={made.user} ", since=mark)
    assert running.matching(r"event=refused ", since=0) == []

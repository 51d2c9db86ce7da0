"""Tests for the connection cache: keys, limits, expiry, close and concurrent use.

Loopback addresses 127.0.55.61-127.0.55.90 are shared with test_client_reuse.py.
"""

from __future__ import annotations

import asyncio

import aiosmtplib
import pytest
import trustme
from aiosmtpd.smtp import SMTP
from tests.support.clock import FakeClock
from tests.unit.delivery.client_peers import (
    OPPORTUNISTIC,
    PLAINTEXT,
    Handler,
    Pki,
    RawConnection,
    RawPeer,
    answer,
    delivered,
    message,
    send,
    serve,
    smtpd,
    target,
)

from sendgate.delivery.connections import CachedSession, ConnectionCache, session_key
from sendgate.delivery.payload import data_payload
from sendgate.delivery.target import Target, TlsRequirement

# --- the connection cache (127.0.55.61 - 127.0.55.90) -------------------------------------------


@pytest.mark.parametrize("variant", ["host", "tls mode", "helo", "auth user"])
def test_sessions_are_not_shared_across_keys(pki: Pki, variant: str) -> None:
    auth_peer = ("AUTH PLAIN", "8BITMIME")

    async def run() -> None:
        peer = RawPeer(lambda c: serve(c, extensions=auth_peer, replies={"AUTH": "235 2.7.0 ok"}))
        cache = ConnectionCache()
        async with peer.serving("127.0.55.63") as port:
            base = target(port, "127.0.55.63", PLAINTEXT, auth=("alice", "pw"))
            other, helo = base, "client.test"
            if variant == "host":
                other = Target("relay.test", base.address, port, PLAINTEXT, auth=base.auth)
            elif variant == "tls mode":
                other = target(port, "127.0.55.63", OPPORTUNISTIC)
            elif variant == "helo":
                helo = "other.client.test"
            else:
                other = target(port, "127.0.55.63", PLAINTEXT, auth=("bob", "pw"))
            outcomes = [
                await send(base, pki.client(), cache=cache),
                await send(other, pki.client(), cache=cache, helo=helo),
                await send(base, pki.client(), cache=cache),  # each goes back to its own
                await send(other, pki.client(), cache=cache, helo=helo),
            ]
            assert cache.idle == 2
            await cache.close()
        assert all(delivered(outcome) for outcome in outcomes)
        assert peer.connections == 2
        assert peer.commands().count("EHLO") == 2
        assert peer.commands().count("QUIT") == 2

    asyncio.run(run())


def test_sessions_are_not_shared_across_tls_requirements(pki: Pki) -> None:
    async def run() -> None:
        handler = Handler()
        connections: list[SMTP] = []
        cache = ConnectionCache()
        trust, other_trust = pki.client(), pki.client()
        pkix = TlsRequirement("required", "pkix", names=("mx.test",), reason="mta-sts")
        plans = [
            (OPPORTUNISTIC, trust),
            (TlsRequirement("required", "none", reason="smarthost"), trust),
            (pkix, trust),
            (pkix, other_trust),  # another trust store verified nothing yet
        ]
        async with smtpd(
            handler, "127.0.55.64", starttls=pki.server(pki.mx), connections=connections
        ) as port:
            outcomes = [
                await send(target(port, "127.0.55.64", tls), context, cache=cache)
                for tls, context in plans + plans
            ]
            assert cache.idle == 4
            await cache.close()
        assert all(delivered(outcome) for outcome in outcomes)
        assert len(connections) == 4
        assert len(handler.messages) == 8
        assert handler.quits == 4

    asyncio.run(run())


@pytest.mark.parametrize(
    ("limits", "steps", "connections"),
    [
        ({"idle_time": 2.0}, [1.9, 1.9], 1),
        ({"idle_time": 2.0}, [1.9, 2.0], 2),
        ({"idle_time": 100.0, "max_age": 10.0}, [5.0, 4.9], 1),
        ({"idle_time": 100.0, "max_age": 10.0}, [5.0, 5.0], 2),
        ({"max_transactions": 3}, [0.0, 0.0], 1),
        ({"max_transactions": 2}, [0.0, 0.0], 2),
    ],
)
def test_limits_force_a_new_connection(
    pki: Pki, limits: dict[str, float], steps: list[float], connections: int
) -> None:
    async def run() -> None:
        peer = RawPeer(serve)
        clock = FakeClock(1000.0)
        cache = ConnectionCache(clock=clock, **limits)  # type: ignore[arg-type]
        async with peer.serving("127.0.55.65") as port:
            to = target(port, "127.0.55.65", PLAINTEXT)
            outcomes = [await send(to, pki.client(), cache=cache)]
            for step in steps:
                clock.advance(step)
                outcomes.append(await send(to, pki.client(), cache=cache))
            await cache.close()
        assert all(delivered(outcome) for outcome in outcomes)
        assert peer.connections == connections
        assert len(peer.data) == 3
        # Every connection ends with QUIT: at the limit, when found expired, or at close().
        assert peer.commands().count("QUIT") == connections

    asyncio.run(run())


def test_used_up_session_quits_right_after_its_last_transaction(pki: Pki) -> None:
    async def run() -> None:
        peer = RawPeer(serve)
        cache = ConnectionCache(max_transactions=2)
        async with peer.serving("127.0.55.65") as port:
            to = target(port, "127.0.55.65", PLAINTEXT)
            for _ in range(2):
                assert delivered(await send(to, pki.client(), cache=cache))
            assert peer.commands()[-1] == "QUIT"
            assert cache.idle == 0
            await cache.close()
        assert peer.connections == 1

    asyncio.run(run())


def test_idle_sessions_are_closed_in_the_background(pki: Pki) -> None:
    async def run() -> None:
        quit_seen = asyncio.Event()

        async def script(conn: RawConnection) -> None:
            await serve(conn)
            if "QUIT" in conn.peer.commands():
                quit_seen.set()

        peer = RawPeer(script)
        cache = ConnectionCache(idle_time=0.05)  # the real clock: the loop's timer must fire
        async with peer.serving("127.0.55.66") as port:
            outcome = await send(target(port, "127.0.55.66", PLAINTEXT), pki.client(), cache=cache)
            assert cache.idle == 1
            await asyncio.wait_for(quit_seen.wait(), 10)
            assert cache.idle == 0
            await cache.close()
        assert delivered(outcome)
        assert peer.commands() == ["EHLO", "MAIL", "RCPT", "DATA", "QUIT"]

    asyncio.run(run())


def test_dane_sessions_are_never_cached(pki: Pki) -> None:
    async def run() -> None:
        handler = Handler()
        connections: list[SMTP] = []
        checked: list[bytes] = []

        def leaf_check(der: bytes) -> bool:
            checked.append(der)
            return True

        cache = ConnectionCache()
        tls = TlsRequirement("required", "dane", leaf_check=leaf_check, reason="dane")
        stranger = trustme.CA().issue_cert("mx.test")
        async with smtpd(
            handler, "127.0.55.71", starttls=pki.server(stranger), connections=connections
        ) as port:
            to = target(port, "127.0.55.71", tls)
            outcomes = [await send(to, pki.client(), cache=cache) for _ in range(2)]
            assert cache.idle == 0
            await cache.close()
        assert all(delivered(outcome) for outcome in outcomes)
        assert len(connections) == 2
        assert len(checked) == 2
        assert handler.quits == 2

    asyncio.run(run())


def test_close_quits_idle_sessions_and_the_cache_stays_usable(pki: Pki) -> None:
    async def run() -> None:
        peer = RawPeer(serve)
        cache = ConnectionCache()
        async with peer.serving("127.0.55.72") as port:
            to = target(port, "127.0.55.72", PLAINTEXT)
            assert delivered(await send(to, pki.client(), cache=cache))
            assert "QUIT" not in peer.commands()
            await cache.close()
            assert peer.commands()[-1] == "QUIT"
            assert cache.idle == 0
            assert delivered(await send(to, pki.client(), cache=cache))
            assert cache.idle == 1
            await cache.close()
        assert peer.connections == 2
        assert peer.commands().count("QUIT") == 2

    asyncio.run(run())


@pytest.mark.parametrize(("per_key", "total", "idle"), [(20, 100, 2), (1, 100, 1), (20, 1, 1)])
def test_concurrent_deliveries_never_share_a_session(
    pki: Pki, per_key: int, total: int, idle: int
) -> None:
    async def run() -> None:
        both_in_data = asyncio.Event()
        in_data = 0

        async def wait_for_both(conn: RawConnection) -> None:
            nonlocal in_data
            await conn.send("220 raw.test ESMTP")
            while (line := await conn.line()) is not None:
                if line == "DATA":
                    in_data += 1
                    if in_data == 2:
                        both_in_data.set()
                    await both_in_data.wait()  # both transactions are in flight at once
                if not await answer(conn, line):
                    return

        peer = RawPeer(wait_for_both)
        cache = ConnectionCache(per_key=per_key, total=total)
        async with peer.serving("127.0.55.73") as port:
            to = target(port, "127.0.55.73", PLAINTEXT)
            outcomes = list(
                await asyncio.gather(
                    send(to, pki.client(), message=message(1), cache=cache),
                    send(to, pki.client(), message=message(2), cache=cache),
                )
            )
            assert peer.connections == 2
            assert cache.idle == idle
            outcomes.append(await send(to, pki.client(), message=message(3), cache=cache))
            await cache.close()
        assert all(delivered(outcome) for outcome in outcomes)
        assert peer.connections == 2
        assert sorted(peer.data) == sorted(data_payload(message(n)) for n in (1, 2, 3))
        assert peer.commands().count("QUIT") == 2

    asyncio.run(run())


@pytest.mark.parametrize(
    "limit", ["idle_time", "max_age", "max_transactions", "per_key", "total", "quit_timeout"]
)
def test_connection_cache_refuses_limits_that_are_not_positive(limit: str) -> None:
    with pytest.raises(ValueError, match=f"connection cache {limit} must be positive"):
        ConnectionCache(**{limit: 0})  # type: ignore[arg-type]


def test_take_and_give_on_their_own() -> None:
    async def run() -> None:
        clock = FakeClock(1000.0)
        cache = ConnectionCache(clock=clock)
        assert cache.now() == 1000.0
        key = session_key(Target("mx.test", "127.0.55.90", 25, PLAINTEXT), "client.test", None)
        assert key is not None
        assert cache.take(key) is None
        never_connected = CachedSession(aiosmtplib.SMTP(), None, None, None, born=cache.now())
        assert not cache.give(key, never_connected)  # dead: the caller closes it
        assert cache.idle == 0
        assert cache.take(key) is None

    asyncio.run(run())


def test_dane_targets_have_no_session_key() -> None:
    dane = TlsRequirement("required", "dane", leaf_check=lambda der: True, reason="dane")
    assert session_key(Target("mx.test", "127.0.55.90", 25, dane), "client.test", None) is None

"""Tests for sendgate.server.floods: a flood's connection lines become one line per address."""

from __future__ import annotations

import io

from sendgate.log import EventLog
from sendgate.server.floods import FloodLog


def _log() -> tuple[EventLog, io.StringIO]:
    stream = io.StringIO()
    return EventLog(stream, clock=lambda: 0.0), stream


def _lines(stream: io.StringIO) -> list[str]:
    return [line.split(" ", 2)[2] for line in stream.getvalue().splitlines()]


def test_the_first_connections_of_an_address_are_logged_in_full() -> None:
    log, stream = _log()
    floods = FloodLog(log, burst=2, interval=10)
    for number in (1, 2):
        floods.connection("192.0.2.1", f"c{number}").event("connect", tls="starttls")
    floods.flush()
    assert _lines(stream) == [
        "event=connect conn=c1 client=192.0.2.1 tls=starttls",
        "event=connect conn=c2 client=192.0.2.1 tls=starttls",
    ]


def test_later_connections_are_counted_and_summed_up_once_per_interval() -> None:
    log, stream = _log()
    floods = FloodLog(log, burst=2, interval=10)
    for number in range(1, 6):
        conn = floods.connection("192.0.2.1", f"c{number}")
        conn.event("connect", tls="implicit")
        conn.event("tls_failed", "warning", error="SSLError")
        conn.event("disconnect", errors=0)
    assert len(_lines(stream)) == 6  # two connections in full, nothing of the other three
    floods.flush()
    assert _lines(stream)[6:] == [
        "event=flood client=192.0.2.1 interval=10s connections=5 logged=2 connect=3 "
        "disconnect=3 tls_failed=3"
    ]
    floods.flush()
    assert len(_lines(stream)) == 7  # nothing held back: no line
    conn = floods.connection("192.0.2.1", "c6")  # a new interval: in full again
    conn.event("connect", tls="implicit")
    assert _lines(stream)[-1] == "event=connect conn=c6 client=192.0.2.1 tls=implicit"


def test_addresses_are_counted_apart() -> None:
    log, stream = _log()
    floods = FloodLog(log, burst=1, interval=10)
    floods.connection("192.0.2.1", "c1").event("connect")
    floods.connection("192.0.2.1", "c2").event("connect")
    floods.connection("198.51.100.7", "c3").event("connect")
    floods.flush()
    assert _lines(stream) == [
        "event=connect conn=c1 client=192.0.2.1",
        "event=connect conn=c3 client=198.51.100.7",
        "event=flood client=192.0.2.1 interval=10s connections=2 logged=1 connect=1",
    ]


def test_a_held_back_connection_that_outlives_the_interval_counts_in_the_next() -> None:
    log, stream = _log()
    floods = FloodLog(log, burst=0, interval=10)
    conn = floods.connection("192.0.2.1", "c1")
    conn.event("connect")
    floods.flush()
    conn.event("timeout", "warning", kind="idle")
    conn.event("disconnect", errors=0)
    floods.flush()
    assert _lines(stream) == [
        "event=flood client=192.0.2.1 interval=10s connections=1 logged=0 connect=1",
        "event=flood client=192.0.2.1 interval=10s connections=0 logged=0 disconnect=1 timeout=1",
    ]


def test_ipv6_clients_are_counted_per_64() -> None:
    log, stream = _log()
    floods = FloodLog(log, burst=1, interval=10)
    floods.connection("2001:db8:1:2::1", "c1").event("connect")
    floods.connection("2001:db8:1:2:ffff::9", "c2").event("connect")  # same /64: held back
    floods.connection("2001:db8:1:3::1", "c3").event("connect")  # another /64
    floods.flush()
    assert _lines(stream) == [
        "event=connect conn=c1 client=2001:db8:1:2::1",
        "event=connect conn=c3 client=2001:db8:1:3::1",
        "event=flood client=2001:db8:1:2::/64 interval=10s connections=2 logged=1 connect=1",
    ]

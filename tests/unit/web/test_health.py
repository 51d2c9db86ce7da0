"""/healthz's checks on real sockets, heartbeat files and directories."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from sendgate.web.health import STALE, HealthSources, Heartbeat, check

NOW = 1_800_000_000.0


@pytest.fixture
def listening() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock


def sources(
    tmp_path: Path, *listeners: socket.socket, runners: tuple[str, ...] = ("delivery",)
) -> HealthSources:
    spool = tmp_path / "spool"
    spool.mkdir(exist_ok=True)
    return HealthSources(list(listeners), spool, tmp_path, ["acceptor-0"], runners)


def beat(tmp_path: Path, name: str, age: float) -> None:
    Heartbeat(tmp_path, name).beat()
    os.utime(tmp_path / name, (NOW - age, NOW - age))


def test_all_well(tmp_path: Path, listening: socket.socket) -> None:
    beat(tmp_path, "acceptor-0", 1)
    beat(tmp_path, "delivery", STALE - 1)
    assert check(sources(tmp_path, listening), clock=lambda: NOW) == {
        "listeners": "ok",
        "spool": "ok",
        "delivery": "ok",
    }


def test_a_stale_or_missing_heartbeat_names_the_process(
    tmp_path: Path, listening: socket.socket
) -> None:
    beat(tmp_path, "acceptor-0", STALE + 5)
    verdicts = check(sources(tmp_path, listening), clock=lambda: NOW)
    assert verdicts["listeners"] == f"acceptor-0: no heartbeat for {STALE + 5:.0f} s"
    assert verdicts["delivery"] == "delivery: no heartbeat yet"
    # Delivery held on purpose: no runner heartbeat is asked for.
    assert check(sources(tmp_path, listening, runners=()), clock=lambda: NOW)["delivery"] == "ok"


def test_every_delivery_runner_is_checked(tmp_path: Path, listening: socket.socket) -> None:
    beat(tmp_path, "acceptor-0", 1)
    beat(tmp_path, "delivery", 1)
    both = sources(tmp_path, listening, runners=("delivery", "delivery-1"))
    assert check(both, clock=lambda: NOW)["delivery"] == "delivery-1: no heartbeat yet"
    beat(tmp_path, "delivery-1", 2)
    assert check(both, clock=lambda: NOW)["delivery"] == "ok"


def test_a_socket_that_no_longer_listens(tmp_path: Path) -> None:
    beat(tmp_path, "acceptor-0", 0)
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        assert check(sources(tmp_path, bound), clock=lambda: NOW)["listeners"] == (
            "a socket no longer listens"
        )
    closed = socket.create_server(("127.0.0.1", 0))
    closed.close()
    assert check(sources(tmp_path, closed), clock=lambda: NOW)["listeners"].startswith(
        "a listening socket is gone: "
    )


def test_a_spool_that_is_gone(tmp_path: Path, listening: socket.socket) -> None:
    gone = sources(tmp_path, listening)
    gone.spool.rmdir()
    assert check(gone, clock=lambda: NOW)["spool"] == f"{gone.spool} is not writable"

"""Tests for the test support itself: the fake clock, the loopback server life cycle, Forked."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading

import pytest
from tests.support.clock import START, FakeClock
from tests.support.forked import Forked
from tests.support.loopback import AsyncioServer, ThreadedServer

from sendgate.log import EventLog

# --- FakeClock -------------------------------------------------------------------------------


def test_clock_moves_only_when_told() -> None:
    clock = FakeClock()
    assert clock() == clock() == clock.now == START
    assert clock.advance(1.5) == START + 1.5
    assert clock() == START + 1.5
    assert clock.set(START + 10) == START + 10
    assert clock() == START + 10


def test_clock_refuses_to_go_back_unless_told_it_may() -> None:
    clock = FakeClock(100.0)
    with pytest.raises(ValueError, match="monotonic"):
        clock.set(99.0)
    with pytest.raises(ValueError, match="monotonic"):
        clock.advance(-1)
    assert clock() == 100.0
    loose = FakeClock(100.0, monotonic=False)
    loose.set(50.0)
    assert loose() == 50.0


def test_clock_step_moves_after_each_reading() -> None:
    clock = FakeClock(10.0, step=2.0)
    assert [clock(), clock(), clock()] == [10.0, 12.0, 14.0]
    assert clock.now == 16.0  # reading `now` does not step
    assert clock.now == 16.0


def test_a_monotonic_clock_cannot_step_backwards() -> None:
    with pytest.raises(ValueError, match="backwards"):
        FakeClock(step=-1.0)


# --- ThreadedServer and AsyncioServer -------------------------------------------------------


class Probe(ThreadedServer):
    """A server that listens on a free loopback port and does what the test scripts."""

    def __init__(self, *, fail_bind: bool = False, fail_before_ready: bool = False) -> None:
        super().__init__("probe")
        self.fail_bind = fail_bind
        self.fail_before_ready = fail_before_ready
        self.sock: socket.socket | None = None
        self.released = 0
        self.go_wrong = threading.Event()  # set: _serve raises instead of returning
        self._wake = threading.Event()

    def _bind(self) -> None:
        if self.fail_bind:
            raise OSError("address in use")
        self.sock = socket.create_server(("127.0.0.1", 0))

    def _release(self) -> None:
        self.released += 1
        if self.sock is not None:
            self.sock.close()

    def _serve(self) -> None:
        if self.fail_before_ready:
            raise ValueError("broken before serving")
        self._serving()
        self._wake.wait()
        if self.go_wrong.is_set():
            raise ValueError("broken while serving")

    def _interrupt(self) -> None:
        self._wake.set()


def test_start_returns_once_serving_and_stop_joins_and_releases() -> None:
    with Probe() as probe:
        assert probe.sock is not None
        with socket.create_connection(probe.sock.getsockname(), timeout=5):
            pass  # the listener is up: the backlog takes the connection
        assert any(thread.name == "probe" for thread in threading.enumerate())
    assert probe.released == 1
    assert not any(thread.name == "probe" for thread in threading.enumerate())


def test_an_error_in_the_serving_thread_is_raised_by_stop() -> None:
    probe = Probe()
    probe.start()
    probe.go_wrong.set()
    with pytest.raises(RuntimeError, match="probe failed") as raised:
        probe.stop()
    assert isinstance(raised.value.__cause__, ValueError)
    assert probe.released == 1


def test_an_error_before_serving_fails_start() -> None:
    probe = Probe(fail_before_ready=True)
    with pytest.raises(RuntimeError, match="probe failed") as raised:
        probe.start()
    assert str(raised.value.__cause__) == "broken before serving"
    assert probe.released == 1


def test_a_bind_error_fails_start_and_releases() -> None:
    probe = Probe(fail_bind=True)
    with pytest.raises(OSError, match="address in use"):
        probe.start()
    assert probe.released == 1


def test_a_server_cannot_be_started_twice() -> None:
    with Probe() as probe, pytest.raises(RuntimeError, match="already running"):
        probe.start()


class LoopProbe(AsyncioServer):
    """An asyncio server on a free loopback port answering every connection with b"hi"."""

    def __init__(self) -> None:
        super().__init__("loop-probe")
        self.sock: socket.socket | None = None

    def _bind(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))

    def _release(self) -> None:
        if self.sock is not None:
            self.sock.close()

    async def _run_async(self) -> None:
        async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"hi")
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(greet, sock=self.sock)
        self._serving()
        await self._stopped()
        server.close()
        await server.wait_closed()


def test_an_asyncio_server_serves_until_stopped() -> None:
    with LoopProbe() as probe:
        assert probe.sock is not None
        with socket.create_connection(probe.sock.getsockname(), timeout=5) as client:
            assert client.recv(16) == b"hi"
    assert not any(thread.name == "loop-probe" for thread in threading.enumerate())


# --- Forked ----------------------------------------------------------------------------------


def test_a_forked_child_logs_to_the_test_and_exits_with_its_code() -> None:
    def main(log: EventLog) -> int:
        log.event("hello", pid=os.getpid())
        return 3

    with Forked(main) as child:
        line = child.wait_for("event=hello")
        assert child.wait() == 3
    assert line.endswith(f"pid={child.pid}")  # a child of its own, not this process


def test_what_escapes_a_forked_child_is_logged_and_exits_70() -> None:
    def main(log: EventLog) -> int:
        raise RuntimeError("broken child")

    with Forked(main) as child:
        assert child.wait() == 70
    assert child.matching("event=child_error .*RuntimeError: broken child")


def test_leaving_ends_a_forked_child_that_still_runs() -> None:
    def main(log: EventLog) -> int:
        grandchild = os.fork()
        if grandchild == 0:
            signal.pause()
            os._exit(0)
        log.event("forked")
        signal.pause()
        return 0

    with Forked(main) as child:
        child.wait_for("event=forked")
        with pytest.raises(AssertionError, match="still running"):
            child.wait(timeout=0.2)  # the log stays open while anything holds it
    assert child.code == -signal.SIGKILL

"""Tests for sendgate.server.supervisor: forking, replacing dead children, signals, exit codes.

Each test forks a process that runs the Supervisor (so that signals sent to it reach the one
thread that waits for its children) over tiny child functions. Children report over pipes; the
last child started is the one that signals the supervisor, once every other child is ready
(the supervisor takes signals only between forks, so by then it knows every child). Every
process involved has an alarm as a watchdog, so a broken supervisor fails the test instead of
hanging it.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sendgate.log import EventLog
from sendgate.server import supervisor
from sendgate.server.supervisor import Supervisor, bind

WATCHDOG = 30  # seconds before a test's processes are killed by SIGALRM


class Pipe:
    """A pipe the children write short records to (one os.write each, so never interleaved)."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        self._open = {self.read_fd, self.write_fd}

    def put(self, record: str) -> None:
        os.write(self.write_fd, record.encode() + b"\n")

    def get(self, count: int) -> list[str]:
        """`count` records, waiting for them (children only)."""
        records: list[str] = []
        buf = b""
        while len(records) < count:
            buf += os.read(self.read_fd, 1)
            if buf.endswith(b"\n"):
                records.append(buf[:-1].decode())
                buf = b""
        return records

    def close(self) -> None:
        while self._open:
            os.close(self._open.pop())

    def drain(self) -> list[str]:
        """What was written, once every writer is gone (the supervisor has returned)."""
        os.close(self.write_fd)
        self._open.discard(self.write_fd)
        chunks = []
        while chunk := os.read(self.read_fd, 65536):
            chunks.append(chunk)
        self.close()
        return b"".join(chunks).decode().splitlines()


@pytest.fixture
def pipes() -> Iterator[Callable[[], Pipe]]:
    made: list[Pipe] = []

    def make() -> Pipe:
        made.append(Pipe())
        return made[-1]

    yield make
    for pipe in made:
        pipe.close()


@dataclass(frozen=True)
class Outcome:
    code: int  # the supervisor's exit code
    pid: int  # the supervisor's pid (its children's parent)
    log: str
    exits: list[int]  # indexes given to on_worker_exit


def run_supervised(
    tmp_path: Path,
    workers: int,
    child: Callable[[int], int],
    *,
    runners: int = 0,
    prepare: Callable[[], None] | None = None,
    resend_after: float = supervisor.RESEND_EVERY,
    resend_every: float = supervisor.RESEND_EVERY,
) -> Outcome:
    """Run a Supervisor in a forked process; `prepare` runs there first."""
    report = tmp_path / "supervisor.json"
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            signal.alarm(WATCHDOG)
            if prepare is not None:
                prepare()
            supervisor._RESTART_BACKOFF = 0.0  # only in this forked process
            stream = io.StringIO()
            exits: list[int] = []
            code = Supervisor(
                workers,
                child,
                EventLog(stream),
                exits.append,
                runners=runners,
                resend_after=resend_after,
                resend_every=resend_every,
            ).run()
            report.write_text(json.dumps({"log": stream.getvalue(), "exits": exits}))
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code >= 0, f"the supervisor died of signal {-code}"
    data = json.loads(report.read_text())
    return Outcome(code, pid, data["log"], data["exits"])


def wait_for_signals(*wanted: signal.Signals) -> Callable[[], signal.Signals]:
    """Block `wanted` now (before anyone may send one) and return a waiter for them."""
    signal.alarm(WATCHDOG)
    signal.pthread_sigmask(signal.SIG_BLOCK, set(wanted))
    return lambda: signal.Signals(signal.sigwait(set(wanted)))


@pytest.mark.parametrize("stop_with", [signal.SIGTERM, signal.SIGINT])
def test_children_are_stopped_with_sigterm_and_the_worst_code_wins(
    tmp_path: Path, pipes: Callable[[], Pipe], stop_with: signal.Signals
) -> None:
    ready, done = pipes(), pipes()
    count = 3

    def child(index: int) -> int:
        received = wait_for_signals(signal.SIGTERM)
        if index < count - 1:
            ready.put(str(index))
        else:
            ready.get(count - 1)
            os.kill(os.getppid(), stop_with)
        done.put(f"{index}:{received().name}:{os.getppid()}")
        return [0, 3, 1][index]

    outcome = run_supervised(tmp_path, 2, child, runners=1)
    assert outcome.code == 3
    assert sorted(done.drain()) == [f"{i}:SIGTERM:{outcome.pid}" for i in range(count)]
    assert sorted(outcome.exits) == [0, 1, 2]
    pids = r"pids=\d+,\d+ runner_pids=\d+"
    assert re.search(rf"event=workers_started workers=2 {pids}\n", outcome.log)
    assert outcome.log.endswith("event=stopped code=3\n")
    assert "worker_died" not in outcome.log


def test_a_stop_during_start_up_forks_no_more_children(
    tmp_path: Path, pipes: Callable[[], Pipe]
) -> None:
    done = pipes()

    def stop_after_the_first_fork() -> None:  # in the supervisor's process only
        real_fork = os.fork
        forks: list[int] = []

        def fork_then_stop() -> int:
            pid = real_fork()
            if pid:
                forks.append(pid)
                if len(forks) == 1:
                    # Delivered when the supervisor unblocks signals after this first fork.
                    os.kill(os.getpid(), signal.SIGTERM)
            return pid

        os.fork = fork_then_stop

    def child(index: int) -> int:
        received = wait_for_signals(signal.SIGTERM)
        done.put(f"{index}:{received().name}")
        return 0

    outcome = run_supervised(tmp_path, 2, child, runners=1, prepare=stop_after_the_first_fork)
    # Only the first child was forked (the others, forked after the stop, would never have
    # been told and would hang the supervisor); it was stopped, whether or not it had set up.
    assert outcome.exits == [0]
    assert done.drain() in ([], ["0:SIGTERM"])
    assert re.search(r"event=workers_started workers=2 pids=\d+ runner_pids=\"\"\n", outcome.log)


def test_a_child_that_missed_the_sigterm_gets_it_again(
    tmp_path: Path, pipes: Callable[[], Pipe]
) -> None:
    done = pipes()

    def child(index: int) -> int:
        received = wait_for_signals(signal.SIGTERM)
        os.kill(os.getppid(), signal.SIGTERM)
        first = received()  # as if lost: the child goes on
        done.put(f"missed {first.name}")
        done.put(f"stopped by {received().name}")
        return 0

    outcome = run_supervised(tmp_path, 1, child, resend_after=0.05, resend_every=0.05)
    assert outcome.code == 0
    assert done.drain() == ["missed SIGTERM", "stopped by SIGTERM"]
    assert re.search(r"level=warning event=stop_waiting pids=\d+\n", outcome.log)
    assert outcome.log.endswith("event=stopped code=0\n")


def test_sighup_is_forwarded_and_a_child_that_raises_exits_70(
    tmp_path: Path, pipes: Callable[[], Pipe]
) -> None:
    ready, done = pipes(), pipes()

    def child(index: int) -> int:
        received = wait_for_signals(signal.SIGHUP, signal.SIGTERM)
        if index == 0:
            ready.put("0")
        else:
            ready.get(1)
            os.kill(os.getppid(), signal.SIGHUP)
        first = received()
        done.put(f"{index}:{first.name}")
        if index == 0:
            ready.put("hup")
        else:
            ready.get(1)
            os.kill(os.getppid(), signal.SIGTERM)
        done.put(f"{index}:{received().name}")
        if index == 1:
            raise RuntimeError("a worker bug")
        return 0

    outcome = run_supervised(tmp_path, 2, child)
    assert outcome.code == 70  # EX_SOFTWARE for the child that raised
    assert sorted(done.drain()) == ["0:SIGHUP", "0:SIGTERM", "1:SIGHUP", "1:SIGTERM"]
    assert outcome.log.endswith("event=stopped code=70\n")


def test_a_child_that_dies_is_replaced(tmp_path: Path, pipes: Callable[[], Pipe]) -> None:
    marker = tmp_path / "first-life-over"
    lives = pipes()

    def child(index: int) -> int:
        received = wait_for_signals(signal.SIGTERM)
        if not marker.exists():
            marker.touch()
            lives.put("first")
            return 9  # dies unasked
        lives.put("second")
        os.kill(os.getppid(), signal.SIGTERM)
        received()
        return 0

    outcome = run_supervised(tmp_path, 1, child)
    assert outcome.code == 0
    assert lives.drain() == ["first", "second"]
    assert outcome.exits == [0, 0]
    assert re.search(r"level=error event=worker_died worker=0 pid=\d+ code=9\n", outcome.log)
    assert outcome.log.endswith("event=stopped code=0\n")


def signal_set(pid: int, field: str) -> set[int]:
    """The signals in a /proc status mask (SigBlk: blocked, SigCgt: caught by a handler)."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+([0-9a-f]+)$", status, re.M)
    assert match is not None
    bits = int(match.group(1), 16)
    return {number for number in range(1, 65) if bits >> (number - 1) & 1}


def test_signals_are_waited_for_never_caught_by_a_handler(
    tmp_path: Path, pipes: Callable[[], Pipe]
) -> None:
    # A handler's signal that lands just before the supervisor blocks in wait() would sit
    # there until some child exits: a reload or stop lost. Blocked and waited for, none is.
    seen = pipes()
    marker = tmp_path / "first-life-over"
    wanted = {signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}

    def prepare() -> None:  # as if started by a parent that ignores SIGCHLD
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)

    def child(index: int) -> int:
        received = wait_for_signals(signal.SIGTERM)
        caught = signal_set(os.getppid(), "SigCgt") & wanted
        blocked = signal_set(os.getpid(), "SigBlk") & (wanted - {signal.SIGTERM})
        seen.put(f"supervisor catches {sorted(caught)}, child blocks {sorted(blocked)}")
        if not marker.exists():
            marker.touch()
            return 5  # seen dying (not reaped unseen), and replaced
        os.kill(os.getppid(), signal.SIGTERM)
        received()
        return 0

    outcome = run_supervised(tmp_path, 1, child, prepare=prepare)
    assert outcome.code == 0
    assert seen.drain() == ["supervisor catches [], child blocks []"] * 2
    assert "worker_died worker=0" in outcome.log


def test_bind_listens_on_a_free_port() -> None:
    sock = bind("127.0.0.1", 0)
    with sock:
        host, port = sock.getsockname()
        assert host == "127.0.0.1"
        assert port > 0
        assert not sock.getblocking()
        with socket.create_connection((host, port), 5):
            pass


def test_bind_ipv6_is_v6_only() -> None:
    with bind("::1", 0) as sock:
        assert sock.family == socket.AF_INET6
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1


def test_bind_a_busy_port_raises() -> None:
    with bind("127.0.0.1", 0) as taken, pytest.raises(OSError, match="in use"):
        bind("127.0.0.1", taken.getsockname()[1])

"""The serving process tree: bind the listening sockets, fork N acceptor workers and the runners.

Sockets, the shared connection counters and the TLS context are created before the fork, so
every worker accepts from the same sockets and (until a reload) shares TLS session-ticket keys.
Runners (the delivery runner) are children like the workers but accept nothing. The supervisor
forwards SIGTERM/SIGINT (graceful stop) and SIGHUP (TLS reload) to all children, replaces a
child that dies unexpectedly, and exits once every child has stopped. A child still running
`resend_after` seconds into a stop (the shutdown grace, and then some) gets the SIGTERM again,
every few seconds: stopping is idempotent in every child, and a child that somehow missed the
first one must not hold the whole tree up. Under systemd (Type=notify) it says READY=1 once the
children run, RELOADING=1 and READY=1 around a SIGHUP, and STOPPING=1 when told to stop.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable

from sendgate.log import EventLog
from sendgate.server.notify import Notify, reloading

# Forwarded to the children (SIGTERM, SIGINT, SIGHUP) or telling of one's exit (SIGCHLD).
_WAITED = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD}
_RESTART_BACKOFF = 1.0  # seconds between replacing crashed workers, to avoid a fork storm
RESEND_EVERY = 5.0  # seconds between repeats of SIGTERM to the children still running


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket; IPv6 literals get a v6-only socket."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class Supervisor:
    """Forks `workers` + `runners` processes running `run_worker(index)` and supervises them.

    Indexes below `workers` are acceptors; the rest are runners (the delivery runner).
    """

    def __init__(
        self,
        workers: int,
        run_worker: Callable[[int], int],
        log: EventLog,
        on_worker_exit: Callable[[int], None],
        *,
        runners: int = 0,
        resend_after: float = RESEND_EVERY,
        resend_every: float = RESEND_EVERY,
        notify: Notify = lambda _state: None,
    ) -> None:
        self._workers = workers
        self._count = workers + runners
        self._run_worker = run_worker
        self._log = log
        self._on_worker_exit = on_worker_exit
        self._children: dict[int, int] = {}  # pid -> worker index
        self._stopping = False
        self._resend_after = resend_after
        self._resend_every = resend_every
        self._notify = notify  # systemd's sd_notify, or nothing
        self._worst = 0  # the worst exit code of a child told to stop
        self._restarts: dict[int, float] = {}  # index -> when to replace the dead child
        self._resend_at = 0.0  # when to repeat SIGTERM, once stopping

    def _spawn(self, index: int) -> None:
        pid = os.fork()
        if pid == 0:
            code = 70  # EX_SOFTWARE unless the worker returns normally
            try:
                # `run` left every disposition at its default: only the mask is the parent's.
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _WAITED)
                code = self._run_worker(index)
            finally:
                os._exit(code)
        self._children[pid] = index

    def _forward(self, signum: int) -> None:
        if signum == signal.SIGHUP and not self._stopping:
            reloading(self._notify)
            self._signal_children(signum)
            self._notify("READY=1")
            return
        if signum in (signal.SIGTERM, signal.SIGINT) and not self._stopping:
            self._notify("STOPPING=1")
            self._stopping = True
            self._resend_at = time.monotonic() + self._resend_after
            self._restarts.clear()
        self._signal_children(signal.SIGTERM if signum == signal.SIGINT else signum)

    def _signal_children(self, signum: int) -> None:
        for pid in list(self._children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _reap(self) -> None:
        """Every child that has exited (one SIGCHLD may stand for several)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid not in self._children:
                continue
            index = self._children.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            self._on_worker_exit(index)
            if self._stopping:
                self._worst = max(self._worst, code if code > 0 else 0)
                continue
            self._log.event("worker_died", "error", worker=index, pid=pid, code=code)
            self._restarts[index] = time.monotonic() + _RESTART_BACKOFF

    def _take_signal(self, timeout: float | None) -> None:
        """Wait for one signal (at most `timeout` seconds; None: as long as it takes)."""
        if timeout is None:
            signum: int | None = signal.sigwaitinfo(_WAITED).si_signo
        else:
            info = signal.sigtimedwait(_WAITED, max(timeout, 0.0))
            signum = None if info is None else info.si_signo
        if signum == signal.SIGCHLD:
            self._reap()
        elif signum is not None:
            self._forward(signum)

    def _next_deadline(self) -> float | None:
        deadlines = list(self._restarts.values())
        if self._stopping:
            deadlines.append(self._resend_at)
        return min(deadlines, default=None)

    def _on_time(self) -> None:
        """What falls due: repeating SIGTERM in a long stop, replacing a child that died."""
        now = time.monotonic()
        if self._stopping and self._children and now >= self._resend_at:
            self._log.event(
                "stop_waiting", "warning", pids=",".join(str(pid) for pid in self._children)
            )
            self._signal_children(signal.SIGTERM)
            self._resend_at = now + self._resend_every
        for index, due in list(self._restarts.items()):
            if now >= due:
                del self._restarts[index]
                self._spawn(index)

    def run(self) -> int:
        # Signals are blocked for the rest of this process's life and waited for, never
        # caught: a handler's signal landing just before a blocking wait() would sit there
        # until some child happened to exit. Default dispositions, so that an inherited
        # "ignore" SIGCHLD cannot make the kernel reap the children unseen.
        signal.pthread_sigmask(signal.SIG_BLOCK, _WAITED)
        for sig in _WAITED:
            signal.signal(sig, signal.SIG_DFL)
        for index in range(self._count):
            # A stop during start-up: a child forked after it would never be told.
            self._take_signal(0)
            if self._stopping:
                break
            self._spawn(index)
        self._log.event(
            "workers_started",
            workers=self._workers,
            pids=",".join(str(p) for p, i in self._children.items() if i < self._workers),
            runner_pids=",".join(str(p) for p, i in self._children.items() if i >= self._workers),
        )
        self._notify(f"READY=1\nSTATUS=serving, {self._workers} acceptors\nMAINPID={os.getpid()}")
        while self._children or self._restarts:
            deadline = self._next_deadline()
            self._take_signal(None if deadline is None else deadline - time.monotonic())
            self._on_time()
        self._log.event("stopped", code=self._worst)
        return self._worst

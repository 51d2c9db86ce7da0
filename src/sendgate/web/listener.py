"""What `[http] listen` adds to `serve`: the socket, the metrics, the heartbeats, the process.

`HttpListener` is made in the supervisor before it forks (the metrics directory is prepared
once, and every child inherits the log's observer); `run` is the HTTP child's main.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from sendgate.config.schema import Config
from sendgate.log import EventLog
from sendgate.store.backends import Backends, local_mail_path
from sendgate.web.app import Sources, run_http
from sendgate.web.clientconfig import Offer
from sendgate.web.health import HealthSources, Heartbeat
from sendgate.web.metrics import Metrics, StateCollector, prepare_directory


def acceptor_beat(index: int) -> str:
    return f"acceptor-{index}"


def runner_beat(index: int) -> str:
    return "delivery" if index == 0 else f"delivery-{index}"


class HttpListener:
    """The HTTP listener of one `serve`."""

    def __init__(self, cfg: Config, log: EventLog, sock: socket.socket) -> None:
        """`sock`: the listening socket, bound by `serve` (before it gave root up)."""
        self._cfg = cfg
        self.metrics_dir = cfg.data_dir / "metrics"
        self.beats = cfg.data_dir / "run"
        self.sock = sock
        prepare_directory(self.metrics_dir)
        if self.beats.is_dir():
            shutil.rmtree(self.beats)  # an earlier run's heartbeats would pass for this one's
        self.beats.mkdir(mode=0o700)
        self.metrics = Metrics()
        log.observer = self.metrics.observe

    def heartbeat(self, name: str) -> Callable[[], Coroutine[Any, Any, None]]:
        """The chore that keeps process `name`'s heartbeat fresh."""
        return Heartbeat(self.beats, name).run

    def run(
        self,
        log: EventLog,
        backends: Backends,
        listeners: Sequence[tuple[socket.socket, int, bool]],
        acceptors: int,
        runners: int,
    ) -> int:
        """The HTTP child's main. `listeners`: (socket, bound port, implicit TLS) of each;
        `acceptors`, `runners`: how many of each process beat."""
        cfg = self._cfg
        stores = backends.open("admin")
        try:
            imap = cfg.http.imap
            offer = Offer(
                cfg.hostname,
                submissions_port=next((p for _, p, tls in listeners if tls), None),
                submission_port=next((p for _, p, tls in listeners if not tls), None),
                imap=(imap.host, imap.port) if imap is not None else None,
            )
            health = HealthSources(
                listeners=[sock for sock, _, _ in listeners],
                spool=local_mail_path(cfg),
                heartbeats=self.beats,
                acceptors=[acceptor_beat(i) for i in range(acceptors)],
                runners=[runner_beat(i) for i in range(runners)],
            )
            state = StateCollector(stores.queue, stores.limits, stores.users)
            return run_http(self.sock, Sources(offer, self.metrics_dir, state, health), log)
        finally:
            stores.close()

"""Prometheus metrics: counted from the events every process logs, read from the stores at a scrape.

Every process of `serve` (acceptors, the delivery runner) gives each event it logs to
`Metrics.observe` as well, whatever the log level, so a metric and the log lines it counts
cannot disagree. With several processes, prometheus-client's multiprocess mode keeps each
process's values in its own file under the metrics directory, and the HTTP process adds them up
at each scrape (`exposition`). Gauges of state (queue size and age, bans, held accounts) are
read from the stores at the scrape instead of being counted.

`prepare_directory` sets the directory up (and prometheus-client's multiprocess mode) in the
process that forks the others, before any metric is made.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from sendgate.fsutil import fsync_dir
from sendgate.log import Value
from sendgate.store.envelope import queue_id_time

if TYPE_CHECKING:
    from prometheus_client import Counter
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

    from sendgate.store.limits import LimitStore
    from sendgate.store.queue import QueueStore
    from sendgate.store.users import UserStore

ENVIRONMENT = "PROMETHEUS_MULTIPROC_DIR"
# The classic text format, which generate_latest writes and every Prometheus reads (newer
# prometheus-client releases announce 1.0.0, which older servers do not know).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Handshakes on loopback take a millisecond; over the Internet tens; a stuck one seconds.
_HANDSHAKE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
# From the end of DATA to the 250: the group commit's fsync and what waits for it.
_ACCEPT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


def prepare_directory(path: Path) -> None:
    """Make `path` the empty metrics directory of this `serve`, for this process and its children.

    Files of an earlier run are removed: their counts belong to processes long gone.
    """
    if path.is_dir():
        shutil.rmtree(path)
    path.mkdir(mode=0o700, parents=True)
    fsync_dir(path.parent)
    os.environ[ENVIRONMENT] = str(path)
    from prometheus_client import values

    # prometheus-client picks its value class when first imported; it may have been already.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


class Metrics:
    """The counters and histograms, and which event moves which (see `observe`)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        """`registry` None: the values only go to this process's multiprocess file."""
        from prometheus_client import Histogram

        def counter(name: str, doc: str, *labels: str) -> Counter:
            from prometheus_client import Counter

            return Counter(f"sendgate_{name}", doc, labels, registry=registry)

        self.connections = counter("connections", "Connections admitted, by listener.", "listener")
        self.connections_refused = counter(
            "connections_refused", "Connections refused at accept, by reason.", "reason"
        )
        self.tls = counter("tls_sessions", "TLS sessions established, by version.", "version")
        self.auth = counter("auth", "AUTH attempts, by result (ok, failed, refused).", "result")
        self.accepted = counter("messages_accepted", "Messages accepted (250) and queued.")
        self.accepted_bytes = counter("message_bytes", "Octets of the messages accepted.")
        self.held = counter("messages_held", "Messages accepted but held from delivery.")
        self.refused = counter("messages_refused", "Refusals of commands and messages.", "reason")
        self.deliveries = counter("delivery_attempts", "Delivery attempts, by result.", "result")
        self.dsns = counter("dsns", "Delivery status notifications queued, by action.", "action")
        self.bans = counter("bans", "Bans imposed, by reason.", "reason")
        self.flagged = counter("accounts_flagged", "Accounts held for review, by reason.", "reason")
        self.handshake = Histogram(
            "sendgate_tls_handshake_seconds",
            "TLS handshake duration.",
            buckets=_HANDSHAKE_BUCKETS,
            registry=registry,
        )
        self.accept_latency = Histogram(
            "sendgate_accept_seconds",
            "From the end of a message's data to its 250 (stored durably).",
            buckets=_ACCEPT_BUCKETS,
            registry=registry,
        )
        # A labelled counter's child for each label value, made once: `labels()` validates
        # and locks on every call, and this runs for every event.
        self._children: dict[tuple[int, str], Counter] = {}
        self._moves: Mapping[str, Callable[[Mapping[str, Value]], None]] = {
            "connect": self._connect,
            "refused": lambda f: self._inc(self.connections_refused, _label(f, "reason")),
            "tls": self._tls,
            "auth_ok": lambda f: self._inc(self.auth, "ok"),
            "auth_fail": lambda f: self._inc(self.auth, "failed"),
            "auth_refused": lambda f: self._inc(self.auth, "refused"),
            "accepted": self._accepted,
            "rejected": lambda f: self._inc(self.refused, _label(f, "reason")),
            "sending_limit": lambda f: self._inc(self.refused, "sending_limit"),
            "delivery": lambda f: self._inc(self.deliveries, _label(f, "result")),
            "dsn": lambda f: self._inc(self.dsns, _label(f, "action")),
            "ban": lambda f: self._inc(self.bans, _label(f, "reason")),
            "flagged": lambda f: self._inc(self.flagged, _label(f, "reason")),
        }

    def _inc(self, counter: Counter, label: str) -> None:
        key = (id(counter), label)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = counter.labels(label)
        child.inc()

    def observe(self, name: str, fields: Mapping[str, Value]) -> None:
        """Count one logged event (`EventLog`'s observer); events of no metric cost a lookup."""
        move = self._moves.get(name)
        if move is not None:
            move(fields)

    def _connect(self, fields: Mapping[str, Value]) -> None:
        listener = _LISTENERS.get(str(fields.get("tls")), "submission")
        self._inc(self.connections, listener)

    def _tls(self, fields: Mapping[str, Value]) -> None:
        self._inc(self.tls, _label(fields, "version"))
        seconds = fields.get("seconds")
        if isinstance(seconds, float):
            self.handshake.observe(seconds)

    def _accepted(self, fields: Mapping[str, Value]) -> None:
        self.accepted.inc()
        size = fields.get("size")
        if isinstance(size, int):
            self.accepted_bytes.inc(size)
        if fields.get("held") is not None:
            self.held.inc()
        seconds = fields.get("seconds")
        if isinstance(seconds, float):
            self.accept_latency.observe(seconds)


_LISTENERS = {"implicit": "submissions", "local": "sendmail"}  # by the connect event's tls=


def _label(fields: Mapping[str, Value], name: str) -> str:
    """A label value from an event field; "" when absent, cut short (a label is not free text)."""
    value = fields.get(name)
    return "" if value is None else str(value)[:40]


class StateCollector:
    """Gauges read from the stores at each scrape: the queue, active bans, held accounts."""

    def __init__(
        self,
        queue: QueueStore,
        limits: LimitStore,
        users: UserStore,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._queue = queue
        self._limits = limits
        self._users = users
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        ids = self._queue.ids()
        # Queue ids begin with the time they were made: the smallest is the oldest message.
        oldest = self._clock() - queue_id_time(min(ids)) if ids else 0.0
        yield GaugeMetricFamily("sendgate_queue_messages", "Messages in the queue.", len(ids))
        yield GaugeMetricFamily(
            "sendgate_queue_oldest_seconds", "Age of the oldest queued message.", max(oldest, 0.0)
        )
        yield GaugeMetricFamily(
            "sendgate_bans_active", "Bans in force now.", len(self._limits.bans())
        )
        yield GaugeMetricFamily(
            "sendgate_accounts_held", "Accounts held for review now.", len(self._users.flags())
        )


def exposition(metrics_dir: Path, state: StateCollector | None) -> tuple[bytes, str]:
    """The text a scrape gets (every process's values added up) and its content type."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, str(metrics_dir))  # type: ignore[no-untyped-call]
    if state is not None:
        registry.register(state)
    return generate_latest(registry), CONTENT_TYPE

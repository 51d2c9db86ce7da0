"""Metrics: events counted in several processes and added up at a scrape; state from the stores.

The multiprocess test forks real children that count into their own files, as the acceptors and
the runner of `serve` do; the scrape is prometheus-client's own text, parsed back by its parser.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from tests.support.mail import make_envelope

from sendgate.config.load import load_config
from sendgate.log import EventLog, Value
from sendgate.scaffold import init_instance
from sendgate.store.backends import open_stores
from sendgate.web.metrics import Metrics, StateCollector, exposition

NOW = 1_800_000_000.0
MESSAGE = b"From: a@b.example\r\n\r\nhi\r\n"


def scrape(directory: Path, state: StateCollector | None = None) -> dict[str, float]:
    text, content_type = exposition(directory, state)
    assert content_type.startswith("text/plain; version=0.0.4")
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return found


Events = list[tuple[str, dict[str, Value]]]


def count_in_child(metrics: Metrics, events: Events) -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            for name, fields in events:
                metrics.observe(name, fields)
            code = 0
        finally:
            os._exit(code)
    return pid


def test_counts_of_every_process_add_up_at_a_scrape(multiprocess: Path) -> None:
    assert not (multiprocess / "stale_1.db").exists()
    metrics = Metrics()
    acceptor: Events = [
        ("connect", {"tls": "starttls"}),
        ("connect", {"tls": "implicit"}),
        ("tls", {"version": "TLSv1.3", "seconds": 0.004}),
        ("auth_ok", {"user": "alice"}),
        ("auth_fail", {"user": "alice"}),
        ("accepted", {"size": 1000, "seconds": 0.002}),
        ("accepted", {"size": 500, "held": "flagged: many", "seconds": 0.2}),
        ("rejected", {"reason": "from_not_owned"}),
        ("sending_limit", {"limit": "messages_per_hour"}),
        ("no_such_event", {}),
    ]
    runner: Events = [
        ("delivery", {"result": "sent"}),
        ("delivery", {"result": "deferred"}),
        ("dsn", {"action": "delayed"}),
    ]
    children = [count_in_child(metrics, acceptor) for _ in range(2)]
    children.append(count_in_child(metrics, runner))
    for pid in children:
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    metrics.observe("ban", {"reason": "auth_failures"})  # and the supervisor's own

    found = scrape(multiprocess)

    assert found["sendgate_connections_total{listener=submission}"] == 2
    assert found["sendgate_connections_total{listener=submissions}"] == 2
    assert found["sendgate_tls_sessions_total{version=TLSv1.3}"] == 2
    assert found["sendgate_auth_total{result=ok}"] == 2
    assert found["sendgate_auth_total{result=failed}"] == 2
    assert found["sendgate_messages_accepted_total"] == 4
    assert found["sendgate_message_bytes_total"] == 3000
    assert found["sendgate_messages_held_total"] == 2
    assert found["sendgate_messages_refused_total{reason=from_not_owned}"] == 2
    assert found["sendgate_messages_refused_total{reason=sending_limit}"] == 2
    assert found["sendgate_delivery_attempts_total{result=sent}"] == 1
    assert found["sendgate_delivery_attempts_total{result=deferred}"] == 1
    assert found["sendgate_dsns_total{action=delayed}"] == 1
    assert found["sendgate_bans_total{reason=auth_failures}"] == 1
    assert found["sendgate_accept_seconds_count"] == 4
    assert found["sendgate_accept_seconds_bucket{le=0.005}"] == 2
    assert found["sendgate_tls_handshake_seconds_bucket{le=0.005}"] == 2


def test_the_log_gives_every_event_to_the_metrics_whatever_its_level() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    stream = io.StringIO()
    log = EventLog(stream, level="error")
    log.observer = metrics.observe
    log.event("accepted", size=10)
    log.bind(conn="c1").event("auth_fail", "warning", user="x")
    assert stream.getvalue() == ""  # below the level: not written, yet counted
    assert registry.get_sample_value("sendgate_messages_accepted_total") == 1
    assert registry.get_sample_value("sendgate_auth_total", {"result": "failed"}) == 1


def test_a_broken_observer_never_breaks_logging() -> None:
    stream = io.StringIO()
    log = EventLog(stream)

    def broken(name: str, fields: object) -> None:
        raise OSError("disk full")

    log.observer = broken
    log.event("accepted", size=10)
    log.bind(conn="c1").event("disconnect")
    assert [line.split()[2] for line in stream.getvalue().splitlines()] == [
        "event=accepted",
        "event=disconnect",
    ]


def test_labels_from_clients_are_cut_short() -> None:
    registry = CollectorRegistry()
    Metrics(registry).observe("rejected", {"reason": "x" * 500})
    assert registry.get_sample_value("sendgate_messages_refused_total", {"reason": "x" * 40}) == 1


def test_state_is_read_from_the_stores(tmp_path: Path, multiprocess: Path) -> None:
    config = init_instance(
        tmp_path / "sg",
        hostname="mx.example.test",
        submission="127.0.0.1:0",
        submissions="127.0.0.1:0",
    )
    cfg = load_config(config)
    early = open_stores(cfg, clock=lambda: NOW - 90)
    later = open_stores(cfg, clock=lambda: NOW - 30)
    try:
        for stores in (later, early):
            queue_id = stores.queue.new_id()
            stores.queue.put(make_envelope(queue_id, MESSAGE), MESSAGE)
        early.limits.ban("ip:192.0.2.1", 600, "auth_failures", memory=3600)
        early.users.add_user("alice@example.test", "hash")
        early.users.set_flag("alice@example.test", "sent too much", NOW)
        state = StateCollector(early.queue, early.limits, early.users, clock=lambda: NOW)
        found = scrape(multiprocess, state)
    finally:
        early.close()
        later.close()
    assert found["sendgate_queue_messages"] == 2
    assert found["sendgate_queue_oldest_seconds"] == pytest.approx(90, abs=0.01)
    assert found["sendgate_accounts_held"] == 1
    assert found["sendgate_bans_active"] == 1

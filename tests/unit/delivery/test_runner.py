"""Tests for sendgate.delivery.runner: the trust store, the scheduler's wiring, the runner's life.

Configs are made by `init_instance`; mail goes to aiosmtpd receivers and DNS to a test zone
server on 127.0.64.x (free ports), nothing leaves loopback. `run_delivery` runs in a forked
child as `serve` runs it (its own process, its own signal handlers); the test waits on its log
lines and the receivers, and stops it with a real SIGTERM.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import signal
import ssl
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import trustme
from tests.peers.dns_server import ZoneServer
from tests.peers.mx import Receiver
from tests.support.forked import WAIT, Forked
from tests.support.tls import server_context

from sendgate.config.kinds import HostPort
from sendgate.config.load import load_config
from sendgate.config.schema import Config
from sendgate.delivery.plan import load_relays
from sendgate.delivery.runner import build_scheduler, run_delivery, trust_store
from sendgate.errors import ConfigError
from sendgate.log import EventLog
from sendgate.scaffold import init_instance
from sendgate.service import run_loop
from sendgate.store.backends import Backends, Stores, mta_sts_path, open_stores
from sendgate.store.envelope import Envelope
from sendgate.store.queue import QueueStore

HOSTNAME = "mx.example.test"
SENDER = "alice@example.test"
RECIPIENT = "bob@example.org"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def opened() -> Iterator[list[Stores]]:
    made: list[Stores] = []
    yield made
    for stores in made:
        stores.close()


def make_config(
    root: Path,
    *,
    smarthost: str | None = None,
    tls: str = "none",
    limits: dict[str, Any] | None = None,
    **delivery: Any,
) -> Config:
    """An instance made by `init_instance`, its delivery (and limits) settings replaced."""
    path = init_instance(
        root / "sg",
        hostname=HOSTNAME,
        submission="127.0.0.1:0",
        submissions="127.0.0.1:0",
        smarthost=smarthost,
        smarthost_tls=tls,
    )
    cfg = load_config(path)
    return dataclasses.replace(
        cfg,
        delivery=dataclasses.replace(cfg.delivery, **delivery),
        limits=dataclasses.replace(cfg.limits, **(limits or {})),
    )


def queue_message(queue: QueueStore, tag: str, recipient: str = RECIPIENT) -> str:
    message = (
        f"From: {SENDER}\r\nTo: {recipient}\r\nSubject: {tag}\r\n"
        f"Message-ID: <{tag}@example.test>\r\n\r\nbody of {tag}\r\n"
    ).encode()
    queue_id = queue.new_id()
    queue.put(Envelope(queue_id, SENDER, (recipient,), SENDER, time.time(), len(message)), message)
    return queue_id


def drain(cfg: Config, queue: QueueStore, *, mx_port: int = 25) -> str:
    """Run a scheduler built by `build_scheduler` until nothing is due; return its log."""
    stream = io.StringIO()

    async def main() -> None:
        with ThreadPoolExecutor(4) as executor:
            scheduler = build_scheduler(
                cfg,
                queue=queue,
                mta_sts_cache=mta_sts_path(cfg),
                relays=load_relays(cfg.delivery.routes),
                signer=None,
                log=EventLog(stream),
                executor=executor,
                mx_port=mx_port,
            )
            await scheduler.drain()

    asyncio.run(main())
    return stream.getvalue()


def handshake(client: ssl.SSLContext, server: ssl.SSLContext, name: str) -> None:
    """A TLS handshake between the two contexts in memory; raises what the client refuses."""
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    ours = client.wrap_bio(client_in, client_out, server_hostname=name)
    theirs = server.wrap_bio(server_in, server_out, server_side=True)
    pending = [ours, theirs]
    for _ in range(10):
        for end in list(pending):
            try:
                end.do_handshake()
                pending.remove(end)
            except ssl.SSLWantReadError:
                pass
        server_in.write(client_out.read())
        client_in.write(server_out.read())
        if not pending:
            return
    raise AssertionError("the handshake did not finish")


def run_runner(cfg: Config, backends: Backends | None = None) -> Forked:
    """`run_delivery` in a forked child, on the runner's stores of `backends` if given."""

    def main(log: EventLog) -> int:
        stores = open_stores(cfg) if backends is None else backends.open("runner")
        relays = load_relays(cfg.delivery.routes)
        try:
            return run_delivery(cfg, log, stores.queue, mta_sts_path(cfg), relays, None, run_loop)
        finally:
            stores.close()

    return Forked(main)


# --- trust_store -----------------------------------------------------------------------------


def test_the_trust_store_verifies_peers_on_tls_1_2_or_later(tmp_path: Path) -> None:
    context = trust_store(make_config(tmp_path))
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_the_trust_store_adds_delivery_ca_file_to_the_system_cas(
    tmp_path: Path, ca: trustme.CA
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server = server_context(ca.issue_cert("relay.example.net"))
    system = trust_store(make_config(tmp_path / "a"))
    with_ca = trust_store(make_config(tmp_path / "b", ca_file=ca_file))

    assert with_ca.cert_store_stats()["x509_ca"] == system.cert_store_stats()["x509_ca"] + 1
    handshake(with_ca, server, "relay.example.net")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(system, server, "relay.example.net")
    with pytest.raises(ssl.SSLCertVerificationError):  # the names are still checked
        handshake(with_ca, server, "other.example.net")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "No such file or directory"),
        ("", "NO_CERTIFICATE_OR_CRL_FOUND"),
        ("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n", "PEM lib"),
        ("directory", "Is a directory"),
    ],
    ids=["missing", "empty", "malformed", "directory"],
)
def test_an_unusable_ca_file_is_a_config_error_naming_it(
    tmp_path: Path, content: str | None, reason: str
) -> None:
    ca_file = tmp_path / "ca.pem"
    if content == "directory":
        ca_file.mkdir()
    elif content is not None:
        ca_file.write_text(content)
    cfg = make_config(tmp_path, ca_file=ca_file)
    with pytest.raises(ConfigError) as caught:
        trust_store(cfg)
    text = str(caught.value)
    assert text.startswith(f"delivery.ca_file: cannot load CA certificates from {ca_file}: ")
    assert reason in text
    assert "\n" not in text
    assert caught.value.__cause__ is None  # one line, no chained traceback for people


# --- build_scheduler -------------------------------------------------------------------------


def test_the_scheduler_delivers_through_the_configured_smarthost(
    tmp_path: Path, opened: list[Stores]
) -> None:
    with Receiver("127.0.64.1", 0) as relay:
        cfg = make_config(tmp_path, smarthost=f"127.0.64.1:{relay.port}")
        stores = open_stores(cfg)
        opened.append(stores)
        queue_id = queue_message(stores.queue, "relayed")
        log = drain(cfg, stores.queue)
        [got] = relay.wait_for(1)
    assert (got.sender, got.recipients, got.tls) == (SENDER, (RECIPIENT,), False)
    assert b"body of relayed" in got.content
    assert stores.queue.ids() == []
    assert f"queue_id={queue_id}" in log


@pytest.mark.parametrize("trusted", [True, False])
def test_a_starttls_smarthost_is_verified_against_delivery_ca_file(
    tmp_path: Path, ca: trustme.CA, opened: list[Stores], trusted: bool
) -> None:
    ca_file = tmp_path / "ca.pem"
    (ca if trusted else trustme.CA()).cert_pem.write_to_path(str(ca_file))
    tls = server_context(ca.issue_cert("127.0.64.2"))
    with Receiver("127.0.64.2", 0, tls=tls) as relay:
        cfg = make_config(
            tmp_path, smarthost=f"127.0.64.2:{relay.port}", tls="starttls", ca_file=ca_file
        )
        stores = open_stores(cfg)
        opened.append(stores)
        queue_id = queue_message(stores.queue, "verified")
        log = drain(cfg, stores.queue)
        received = relay.wait_for(1) if trusted else list(relay.received)
    if trusted:
        assert [(m.recipients, m.tls) for m in received] == [((RECIPIENT,), True)]
        assert stores.queue.ids() == []
    else:
        assert received == []
        assert stores.queue.ids() == [queue_id]  # deferred, not bounced
        state = stores.queue.delivery_state(queue_id)
        assert state is not None
        [recipient] = state.recipients
        assert (recipient.status, recipient.attempts) == ("pending", 1)
        assert "certificate not accepted" in (recipient.reply or "")
        assert "result=deferred" in log


def test_a_refused_recipient_is_reported_from_this_host(
    tmp_path: Path, opened: list[Stores]
) -> None:
    refusal = {RECIPIENT: "550 5.1.1 no such user"}
    with Receiver("127.0.64.4", 0, reject_rcpt=refusal) as relay:
        cfg = make_config(tmp_path, smarthost=f"127.0.64.4:{relay.port}")
        stores = open_stores(cfg)
        opened.append(stores)
        queue_message(stores.queue, "refused")
        drain(cfg, stores.queue)  # the DSN is queued and delivered like any message
        [dsn] = relay.wait_for(1)
    assert dsn.sender in ("", "<>")
    assert dsn.recipients == (SENDER,)
    assert f"Reporting-MTA: dns; {HOSTNAME}".encode() in dsn.content
    assert b"no such user" in dsn.content
    assert stores.queue.ids() == []


@pytest.mark.parametrize(("mta_sts", "dane"), [(True, True), (False, False)])
def test_mx_delivery_asks_the_configured_resolver_as_the_settings_say(
    tmp_path: Path, opened: list[Stores], mta_sts: bool, dane: bool
) -> None:
    with ZoneServer("127.0.64.53", 0) as dns, Receiver("127.0.64.3", 0) as mx:
        dns.add("example.org", "MX", "10 mx.example.org.")
        dns.add("mx.example.org", "A", "127.0.64.3")
        dns.set_secure("example.org")  # DANE applies only to MX hosts DNSSEC vouched for
        cfg = make_config(
            tmp_path,
            resolver=(HostPort(*dns.nameserver),),
            mta_sts=mta_sts,
            dane=dane,
        )
        stores = open_stores(cfg)
        opened.append(stores)
        queue_message(stores.queue, "mx")
        drain(cfg, stores.queue, mx_port=mx.port)
        [got] = mx.wait_for(1)
        asked = {(q.name, q.rdtype) for q in dns.queries}
    assert got.recipients == (RECIPIENT,)
    assert ("example.org", "MX") in asked
    assert (("_mta-sts.example.org", "TXT") in asked) is mta_sts
    assert ((f"_{mx.port}._tcp.mx.example.org", "TLSA") in asked) is dane


# --- run_delivery ----------------------------------------------------------------------------


def test_held_delivery_waits_for_sigterm_and_delivers_nothing(
    tmp_path: Path, opened: list[Stores]
) -> None:
    with Receiver("127.0.64.5", 0) as relay:
        cfg = make_config(tmp_path, smarthost=f"127.0.64.5:{relay.port}", hold=True)
        stores = open_stores(cfg)
        opened.append(stores)
        queue_id = queue_message(stores.queue, "held")
        with run_runner(cfg) as runner:
            held = runner.wait_for("event=delivery_held")
            runner.signal(signal.SIGTERM)
            assert runner.wait() == 0
        assert relay.received == []
    assert "level=warning" in held
    assert 'reason="delivery.hold = true"' in held
    assert runner.matching("event=delivery_started") == []
    assert runner.matching("event=delivery_stopped")
    assert stores.queue.ids() == [queue_id]


def test_the_runner_delivers_the_queue_until_sigterm(tmp_path: Path, opened: list[Stores]) -> None:
    with Receiver("127.0.64.6", 0) as relay:
        cfg = make_config(tmp_path, smarthost=f"127.0.64.6:{relay.port}")
        stores = open_stores(cfg)
        opened.append(stores)
        queue_message(stores.queue, "first")
        with run_runner(cfg) as runner:
            runner.wait_for("event=delivery_started routes=1")
            [got] = relay.wait_for(1)
            # The attempt may still be finishing (the receiver's reply, the removal): the
            # grace period (30 s by default) lets it.
            runner.signal(signal.SIGTERM)
            assert runner.wait() == 0
    assert b"body of first" in got.content
    assert runner.matching("event=delivery_stopped")
    assert runner.matching("event=child_error") == []
    assert stores.queue.ids() == []


def test_an_announced_message_is_picked_up_without_waiting_for_a_scan(
    tmp_path: Path, opened: list[Stores]
) -> None:
    with Receiver("127.0.64.7", 0) as relay:
        cfg = make_config(tmp_path, smarthost=f"127.0.64.7:{relay.port}", scan_interval=3600.0)
        backends = Backends(cfg)
        backends.prepare()
        admin = backends.open("admin")
        opened.append(admin)
        queue_message(admin.queue, "scanned")  # found by the runner's first scan
        with run_runner(cfg, backends) as runner:
            acceptor = backends.open("acceptor")
            opened.append(acceptor)
            relay.wait_for(1)  # the first scan is behind us; the next is an hour away
            unannounced = queue_message(admin.queue, "unannounced")
            queue_message(acceptor.queue, "announced")
            second = relay.wait_for(2)[1]
            runner.signal(signal.SIGTERM)
            assert runner.wait() == 0
    assert b"body of announced" in second.content
    assert len(relay.received) == 2
    assert admin.queue.ids() == [unannounced]  # waits for the scan the hint replaces


def test_sigterm_gives_a_running_attempt_the_grace_period_then_keeps_it_queued(
    tmp_path: Path, opened: list[Stores]
) -> None:
    grace = 1.0
    hold = threading.Event()  # the receiver never answers DATA: the attempt cannot finish
    with Receiver("127.0.64.8", 0, hold=hold) as relay:
        cfg = make_config(
            tmp_path,
            smarthost=f"127.0.64.8:{relay.port}",
            limits={"shutdown_grace": grace},
        )
        stores = open_stores(cfg)
        opened.append(stores)
        queue_id = queue_message(stores.queue, "interrupted")
        with run_runner(cfg) as runner:
            runner.wait_for("event=delivery_started")
            assert relay.data_started.wait(WAIT)
            signalled = time.monotonic()
            runner.signal(signal.SIGTERM)
            assert runner.wait() == 0
            waited = time.monotonic() - signalled
    assert grace <= waited < grace + WAIT
    assert relay.received == []
    assert runner.matching("event=delivery_stopped")
    assert stores.queue.ids() == [queue_id]  # retried after the restart

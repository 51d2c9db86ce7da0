"""Fixtures for delivery integration tests: real DNS, real receiving servers, an injected clock.

A `World` is one sending instance (made by `sendgate init`) whose delivery runs against a
`ZoneServer` on 127.0.60.53:53 and aiosmtpd receivers on other 127.0.60.x addresses, port 25;
certificates come from a trustme CA that the instance trusts through `delivery.ca_file`. Each
`World.deliver()` builds a fresh scheduler (as a restarted runner would, from the spool alone)
and runs it until nothing is due at the injected time; tests move time with `clock.advance`.

Security: everything listens on loopback addresses in 127.0.60.0/24 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import trustme
from tests.peers.dns_server import ZoneServer
from tests.peers.https_server import HttpsServer
from tests.peers.mx import Receiver
from tests.support.clock import FakeClock
from tests.support.tls import server_context

from sendgate.config.kinds import HostPort
from sendgate.config.load import load_config
from sendgate.config.schema import Config
from sendgate.delivery.plan import load_relays
from sendgate.delivery.runner import build_scheduler
from sendgate.delivery.target import Timeouts
from sendgate.dkim.keys import load_keys
from sendgate.dkim.signer import DkimSigner
from sendgate.errors import UnknownQueueIdError
from sendgate.log import EventLog
from sendgate.scaffold import init_instance
from sendgate.store.backends import mta_sts_path
from sendgate.store.envelope import Envelope
from sendgate.store.local.queue import LocalQueueStore

NAMESERVER = "127.0.60.53"
SENDER_HOST = "mta.sender.test"
FAST = Timeouts(connect=5.0, command=10.0, data=10.0)


def message_bytes(sender: str, recipient: str, subject: str = "Hello", body: str = "Hi.") -> bytes:
    lines = [
        f"From: <{sender}>",
        f"To: <{recipient}>",
        f"Subject: {subject}",
        "Date: Fri, 27 Nov 2026 10:00:00 +0000",
        f"Message-ID: <{subject.replace(' ', '-')}@{SENDER_HOST}>",
        "",
        body,
        "",
    ]
    return "\r\n".join(lines).encode()


class World:
    def __init__(self, root: Path, dns: ZoneServer, ca: trustme.CA) -> None:
        self.root = root
        self.dns = dns
        self.ca = ca
        self.clock = FakeClock()
        self.log_stream = io.StringIO()
        self.log = EventLog(self.log_stream, fmt="json", level="debug", clock=self.clock)
        config_path = init_instance(
            root / "instance",
            hostname=SENDER_HOST,
            submission="127.0.0.1:0",
            submissions="127.0.0.1:0",
        )
        ca_file = root / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        base = load_config(config_path)
        self.cfg: Config = dataclasses.replace(
            base,
            delivery=dataclasses.replace(
                base.delivery, resolver=(HostPort(NAMESERVER, 53),), ca_file=ca_file
            ),
        )
        self.spool = LocalQueueStore(self.cfg.data_dir / "spool", clock=self.clock)
        self._stack = contextlib.ExitStack()

    def configure(self, **delivery: Any) -> None:
        self.cfg = dataclasses.replace(
            self.cfg, delivery=dataclasses.replace(self.cfg.delivery, **delivery)
        )

    def close(self) -> None:
        self._stack.close()

    # --- DNS and peers ---------------------------------------------------------------------

    def mx(self, domain: str, *hosts: tuple[int, str, str]) -> None:
        """Publish MX records (preference, host, IPv4 address) and the hosts' A records."""
        for preference, host, address in hosts:
            self.dns.add(domain, "MX", f"{preference} {host}.")
            self.dns.add(host, "A", address)

    def receiver(
        self, address: str, *, leaf: trustme.LeafCert | None = None, **script: Any
    ) -> Receiver:
        """An aiosmtpd receiver on address:25, offering STARTTLS with `leaf` when given."""
        tls = None if leaf is None else server_context(leaf)
        return self._stack.enter_context(Receiver(address, 25, tls=tls, **script))

    def https(self, address: str, leaf: trustme.LeafCert, routes: dict[str, Any]) -> HttpsServer:
        return self._stack.enter_context(HttpsServer(address, 443, leaf, routes=routes))

    # --- the queue -------------------------------------------------------------------------

    def queue(self, sender: str, recipients: tuple[str, ...], message: bytes, **fields: Any) -> str:
        """Queue `message`; `fields` sets more envelope fields (ret, envid, requiretls, ...)."""
        queue_id = self.spool.new_id()
        self.spool.put(
            Envelope(
                queue_id=queue_id,
                sender=sender,
                recipients=recipients,
                user="alice@sender.test",
                received_at=self.clock(),
                size=len(message),
                **fields,
            ),
            message,
        )
        return queue_id

    def deliver(self) -> None:
        """Run a fresh scheduler until nothing is due now and no attempt is running."""

        async def main() -> None:
            with ThreadPoolExecutor(4) as executor:
                keys = load_keys(self.cfg.dkim.key_dir)
                # A fresh queue handle too: the runner's index lives in it.
                queue = LocalQueueStore(self.cfg.data_dir / "spool", clock=self.clock)
                scheduler = build_scheduler(
                    self.cfg,
                    queue=queue,
                    mta_sts_cache=mta_sts_path(self.cfg),
                    relays=load_relays(self.cfg.delivery.routes),
                    signer=DkimSigner(keys) if keys else None,
                    log=self.log,
                    executor=executor,
                    clock=self.clock,
                    rng=random.Random(7),
                    timeouts=FAST,
                )
                await scheduler.drain()

        asyncio.run(main())

    def events(self, name: str) -> list[dict[str, Any]]:
        lines = self.log_stream.getvalue().splitlines()
        return [event for event in map(json.loads, lines) if event["event"] == name]

    def state(self, queue_id: str) -> dict[str, Any] | None:
        """The stored delivery state; None before the first attempt or once delivered."""
        try:
            state = self.spool.delivery_state(queue_id)
        except UnknownQueueIdError:
            return None
        return None if state is None else dict(json.loads(state.to_json()))


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def dns_server() -> Iterator[ZoneServer]:
    with ZoneServer(NAMESERVER, 53) as server:
        yield server


@pytest.fixture
def world(tmp_path: Path, dns_server: ZoneServer, ca: trustme.CA) -> Iterator[World]:
    dns_server.clear()
    created = World(tmp_path, dns_server, ca)
    try:
        yield created
    finally:
        created.close()

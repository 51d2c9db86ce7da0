"""Delivery through the reference Postfix as an authenticated STARTTLS smarthost.

The instance is made as operators make one, `sendgate init DIR --smarthost HOST:PORT
--smarthost-tls starttls`; the route init wrote then gets alice's login (a password file),
delivery.ca_file trusts Postfix's self-signed certificate (SAN 127.0.0.1) and delivery is
released. A message submitted to `sendgate serve` must come out of Postfix's sink with the
submitting user as envelope sender, which Postfix only accepts after STARTTLS and AUTH as that
user (reject_sender_login_mismatch). A DNS server on loopback with no records stands in for the
system's, so a smarthost route that queried DNS would show (and no test reaches real DNS).

Security: Postfix's replies and log, and the sink's dumps, are only matched against.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trustme
from tests.e2e.conftest import HOSTNAME, PASSWORD, Instance, run_cli, write_certificate
from tests.e2e.postfix_ref import RefEnv, running_postfix_ref, sink_dumps, wait_relayed
from tests.peers.dns_server import ZoneServer

if TYPE_CHECKING:
    from tests.e2e.conftest import ServerFactory, ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DELIVERY_TIMEOUT = 60.0  # first login pays Dovecot's ARGON2ID; a 535 comes after its 2 s delay


@pytest.fixture(scope="module")
def postfix() -> Iterator[RefEnv]:
    """One private reference Postfix for this module (its sink keeps every transaction)."""
    with running_postfix_ref() as (_, env):
        yield env


@pytest.fixture
def zone() -> Iterator[ZoneServer]:
    """An empty DNS server on loopback: delivery's resolver, which should not even be asked."""
    with ZoneServer("127.0.0.1", 0) as server:
        yield server


def smarthost_instance(
    root: Path,
    ca: trustme.CA,
    ca_pem: Path,
    ref: RefEnv,
    zone: ZoneServer,
    *,
    route_password: str,
) -> Instance:
    """An instance from `sendgate init --smarthost`, relaying as `ref.user` with this password."""
    tls_dir = root / "tls-files"
    tls_dir.mkdir(parents=True)
    cert, key = tls_dir / "cert.pem", tls_dir / "key.pem"
    write_certificate(ca, cert, key)
    directory = root / "sg"
    smarthost = f"{ref.host}:{ref.port}"
    run_cli(
        [
            "init", str(directory), "--hostname", HOSTNAME,
            "--submission", "127.0.0.1:0", "--submissions", "127.0.0.1:0",
            "--cert", str(cert), "--key", str(key),
            "--smarthost", smarthost, "--smarthost-tls", "starttls",
        ]
    ).ok()  # fmt: skip
    # The submitting user is the smarthost login: Postfix lets alice send only as alice.
    made = Instance(
        directory=directory,
        config=directory / "sendgate.toml",
        data_dir=directory / "data",
        cert=cert,
        key=key,
        ca_pem=ca_pem,
        ca=ca,
        user=ref.user,
        password=PASSWORD,
    )
    password_file = directory / "smarthost.password"
    password_file.write_text(route_password + "\n")
    password_file.chmod(0o600)
    written = f'routes = [{{ domains = ["*"], smarthost = "{smarthost}", tls = "starttls" }}]'
    with_login = (
        f'routes = [{{ domains = ["*"], smarthost = "{smarthost}", tls = "starttls", '
        f"username = {json.dumps(ref.user)}, password_file = {json.dumps(str(password_file))} }}]"
    )
    text = made.config.read_text()
    assert text.count(written + "\n") == 1, f"init no longer writes {written!r}"
    made.config.write_text(text.replace(written + "\n", with_login + "\n"))
    address, port = zone.nameserver
    made.configure(
        {
            "listen.workers": 1,
            "audit.interval": 0,  # the scheduled audit would ask the zone (asserted unasked)
            "delivery.hold": False,
            "delivery.ca_file": str(ref.cafile),
            "delivery.resolver": [f"{address}:{port}"],
        }
    )
    made.cli("user", "add", made.user, stdin=made.password + "\n").ok()
    return made


def _delivery_line(lines: list[str], queue_id: str) -> str:
    [line] = [line for line in lines if f"queue_id={queue_id} " in line]
    return line


def _submit_and_wait(
    server: ServerFactory, made: Instance, postfix: RefEnv, prefix: str
) -> tuple[ServerProcess, str, str, list[str]]:
    """Serve `made`, submit one tagged message for Postfix's recipient, wait for its attempt."""
    running = server(made)
    tag = f"{prefix}-{uuid.uuid4().hex}"
    mark = running.mark()
    with running.smtp() as client:
        queue_id = running.submit(client, made.message(tag), sender=made.user, rcpt=postfix.rcpt)
    lines = running.wait_for(
        rf"event=delivery .*queue_id={queue_id} ", since=mark, timeout=DELIVERY_TIMEOUT
    )
    return running, tag, queue_id, lines


def test_message_reaches_postfix_sink_via_auth_starttls(
    postfix: RefEnv,
    zone: ZoneServer,
    tmp_path: Path,
    ca: trustme.CA,
    ca_pem: Path,
    server: ServerFactory,
) -> None:
    made = smarthost_instance(tmp_path, ca, ca_pem, postfix, zone, route_password=postfix.password)
    running, tag, queue_id, lines = _submit_and_wait(server, made, postfix, "smarthost")
    postfix_id = wait_relayed(postfix, f"{tag}@example.test")

    line = _delivery_line(lines, queue_id)
    assert "result=sent" in line, line
    assert "policy=smarthost" in line, line
    assert re.search(r" tls=TLSv1\.[23] ", line), line
    assert f"host={postfix.host} address={postfix.host} " in line, line
    assert f"queued as {postfix_id}" in line, line  # the 250 Postfix gave is the one logged
    [dump] = sink_dumps(postfix, f"body of {tag}".encode())
    # smtp-sink records the envelope Postfix relayed: sender = the submitting (= login) user.
    assert f"X-Mail-Args: <{made.user}>".encode() in dump
    assert f"X-Rcpt-Args: <{postfix.rcpt}>".encode() in dump
    assert f"Message-ID: <{tag}@example.test>".encode() in dump
    # Postfix's Received header: ESMTPSA = it got the message over TLS after AUTH.
    received = f"by msa.example.test (Postfix) with ESMTPSA id {postfix_id}"
    assert received.encode() in dump
    assert running.stop() == 0
    assert made.queue_ids() == []
    assert running.matching("event=dsn") == []
    assert zone.queries == []  # a smarthost given by address needs no DNS


def test_wrong_smarthost_password_keeps_message_queued(
    postfix: RefEnv,
    zone: ZoneServer,
    tmp_path: Path,
    ca: trustme.CA,
    ca_pem: Path,
    server: ServerFactory,
) -> None:
    made = smarthost_instance(
        tmp_path, ca, ca_pem, postfix, zone, route_password="not-" + postfix.password
    )
    running, tag, queue_id, lines = _submit_and_wait(server, made, postfix, "badlogin")
    # Stopping lets the runner finish the attempt, so its state is on disk before we read it.
    assert running.stop() == 0

    line = _delivery_line(lines, queue_id)
    assert re.search(r' reply="[^"]*\b535 5\.7\.8 ', line), line
    assert "policy=smarthost" in line, line
    assert "result=deferred" in line, line
    assert made.queue_ids() == [queue_id]  # still queued, and no DSN was queued beside it
    assert running.matching("event=dsn") == []
    explained = made.cli("queue", "explain", queue_id).ok().stdout
    assert "  status: pending" in explained, explained
    assert re.search(r"^  reply: .*\b535 5\.7\.8 ", explained, re.MULTILINE), explained
    assert "next-attempt: " in explained, explained
    assert sink_dumps(postfix, tag.encode()) == []

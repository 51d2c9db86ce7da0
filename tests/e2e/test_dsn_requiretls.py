"""DSN (RFC 3461) and REQUIRETLS (RFC 8689) end to end: smtplib -> `sendgate serve` -> real DNS
-> aiosmtpd receivers that offer the extensions or not.

Addresses: DNS 127.0.61.73, the recipient's MX 127.0.61.70, the sender's MX 127.0.61.71 (where
reports arrive). Tests wait on the receivers' conditions and on log events, never on sleeps.

Security: everything listens on loopback.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, cast

import pytest
import trustme
from tests.e2e.settings import UNLIMITED_SENDING
from tests.peers.dns_server import ZoneServer
from tests.peers.mx import Receiver
from tests.support.tls import server_context

if TYPE_CHECKING:
    from tests.e2e.conftest import InstanceFactory, ServerFactory, TomlScalar

pytestmark = pytest.mark.e2e

DOMAIN = "example.org"
MX_HOST = "mx1.example.org"
BOB = f"bob@{DOMAIN}"
SENDER = "alice@example.test"  # the e2e conftest's USER
DNS_ADDRESS, MX_ADDRESS, HOME_ADDRESS = "127.0.61.73", "127.0.61.70", "127.0.61.71"
WAIT = 30.0
MESSAGE = (
    f"From: Alice <{SENDER}>\r\nTo: <{BOB}>\r\nSubject: quarterly numbers\r\n"
    "Message-ID: <dsn-e2e@example.test>\r\nDate: Sun, 06 Dec 2026 10:00:00 +0000\r\n\r\n"
    "The numbers.\r\n"
).encode()


@pytest.fixture
def zone() -> Iterator[ZoneServer]:
    with ZoneServer(DNS_ADDRESS, 53) as server:
        server.set_secure(DOMAIN)  # a DNSSEC-validated MX answer, as REQUIRETLS needs
        server.add(DOMAIN, "MX", f"10 {MX_HOST}.")
        server.add(MX_HOST, "A", MX_ADDRESS)
        server.add("example.test", "MX", "10 mx.example.test.")
        server.add("mx.example.test", "A", HOME_ADDRESS)
        yield server


def _settings(zone: ZoneServer, ca_pem: Path) -> dict[str, TomlScalar]:
    return {
        "delivery.hold": False,
        "delivery.resolver": [f"{zone.address}:{zone.port}"],
        "delivery.ca_file": str(ca_pem),  # the receivers' certificates verify (REQUIRETLS)
        **UNLIMITED_SENDING,
    }


def test_dsn_requests_and_requiretls_reach_a_next_hop_that_offers_both(
    instance: InstanceFactory,
    server: ServerFactory,
    zone: ZoneServer,
    ca: trustme.CA,
    ca_pem: Path,
) -> None:
    made = instance(_settings(zone, ca_pem))
    tls = server_context(ca.issue_cert(MX_HOST))
    with Receiver(MX_ADDRESS, 25, tls=tls, dsn=True, requiretls=True) as receiver:
        running = server(made)
        running.wait_for("event=delivery_started")
        with running.smtp() as client:
            assert client.has_extn("dsn")
            assert client.has_extn("requiretls")
            refused = client.sendmail(
                SENDER,
                [BOB],
                MESSAGE,
                mail_options=["RET=HDRS", "ENVID=QQ+2B314", "REQUIRETLS"],
                rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;Bob@example.org"],
            )
        assert refused == {}
        [got] = receiver.wait_for(1, WAIT)

    assert got.tls
    assert got.content.endswith(MESSAGE)
    assert got.mail_params == ("REQUIRETLS", "RET=HDRS", "ENVID=QQ+2B314")
    assert got.rcpt_params == {BOB: ("NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;Bob@example.org")}
    [line] = running.wait_for(r"event=delivery .* result=sent", timeout=WAIT)
    assert "policy=requiretls" in line


def test_notify_success_to_a_host_without_dsn_brings_a_relayed_report_home(
    instance: InstanceFactory,
    server: ServerFactory,
    zone: ZoneServer,
    ca: trustme.CA,
    ca_pem: Path,
) -> None:
    made = instance(_settings(zone, ca_pem))
    with contextlib.ExitStack() as stack:
        receiver = stack.enter_context(Receiver(MX_ADDRESS, 25))  # neither DSN nor TLS
        home = stack.enter_context(Receiver(HOME_ADDRESS, 25))
        running = server(made)
        running.wait_for("event=delivery_started")
        with running.smtp() as client:
            client.sendmail(
                SENDER,
                [BOB],
                MESSAGE,
                mail_options=["ENVID=run-1"],
                rcpt_options=["NOTIFY=SUCCESS"],
            )
        [got] = receiver.wait_for(1, WAIT)
        [report] = home.wait_for(1, WAIT)
        running.wait_for(r"event=dsn .* action=relayed recipients=1", timeout=WAIT)

    assert got.mail_params == ()
    assert (report.sender, report.recipients) == ("<>", (SENDER,))
    parsed = email.message_from_bytes(report.content, policy=email.policy.default)
    assert parsed["Subject"] == "Successful Mail Delivery Report"
    status = cast(EmailMessage, list(parsed.iter_parts())[1]).get_payload()
    assert isinstance(status, list)
    head, block = (cast(EmailMessage, part) for part in status)
    assert head["Original-Envelope-Id"] == "run-1"
    assert (block["Action"], block["Status"]) == ("relayed", "2.0.0")
    assert block["Final-Recipient"] == f"rfc822; {BOB}"
    assert b"The numbers." not in report.content  # a relay report returns headers only

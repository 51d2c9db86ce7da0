"""`sendgate audit` on a live instance, and the audit `serve` runs on a schedule while mail flows.

The instances' certificates come from the tests' own CA, which the system does not trust, so
every audit here has that critical finding; the DKIM key is missing, and the loopback DNS
server knows no record of the domain (SPF, DMARC) nor the hostname: four warnings. All are real
findings about these instances, and all must show up.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator

import pytest
from tests.e2e.conftest import InstanceFactory, ServerFactory
from tests.peers.dns_server import ZoneServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

_FINDING = re.compile(r"event=audit_finding .*?code=(\S+) severity=(\S+)")


def free_ports(count: int) -> list[int]:
    """Loopback ports free at this moment (the server binds them right after)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


@pytest.fixture
def resolver() -> Iterator[list[str]]:
    """A DNS server on loopback for the audit's lookups (no test may reach the system's DNS);
    it knows nothing, so the DNS findings are "missing" ones."""
    with ZoneServer("127.0.0.1", 0) as zone:
        host, port = zone.nameserver
        yield [f"{host}:{port}"]


def test_the_audit_command_probes_the_running_server(
    instance: InstanceFactory, server: ServerFactory, resolver: list[str]
) -> None:
    port, tls_port = free_ports(2)
    made = instance(
        {
            "listen.submission": [f"127.0.0.1:{port}"],
            "listen.submissions": [f"127.0.0.1:{tls_port}"],
            "audit.interval": 0,
            "delivery.resolver": resolver,
        }
    )
    stopped = made.cli("audit", "--json")
    codes = {f["code"]: f for f in json.loads(stopped.stdout)["findings"]}
    assert stopped.code == 1
    assert codes["audit.cert_untrusted"]["severity"] == "critical"
    assert codes["audit.dkim_key_missing"]["severity"] == "warning"
    for code in ("audit.dns_spf_missing", "audit.dns_dmarc_missing", "audit.hostname_unresolved"):
        assert codes[code]["severity"] == "warning"
    assert codes["audit.listener_down"]["severity"] == "info"  # not running: not a warning
    server(made)
    running = made.cli("audit", "--json")
    codes = {f["code"]: f for f in json.loads(running.stdout)["findings"]}
    assert "audit.listener_down" not in codes
    assert codes["audit.listener.greeting"]["severity"] == "info"
    listener = {c: f["severity"] for c, f in codes.items() if c.startswith("audit.listener.")}
    assert set(listener.values()) == {"info"}, listener
    text = made.cli("audit")
    assert text.code == 1
    assert text.stdout.startswith(f"audit of {made.config}: 1 critical, 4 warning, ")
    assert "CRITICAL audit.cert_untrusted: " in text.stdout


def test_serve_audits_at_start_and_on_schedule_while_mail_flows(
    instance: InstanceFactory, server: ServerFactory, resolver: list[str]
) -> None:
    live = server(instance({"audit.interval": 1, "delivery.resolver": resolver}))
    (first,) = live.wait_for("event=audit ")
    assert "critical=1 warning=4 " in first
    found = dict(_FINDING.findall("\n".join(live.matching("event=audit_finding"))))
    assert found["audit.cert_untrusted"] == "critical"
    assert found["audit.dkim_key_missing"] == "warning"
    assert found["audit.listener.greeting"] == "info"  # the live probe reached the listeners
    mark = live.mark()
    with live.smtp() as client:
        for n in range(3):
            live.submit(client, live.instance.message(f"audit-{n}"))
    # The next audit comes on its own, while the server keeps taking mail.
    (later,) = live.wait_for("event=audit ", since=mark)
    assert "critical=1 warning=4 " in later
    assert len(live.instance.queue_ids()) == 3

"""The DNS part of the audit, against a DNS server and an MTA-STS HTTPS server on loopback.

The domain's records are published from what `records` makes (parsed back with dnspython, as
an admin's zone would hold them); each test then breaks one thing and expects its finding.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.rdatatype
import dns.zone
import pytest
import trustme
from tests.peers.dns_server import ZoneServer
from tests.peers.https_server import HttpsServer
from tests.support.tls import client_context

from sendgate.audit.dns import dns_findings
from sendgate.config.load import load_config
from sendgate.config.schema import Config
from sendgate.dkim.keys import generate_key, load_keys
from sendgate.dnsrecords import records, resolver_lookup, zone_text
from sendgate.findings import Finding, Severity
from sendgate.scaffold import init_instance

DOMAIN = "example.org"
HOSTNAME = "mx.example.test"
HOST_ADDRESS = "127.0.0.1"
POLICY_ADDRESS = "127.0.62.1"
POLICY_PATH = "/.well-known/mta-sts.txt"
ENFORCE = b"version: STSv1\r\nmode: enforce\r\nmx: mx.example.test\r\nmax_age: 604800\r\n"


@dataclass
class World:
    cfg: Config
    zone: ZoneServer
    policy: HttpsServer
    ca: trustme.CA

    def audit(self) -> dict[str, Finding]:
        keys = load_keys(self.cfg.dkim.key_dir)
        found = dns_findings(
            self.cfg, [DOMAIN], keys, resolver_lookup(self.cfg, timeout=2), client_context(self.ca),
            timeout=2,
        )  # fmt: skip
        return {finding.code: finding for finding in found}

    def replace(self, name: str, rdtype: str, *texts: str) -> None:
        self.zone.remove(name, rdtype)
        for text in texts:
            self.zone.add(name, rdtype, text)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    ca = trustme.CA()
    with ZoneServer("127.0.0.1", 0) as zone:
        path = init_instance(
            tmp_path / "sg", hostname=HOSTNAME, submission="127.0.0.1:0",
            submissions="127.0.0.1:0",
        )  # fmt: skip
        host, port = zone.nameserver
        path.write_text(path.read_text().replace("resolver = []", f'resolver = ["{host}:{port}"]'))
        cfg = load_config(path)
        generate_key(cfg.dkim.key_dir, DOMAIN, "s1", "ed25519")
        wanted = records(cfg, DOMAIN, load_keys(cfg.dkim.key_dir), mx=True)
        parsed = dns.zone.from_text(
            zone_text(DOMAIN, wanted, [HOSTNAME]), origin=DOMAIN + ".", relativize=False,
            check_origin=False,
        )  # fmt: skip
        for name, node in parsed.nodes.items():
            for rdataset in node.rdatasets:
                for rdata in rdataset:
                    zone.add(
                        name.to_text(), dns.rdatatype.to_text(rdataset.rdtype), rdata.to_text()
                    )
        zone.add(HOSTNAME, "A", HOST_ADDRESS)
        zone.add("1.0.0.127.in-addr.arpa", "PTR", HOSTNAME + ".")
        zone.add(f"mta-sts.{DOMAIN}", "A", POLICY_ADDRESS)
        leaf = ca.issue_cert(f"mta-sts.{DOMAIN}")
        routes = {POLICY_PATH: (200, "text/plain", ENFORCE)}
        with HttpsServer(POLICY_ADDRESS, 443, leaf, routes=routes) as policy:
            yield World(cfg, zone, policy, ca)


def test_a_domain_that_publishes_everything_has_no_finding(world: World) -> None:
    assert world.audit() == {}


def test_missing_and_wrong_records_are_named(world: World) -> None:
    world.zone.remove(f"s1._domainkey.{DOMAIN}", "TXT")
    world.replace(f"_dmarc.{DOMAIN}", "TXT", '"v=DMARC1; p=none"')
    world.replace(DOMAIN, "TXT", '"v=spf1 +all"')
    world.zone.remove(f"_smtp._tls.{DOMAIN}", "TXT")
    found = world.audit()
    assert {code: f.severity for code, f in found.items()} == {
        "audit.dns_spf_wrong": Severity.WARNING,
        "audit.dns_dkim_missing": Severity.WARNING,
        "audit.dns_dmarc_wrong": Severity.WARNING,
        "audit.dns_tls_rpt_missing": Severity.INFO,
    }
    assert (
        found["audit.dns_spf_wrong"].evidence
        == "mx.example.test is not named (a:mx.example.test): v=spf1 +all"
    )
    assert found["audit.dns_dmarc_wrong"].message == (
        "example.org: the DMARC record is wrong (_dmarc.example.org)"
    )


def test_another_dkim_key_is_critical(world: World) -> None:
    world.replace(f"s1._domainkey.{DOMAIN}", "TXT", '"v=DKIM1; k=ed25519; p=AAAA"')
    found = world.audit()
    assert list(found) == ["audit.dns_dkim_wrong"]
    assert found["audit.dns_dkim_wrong"].severity is Severity.CRITICAL


def test_reverse_dns_and_the_hostname(world: World) -> None:
    world.replace("1.0.0.127.in-addr.arpa", "PTR", "other.example.net.")
    found = world.audit()
    assert list(found) == ["audit.ptr_mismatch"]
    assert found["audit.ptr_mismatch"].evidence == "PTR of 127.0.0.1: other.example.net"
    world.zone.remove(HOSTNAME, "A")
    assert list(world.audit()) == ["audit.hostname_unresolved"]


def test_the_mta_sts_policy_file(world: World) -> None:
    world.policy.routes[POLICY_PATH] = (200, "text/plain", ENFORCE.replace(b"mx.", b"mail."))
    found = world.audit()
    assert list(found) == ["audit.mta_sts_policy_mx"]
    assert found["audit.mta_sts_policy_mx"].severity is Severity.CRITICAL
    world.policy.routes[POLICY_PATH] = (200, "text/plain", ENFORCE.replace(b"enforce", b"testing"))
    assert list(world.audit()) == ["audit.mta_sts_policy_not_enforced"]
    del world.policy.routes[POLICY_PATH]
    found = world.audit()
    assert list(found) == ["audit.mta_sts_policy_unreachable"]
    assert found["audit.mta_sts_policy_unreachable"].severity is Severity.WARNING


def test_dns_that_does_not_answer_is_said_once(world: World) -> None:
    world.zone.fail(f"_dmarc.{DOMAIN}")
    world.zone.fail(f"_smtp._tls.{DOMAIN}")
    found = world.audit()
    assert list(found) == ["audit.dns_unanswered"]
    assert found["audit.dns_unanswered"].message == (
        "DNS did not answer 2 lookups: those records were not checked"
    )

"""`sendgate dns DOMAIN [--check]`: printed records parse, and --check judges each record.

DNS is a real server on loopback (`tests.peers.dns_server`) that the instance's resolver
setting points at; the records published there are the ones the command printed, parsed back
with dnspython.
"""

from __future__ import annotations

import json
from pathlib import Path

import dns.rdataclass
import dns.zone
import pytest
from tests.peers.dns_server import ZoneServer
from tests.support.cli import Cli

from sendgate.cli import main
from sendgate.config.load import load_config
from sendgate.dkim.keys import generate_key

DOMAIN = "example.org"


@pytest.fixture
def dns_cli(resolving_config: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    generate_key(load_config(resolving_config).dkim.key_dir, DOMAIN, "s1", "ed25519")
    return Cli(resolving_config, capsys)


def printed_zone(dns_cli: Cli, *extra: str) -> dns.zone.Zone:
    code, out, err = dns_cli("dns", DOMAIN, *extra)
    assert (code, err) == (0, "")
    return dns.zone.from_text(out, origin=DOMAIN + ".", relativize=False, check_origin=False)


def publish(zone: ZoneServer, parsed: dns.zone.Zone) -> None:
    for name, node in parsed.nodes.items():
        for rdataset in node.rdatasets:
            for rdata in rdataset:
                zone.add(name.to_text(), dns.rdatatype.to_text(rdataset.rdtype), rdata.to_text())


def test_the_printed_records_parse(dns_cli: Cli) -> None:
    parsed = printed_zone(dns_cli, "--mx")
    found = {
        (name.to_text(), dns.rdatatype.to_text(rds.rdtype))
        for name, node in parsed.nodes.items()
        for rds in node.rdatasets
    }
    assert found == {
        ("example.org.", "TXT"),
        ("example.org.", "MX"),
        ("s1._domainkey.example.org.", "TXT"),
        ("_dmarc.example.org.", "TXT"),
        ("_mta-sts.example.org.", "TXT"),
        ("_smtp._tls.example.org.", "TXT"),
        ("_submission._tcp.example.org.", "SRV"),
        ("_submissions._tcp.example.org.", "SRV"),
        ("autoconfig.example.org.", "CNAME"),
        ("_autodiscover._tcp.example.org.", "SRV"),
    }
    spf = parsed.find_rdataset("example.org.", "TXT")
    assert [b"".join(r.strings) for r in spf] == [b"v=spf1 a:mx.example.test -all"]
    srv = parsed.find_rdataset("_submission._tcp.example.org.", "SRV")
    assert [r.to_text() for r in srv] == ["0 1 587 mx.example.test."]


def test_check_passes_when_published_and_names_what_is_missing_or_wrong(
    dns_cli: Cli, zone: ZoneServer
) -> None:
    publish(zone, printed_zone(dns_cli))
    code, out, err = dns_cli("dns", DOMAIN, "--check")
    assert (code, err) == (0, "")
    assert [line.split()[0] for line in out.splitlines()] == ["ok"] * 9
    zone.remove("_dmarc.example.org", "TXT")
    zone.add("_dmarc.example.org", "TXT", '"v=DMARC1; p=none"')
    zone.remove("s1._domainkey.example.org", "TXT")
    zone.remove("_smtp._tls.example.org", "TXT")
    zone.add("example.org", "TXT", '"v=spf1 include:_spf.example.net ~all"')  # a second SPF
    code, out, err = dns_cli("dns", DOMAIN, "--check")
    assert (code, err) == (1, "")
    lines = out.splitlines()
    assert lines[0].startswith("wrong    SPF              example.org: 2 records (receivers ")
    assert lines[1:5] == [
        "missing  DKIM             s1._domainkey.example.org: no such name",
        "wrong    DMARC            _dmarc.example.org: p=none: receivers are asked to do nothing",
        "ok       MTA-STS          _mta-sts.example.org",
        "missing  TLS-RPT          _smtp._tls.example.org: no such name",
    ]
    assert [line.split()[0] for line in lines[5:]] == ["ok"] * 4


def test_autoconfig_may_be_an_alias_or_the_hosts_own_address(
    dns_cli: Cli, zone: ZoneServer
) -> None:
    publish(zone, printed_zone(dns_cli))
    zone.remove("autoconfig.example.org", "CNAME")

    def autoconfig_line() -> str:
        _, out, _ = dns_cli("dns", DOMAIN, "--check")
        [line] = [line for line in out.splitlines() if "autoconfig.example.org" in line]
        return " ".join(line.split())

    assert autoconfig_line() == "missing autoconfig autoconfig.example.org: no such name"
    zone.add("mx.example.test", "A", "192.0.2.25")
    zone.add("autoconfig.example.org", "A", "192.0.2.80")
    assert autoconfig_line() == (
        "wrong autoconfig autoconfig.example.org: its addresses are not mx.example.test's: "
        "192.0.2.80"
    )
    zone.add("autoconfig.example.org", "A", "192.0.2.25")
    assert autoconfig_line() == "ok autoconfig autoconfig.example.org"


def test_json_and_a_wrong_dkim_key(dns_cli: Cli, zone: ZoneServer) -> None:
    publish(zone, printed_zone(dns_cli))
    zone.remove("s1._domainkey.example.org", "TXT")
    zone.add("s1._domainkey.example.org", "TXT", '"v=DKIM1; k=ed25519; p=AAAA"')
    code, out, err = dns_cli("dns", DOMAIN, "--check", "--json")
    assert (code, err) == (1, "")
    verdicts = {r["kind"]: (r["verdict"], r["detail"]) for r in json.loads(out)["records"]}
    assert verdicts["DKIM"] == ("wrong", "another key is published: v=DKIM1; k=ed25519; p=AAAA")
    assert verdicts["SPF"] == ("ok", "")


def test_a_bad_domain_is_one_line_and_exit_2(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(config), "dns", "not a domain"]) == 2
    assert capsys.readouterr().err == "sendgate dns: 'not a domain': not a domain name\n"

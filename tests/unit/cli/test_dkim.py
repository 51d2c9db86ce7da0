"""`sendgate dkim keygen|rotate|switch|status|prune` on an instance made by `sendgate init`.

DNS for `switch` and `dns --check` is a real server on loopback (`tests.peers.dns_server`)
that the instance's resolver setting points at; records are published there as the commands
printed them, parsed back with dnspython.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import dns.zone
import pytest
from tests.peers.dns_server import ZoneServer
from tests.support.cli import Cli

DOMAIN = "example.org"
_CHECK_LINE = re.compile(r"^(\w+)\s+DKIM\s+(\S+?):?(?: |$)")


@pytest.fixture
def dkim_cli(resolving_config: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(resolving_config, capsys)


def publish(zone: ZoneServer, printed: str) -> str:
    """Publish the record line a command printed; return its owner name."""
    parsed = dns.zone.from_text(
        "$TTL 300\n" + printed, origin=DOMAIN + ".", relativize=False, check_origin=False
    )
    [(name, node)] = list(parsed.nodes.items())
    for rdata in node.rdatasets[0]:
        zone.add(name.to_text(), "TXT", rdata.to_text())
    return name.to_text().rstrip(".")


def dkim_check(dkim_cli: Cli) -> list[tuple[str, str]]:
    """(verdict, owner) of each DKIM line of `dns DOMAIN --check`."""
    _, out, _ = dkim_cli("dns", DOMAIN, "--check")
    matches = [_CHECK_LINE.match(line) for line in out.splitlines()]
    return [(m[1], m[2]) for m in matches if m]


def test_a_rotation_from_keygen_to_prune(dkim_cli: Cli, zone: ZoneServer, config: Path) -> None:
    code, out, err = dkim_cli("dkim", "keygen", DOMAIN, "--selector", "one")
    assert code == 0
    assert "SIGHUP" in err
    one = publish(zone, out)

    code, out, err = dkim_cli("dkim", "rotate", DOMAIN, "--selector", "two")
    assert code == 0
    assert err.splitlines()[0] == f"staged the rsa key two for {DOMAIN}"
    assert f"sendgate --config {config} dkim switch {DOMAIN}" in err
    staged_line = out
    assert dkim_check(dkim_cli) == [("ok", one), ("missing", f"two._domainkey.{DOMAIN}")]

    # Not in DNS yet: the switch refuses and nothing changes.
    code, out, err = dkim_cli("dkim", "switch", DOMAIN)
    assert (code, out) == (1, "")
    assert err == (
        f"sendgate: DNS does not publish the staged key's record two._domainkey.{DOMAIN} yet: "
        f"missing (no such name); publish it (`sendgate dns {DOMAIN}` prints it) and wait for "
        "DNS, or pass --unchecked\n"
    )
    # Another key at that name (a copy-paste slip) is refused too.
    zone.add(f"two._domainkey.{DOMAIN}", "TXT", '"v=DKIM1; k=rsa; p=AAAA"')
    code, _, err = dkim_cli("dkim", "switch", DOMAIN)
    assert code == 1
    assert "yet: wrong (another key is published" in err
    zone.remove(f"two._domainkey.{DOMAIN}", "TXT")
    two = publish(zone, staged_line)
    assert dkim_check(dkim_cli) == [("ok", one), ("ok", two)]

    code, out, err = dkim_cli("dkim", "switch", DOMAIN, "--keep-days", "3")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"{DOMAIN} now signs with the rsa key two after a reload"
    # The default instance keeps mail 5 days; --keep-days said 3.
    assert re.match(
        rf"keep the record {one} published until \d{{4}}-\d\d-\d\d \d\d:\d\d UTC", lines[1]
    )
    assert lines[2].startswith("now reload sendgate (SIGHUP")
    assert dkim_check(dkim_cli) == [("ok", two), ("ok", one)]

    document = dkim_cli.json("dkim", "status")
    states = [(k["state"], k["selector"], k["algorithm"]) for k in document["keys"]]
    assert states == [("active", "two", "rsa"), ("retired", "one", "rsa")]
    assert document["keys"][1]["expired"] == 0

    assert dkim_cli("dkim", "prune") == (0, "no retired record is past its time\n", "")


def test_the_old_record_is_kept_for_the_queue_lifetime_and_then_pruned(dkim_cli: Cli) -> None:
    assert dkim_cli("dkim", "keygen", DOMAIN, "--selector", "one")[0] == 0
    assert dkim_cli("dkim", "rotate", DOMAIN, "--selector", "two")[0] == 0
    document = dkim_cli.json("dkim", "status", DOMAIN)
    assert [k["state"] for k in document["keys"]] == ["active", "staged"]
    code, out, _ = dkim_cli("dkim", "switch", DOMAIN, "--unchecked")
    assert code == 0
    [retired] = [k for k in dkim_cli.json("dkim", "status")["keys"] if k["state"] == "retired"]
    [active] = [k for k in dkim_cli.json("dkim", "status")["keys"] if k["state"] == "active"]
    assert active["selector"] == "two"
    # Default: 5 days of queue lifetime and 2 more; the switch ran a moment ago.
    code, text, _ = dkim_cli("dkim", "status")
    assert re.search(r"retired\s+rsa\s+one  keep published until ", text)
    assert abs(retired["until"] - time.time() - 7 * 86400) < 120

    assert dkim_cli("dkim", "rotate", DOMAIN, "--selector", "three")[0] == 0
    assert dkim_cli("dkim", "switch", DOMAIN, "--unchecked", "--keep-days", "0")[0] == 0
    code, out, _ = dkim_cli("dkim", "prune")
    assert code == 0
    assert re.fullmatch(
        rf"forgot two\._domainkey\.{DOMAIN} \(kept until \d{{4}}-\d\d-\d\d \d\d:\d\d UTC\): "
        r"remove it from DNS if it is still there\n",
        out,
    )
    # `dns` no longer lists what was pruned, nor what is past its date.
    _, zone_text, _ = dkim_cli("dns", DOMAIN)
    assert "two._domainkey" not in zone_text
    assert "one._domainkey" in zone_text
    assert "three._domainkey" in zone_text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["rotate", DOMAIN],
            f"{DOMAIN} has no DKIM key to rotate; make one with `sendgate dkim keygen {DOMAIN}`",
        ),
        (
            ["switch", DOMAIN, "--unchecked"],
            f"no key is staged for {DOMAIN}; stage one with `sendgate dkim rotate {DOMAIN}`",
        ),
        (
            ["rotate", "not a domain"],
            "not a domain name: 'not a domain': label 'not a domain' must be 1-63 letters, "
            "digits or inner hyphens",
        ),
    ],
)
def test_refusals_are_one_line(dkim_cli: Cli, argv: list[str], message: str) -> None:
    assert dkim_cli("dkim", *argv) == (1, "", f"sendgate: {message}\n")


def test_status_of_nothing(dkim_cli: Cli) -> None:
    assert dkim_cli("dkim", "status") == (0, "no DKIM keys\n", "")
    assert dkim_cli("dkim", "status", "other.example") == (
        0,
        "no DKIM keys for other.example\n",
        "",
    )


def test_a_broken_retired_record_stops_the_commands_with_its_name(
    dkim_cli: Cli, config: Path
) -> None:
    assert dkim_cli("dkim", "keygen", DOMAIN)[0] == 0
    path = config.parent / "dkim" / DOMAIN / "retired" / "old.rsa.record"
    path.parent.mkdir()
    path.write_text("{")
    for argv in (["dkim", "status"], ["dkim", "prune"], ["dns", DOMAIN]):
        code, out, err = dkim_cli(*argv)
        assert (code, out) == (2, "")
        assert err.startswith(f"sendgate: {path}: not a readable retired DKIM record")
        assert err.count("\n") == 1

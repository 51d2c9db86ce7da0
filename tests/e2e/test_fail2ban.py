"""contrib/fail2ban against Debian's fail2ban-regex: the filter finds exactly the right clients.

One test feeds it the log of a real `sendgate serve` run with failed logins from several
loopback addresses (127.0.0.x); another a log written through `sendgate.log.EventLog` itself
with every line kind the filter must and must not match, including hostile user names that try
to smuggle a `client=` field or a whole fake event into a quoted value; a third loads the
example jail with Debian's fail2ban-client.
"""

from __future__ import annotations

import io
import re
import shutil
import smtplib
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from tests.support.clock import FakeClock
from tests.support.session import plain

from sendgate.log import EventLog

if TYPE_CHECKING:
    from tests.e2e.conftest import InstanceFactory, ServerFactory, ServerProcess

pytestmark = pytest.mark.e2e

CONTRIB = Path(__file__).resolve().parents[2] / "contrib" / "fail2ban"
FILTER = CONTRIB / "filter.d" / "sendgate.conf"
SYSTEM_CONFIG = Path("/etc/fail2ban")  # from Debian's fail2ban package: jail.conf, actions
_LINES = re.compile(r"^Lines: (\d+) lines, (\d+) ignored, (\d+) matched, (\d+) missed", re.M)
_DATE_HITS = re.compile(r"^\|\s+\[(\d+)\] ts=", re.M)
TIMEOUT = 60.0


def fail2ban_regex(log: Path, *options: str) -> str:
    done = subprocess.run(
        ["fail2ban-regex", *options, str(log), str(FILTER)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def matched_hosts(log: Path) -> list[str]:
    """The address fail2ban takes from each matched line, in log order."""
    return fail2ban_regex(log, "-o", "ip").split()


def summary(log: Path) -> tuple[int, int, int]:
    """(lines, matched, lines whose date was read from ts=) as fail2ban-regex reports them."""
    report = fail2ban_regex(log)
    counts = _LINES.search(report)
    assert counts is not None, report
    dates = _DATE_HITS.findall(report)
    return int(counts.group(1)), int(counts.group(3)), sum(int(hits) for hits in dates)


def attempt(server: ServerProcess, source: str, username: str, password: str) -> int:
    """One AUTH PLAIN from `source` after STARTTLS; the reply code."""
    client = smtplib.SMTP(
        "127.0.0.1", server.port, "client.example", TIMEOUT, source_address=(source, 0)
    )
    try:
        client.starttls(context=server.instance.client_context())
        client.ehlo()
        code, _ = client.docmd("AUTH", "PLAIN " + plain(username, password))
        return code
    finally:
        client.quit()


def test_the_filter_finds_the_failed_logins_of_a_real_run(
    instance: InstanceFactory, server: ServerFactory, tmp_path: Path
) -> None:
    running = server(instance())
    user, password = running.instance.user, running.instance.password
    tries = [
        ("127.0.0.2", user, "wrong password 1", 535),
        ("127.0.0.2", user, "wrong password 2", 535),
        ("127.0.0.3", "nobody@example.test", password, 535),
        # Hostile names: each tries to put another address into the line.
        ("127.0.0.3", "x client=10.9.9.9", password, 535),
        ("127.0.0.3", 'y" client=10.9.9.8 z="', password, 535),
        ("127.0.0.4", user, password, 235),
    ]
    for source, username, secret, expected in tries:
        assert attempt(running, source, username, secret) == expected, source
    running.wait_for(r"event=auth_fail ", count=5)
    running.wait_for(r"event=auth_ok .*client=127\.0\.0\.4 ")
    log = tmp_path / "sendgate.log"
    lines = running.snapshot()
    log.write_text("\n".join(lines) + "\n")

    assert matched_hosts(log) == ["127.0.0.2"] * 2 + ["127.0.0.3"] * 3
    total, matched, dated = summary(log)
    assert (total, matched) == (len(lines), 5)
    assert dated == sum(line.startswith("ts=") for line in lines)


Fields = dict[str, str | int | float | bool | None]
# (client, event, the event's fields after the bound conn= and client=, whether it must match)
LINES: list[tuple[str, str, Fields, bool]] = [
    ("192.0.2.1", "auth_fail", {"user": "alice@example.org", "mechanism": "PLAIN"}, True),
    ("2001:db8::7", "auth_fail", {"user": "alice@example.org", "failures": 4, "delay": 2.0}, True),
    ("192.0.2.2", "auth_refused", {"user": "bob@example.org", "reason": "network_banned"}, True),
    ("192.0.2.3", "auth_refused", {"user": "bob@example.org", "reason": "account_locked"}, True),
    ("192.0.2.4", "auth_refused", {"user": "bob@example.org", "reason": "known_locked"}, True),
    (
        "192.0.2.5",
        "refused",
        {"reason": "banned", "key": "net:192.0.2.0/24", "code": "421 4.7.0"},
        True,
    ),
    (
        "192.0.2.20",
        "auth_ok",
        {"user": "alice@example.org", "app_password": "", "new_network": False},
        False,
    ),
    ("192.0.2.21", "refused", {"reason": "admission", "code": "421 4.7.0"}, False),
    ("192.0.2.22", "refused", {"reason": "connection_cap"}, False),
    ("192.0.2.23", "refused", {"reason": "caps"}, False),
    (
        "192.0.2.24",
        "ban",
        {"key": "net:192.0.2.24/32", "offences": 1, "reason": "host_failures"},
        False,
    ),
    ("192.0.2.25", "rejected", {"user": "alice@example.org", "reason": "auth"}, False),
    # Hostile user names: each tries to put another address, or a whole event, into the line.
    ("192.0.2.6", "auth_fail", {"user": "x client=10.0.0.1", "mechanism": "PLAIN"}, True),
    ("192.0.2.7", "auth_fail", {"user": 'q" client=10.0.0.2 r="\\', "mechanism": "PLAIN"}, True),
    ("192.0.2.26", "auth_ok", {"user": "y level=warning event=auth_fail client=10.0.0.3"}, False),
    (
        "192.0.2.27",
        "auth_ok",
        {"user": "a\nts=2027-01-15T08:00:00.000Z level=warning event=auth_fail client=10.0.0.4"},
        False,
    ),
    ("192.0.2.28", "refused", {"reason": "caps", "user": "reason=banned client=10.0.0.5"}, False),
    ("192.0.2.29", "refused", {"reason": "caps", "user": 'x" reason=banned "'}, False),
    ("::ffff:192.0.2.8", "auth_fail", {"user": "u@example.org", "mechanism": "PLAIN"}, True),
]


def synthetic_log(path: Path) -> list[str]:
    """Write LINES (and three more) through EventLog to `path`; the hosts that must match."""
    stream = io.StringIO()
    log = EventLog(stream, clock=FakeClock(1_800_000_000.25))
    expected = []
    for client, event, fields, hit in LINES:
        log.bind(conn="c1", client=client).event(event, "warning", **fields)
        if hit:
            expected.append(client.removeprefix("::ffff:"))
    # A hostile name logged before client= (as an event field, not a bound one).
    log.event("auth_fail", "warning", user="z client=10.0.0.6", conn="c2", client="192.0.2.9")
    log.event("auth_ok", user="w client=10.0.0.7", conn="c2", client="192.0.2.30")
    expected.append("192.0.2.9")
    lines = stream.getvalue().splitlines()
    # As a syslog file holds it, behind a prefix with its own date.
    lines.append("Jan 15 08:00:00 mx sendgate[42]: " + lines[0].replace(".1 ", ".10 "))
    expected.append("192.0.2.10")
    path.write_text("\n".join(lines) + "\n")
    return expected


def test_the_filter_matches_exactly_the_failures_and_bans_of_each_kind(tmp_path: Path) -> None:
    log = tmp_path / "synthetic.log"
    expected = synthetic_log(log)
    assert matched_hosts(log) == expected
    total, matched, dated = summary(log)
    assert (total, matched, dated) == (len(LINES) + 3, len(expected), len(LINES) + 3)
    # The date is read from ts= (UTC, milliseconds), not from the syslog prefix.
    times = fail2ban_regex(log, "-o", "<time>").split()
    assert {int(float(t)) for t in times} == {1_800_000_000}


def test_the_example_jail_loads_with_the_filter(tmp_path: Path) -> None:
    config = tmp_path / "fail2ban"
    shutil.copytree(SYSTEM_CONFIG, config)
    for path in (config / "jail.d").iterdir():
        path.unlink()  # only this jail: the distribution's may name logs this host lacks
    shutil.copy(FILTER, config / "filter.d" / "sendgate.conf")
    log = tmp_path / "sendgate.log"
    synthetic_log(log)
    jail = (CONTRIB / "jail.d" / "sendgate.local").read_text()
    assert "logpath  = /var/log/sendgate.log\n" in jail
    jail = jail.replace("/var/log/sendgate.log", str(log))
    (config / "jail.d" / "sendgate.local").write_text(jail)

    def client(option: str) -> str:
        done = subprocess.run(
            ["fail2ban-client", "-c", str(config), option],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    assert "configuration test is successful" in client("-t")
    dump = client("-d")
    assert "['add', 'sendgate', 'auto']" in dump
    for setting in ("'maxretry', 20", "'findtime', '1h'", "'bantime', '1h'", f"'{log}'"):
        assert setting in dump
    assert "--dports 587,465" in dump
    assert "event=(?:auth_fail|auth_refused)" in dump

"""The HTTP listener end to end: `sendgate serve` with `[http] listen`, asked by curl.

Mail flows through the real server (smtplib over STARTTLS and implicit TLS, with failed logins
among them) while curl scrapes /metrics; afterwards every counter must equal the number of log
lines of its event, whichever of the two acceptors logged them. The set-up documents and
/healthz are fetched the way clients and monitors fetch them.

Security: everything listens on 127.0.0.1; curl is pointed at loopback only.
"""

from __future__ import annotations

import json
import plistlib
import re
import smtplib
import subprocess
import threading
import xml.etree.ElementTree as ET
from collections import Counter
from typing import TYPE_CHECKING

import pytest
from tests.e2e.settings import UNLIMITED_SENDING
from tests.support.waiting import wait_until

if TYPE_CHECKING:
    from tests.e2e.conftest import InstanceFactory, ServerFactory, ServerProcess

pytestmark = pytest.mark.e2e

CLIENTS = 4
MESSAGES = 5
_HTTP = re.compile(r"event=listening kind=http address=127\.0\.0\.1:(\d+)")
_SAMPLE = re.compile(r"^(sendgate_[a-z_]+)(?:\{([^}]*)\})? (\S+)$", re.M)


def curl(*args: str) -> tuple[int, str]:
    """Run curl; (HTTP status, body)."""
    done = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "-w", "\n%{http_code}", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    body, _, status = done.stdout.rpartition("\n")
    return int(status), body


def http_base(running: ServerProcess) -> str:
    [line] = running.matching(_HTTP.pattern)
    match = _HTTP.search(line)
    assert match is not None
    return f"http://127.0.0.1:{match.group(1)}"


def samples(text: str) -> dict[str, float]:
    return {
        f"{name}{{{labels}}}" if labels else name: float(value)
        for name, labels, value in _SAMPLE.findall(text)
    }


def send_mail(running: ServerProcess, implicit: bool, tag: str) -> None:
    client = running.smtps() if implicit else running.smtp()
    with client:
        for number in range(MESSAGES):
            running.submit(client, running.instance.message(f"{tag}-{number}"))


def test_metrics_agree_with_the_log_while_mail_flows(
    instance: InstanceFactory, server: ServerFactory
) -> None:
    made = instance({"http.listen": "127.0.0.1:0", "listen.workers": 2, **UNLIMITED_SENDING})
    running = server(made)
    base = http_base(running)
    failures: list[str] = []

    def client(index: int) -> None:
        try:
            send_mail(running, implicit=index % 2 == 1, tag=f"c{index}")
        except Exception as exc:  # collected: a thread's failure must fail the test
            failures.append(repr(exc))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    status, during = curl(f"{base}/metrics")  # a scrape while mail flows
    assert status == 200
    assert "sendgate_messages_accepted_total" in during
    for thread in threads:
        thread.join()
    assert failures == []
    for _ in range(2):
        with running.smtp(login=False) as anonymous, pytest.raises(smtplib.SMTPAuthenticationError):
            anonymous.login(made.user, "not the password at all")
    running.wait_for(r"event=auth_fail ", count=2)

    status, text = curl(f"{base}/metrics")
    assert status == 200
    found = samples(text)
    log = running.snapshot()

    def lines(pattern: str) -> list[str]:
        return [line for line in log if re.search(pattern, line)]

    accepted = lines(r"event=accepted ")
    assert len(accepted) == CLIENTS * MESSAGES
    assert found["sendgate_messages_accepted_total"] == len(accepted)
    sizes = [int(re.search(r" size=(\d+)", line).group(1)) for line in accepted]  # type: ignore[union-attr]
    assert found["sendgate_message_bytes_total"] == sum(sizes)
    assert found['sendgate_auth_total{result="ok"}'] == len(lines(r"event=auth_ok "))
    failed = lines(r"event=auth_fail ")
    assert len(failed) >= 2  # smtplib tries a second mechanism after the first fails
    assert found['sendgate_auth_total{result="failed"}'] == len(failed)
    by_tls = Counter(re.search(r"tls=(\w+)", line).group(1) for line in lines(r"event=connect "))  # type: ignore[union-attr]
    assert found['sendgate_connections_total{listener="submission"}'] == by_tls["starttls"]
    assert found['sendgate_connections_total{listener="submissions"}'] == by_tls["implicit"]
    assert found['sendgate_tls_sessions_total{version="TLSv1.3"}'] == len(lines(r"event=tls "))
    assert found["sendgate_accept_seconds_count"] == len(accepted)
    # Which acceptor took each connection is the kernel's choice; that the processes' counts
    # add up is proven with forked processes in tests/unit/web/test_metrics.py.
    # Delivery is held in these instances: what was accepted is all still queued.
    assert found["sendgate_queue_messages"] == len(made.queue_ids()) == len(accepted)
    assert found["sendgate_queue_oldest_seconds"] > 0


def test_health_and_the_client_set_up_documents(
    instance: InstanceFactory, server: ServerFactory
) -> None:
    made = instance({"http.listen": "127.0.0.1:0", "http.imap": "imap.example.test:993"})
    running = server(made)
    base = http_base(running)
    # The heartbeats begin as the children start.
    assert wait_until(lambda: curl(f"{base}/healthz")[0] == 200)
    status, body = curl(f"{base}/healthz")
    assert json.loads(body) == {
        "status": "ok",
        "checks": {"listeners": "ok", "spool": "ok", "delivery": "ok"},
    }

    status, body = curl(
        f"{base}/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress={made.user}"
    )
    assert status == 200
    root = ET.fromstring(body)  # noqa: S314 - the document the server under test made
    outgoing = [(s.findtext("port"), s.findtext("socketType")) for s in root.iter("outgoingServer")]
    assert outgoing == [(str(running.tls_port), "SSL"), (str(running.port), "STARTTLS")]
    assert [s.findtext("hostname") for s in root.iter("incomingServer")] == ["imap.example.test"]

    request = (
        '<?xml version="1.0"?><Autodiscover xmlns="http://schemas.microsoft.com/exchange/'
        'autodiscover/outlook/requestschema/2006"><Request>'
        f"<EMailAddress>{made.user}</EMailAddress></Request></Autodiscover>"
    )
    status, body = curl(
        "-X",
        "POST",
        "-H",
        "Content-Type: text/xml",
        "--data",
        request,
        f"{base}/autodiscover/autodiscover.xml",
    )
    assert status == 200
    assert f"<Port>{running.tls_port}</Port><SSL>on</SSL>" in body

    done = subprocess.run(
        [
            "curl",
            "-sS",
            "--max-time",
            "10",
            f"{base}/apple/mail.mobileconfig?emailaddress={made.user}",
        ],
        capture_output=True,
        check=True,
    )
    profile = plistlib.loads(done.stdout)
    assert profile["PayloadContent"][0]["OutgoingMailServerPortNumber"] == running.tls_port

    status, body = curl(f"{base}/nothing-here")
    assert (status, body) == (404, "not found\n")
    status, body = curl("--http1.1", "-X", "BREW", f"{base}/metrics")
    assert status == 405


def test_plain_http_off_loopback_is_refused_at_start(instance: InstanceFactory) -> None:
    made = instance()
    made.configure({"http.listen": "0.0.0.0:0"})
    refused = made.cli("serve")
    assert refused.code == 2
    assert refused.stderr.endswith(
        'http.listen: unsafe setting refused; add "public_http" to unsafe_overrides to allow it\n'
    )

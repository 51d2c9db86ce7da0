"""`sendgate probe` against a deliberately broken server: each flaw is found, with its evidence.

The server (`tests.peers.flawed_smtp`) has each flaw as a switch, so every test also checks the
other side: with the flaw off, its finding is absent.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme
from tests.peers.flawed_smtp import FlawedSmtp, Flaws
from tests.support.tls import server_context

from sendgate.cli import main

Probe = Callable[..., tuple[int, dict[str, dict[str, str]]]]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def flawed(ca: trustme.CA) -> Iterator[Callable[[Flaws], FlawedSmtp]]:
    servers: list[FlawedSmtp] = []

    def start(flaws: Flaws) -> FlawedSmtp:
        context = server_context(ca.issue_cert("localhost", "127.0.0.1"))
        context.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20")  # no CBC: only the flaws asked for
        server = FlawedSmtp(context, flaws)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def probe(
    flawed: Callable[[Flaws], FlawedSmtp],
    ca_file: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Probe:
    """Probe a fresh flawed server; (exit status, findings by code)."""

    def run(flaws: Flaws, *extra: str, password: str = "") -> tuple[int, dict[str, dict[str, str]]]:
        server = flawed(flaws)
        if password:
            monkeypatch.setattr("sys.stdin", _Stdin(password + "\n"))
        code = main(
            ["probe", f"127.0.0.1:{server.port}", "--cafile", str(ca_file), "--json", *extra]
        )
        out, err = capsys.readouterr()
        assert err == ""
        findings = json.loads(out)["findings"]
        return code, {finding["code"]: finding for finding in findings}

    return run


class _Stdin:
    def __init__(self, text: str) -> None:
        self._text = text

    def isatty(self) -> bool:
        return False

    def readline(self) -> str:
        text, self._text = self._text, ""
        return text


def test_a_server_without_flaws_has_no_warning(probe: Probe) -> None:
    code, found = probe(Flaws())
    assert code == 0
    assert {f["severity"] for f in found.values()} == {"info"}
    assert "probe.greeting" in found
    assert "probe.tls" in found


def test_auth_before_tls_is_found(probe: Probe) -> None:
    code, found = probe(Flaws(auth_before_tls=True))
    assert code == 1
    assert found["probe.auth_before_tls"]["severity"] == "critical"
    assert found["probe.auth_before_tls"]["evidence"] == "EHLO in plaintext: 250-AUTH PLAIN LOGIN"
    accepted = found["probe.auth_accepted_before_tls"]
    assert accepted["evidence"] == "AUTH PLAIN in plaintext: 334 "


def test_starttls_injection_is_found(probe: Probe) -> None:
    code, found = probe(Flaws(keeps_injected=True))
    assert code == 1
    finding = found["probe.starttls_injection"]
    assert finding["severity"] == "critical"
    assert "XSENDGATEPROBE" in finding["evidence"]
    assert "500 5.5.2 unknown command" in finding["evidence"]


def test_smuggling_is_found_with_a_login(probe: Probe) -> None:
    code, found = probe(Flaws(lf_lines=True), "--auth", "u@flawed.example.test", password="pw")
    assert code == 1
    # Its lines end at LF with every CR before it stripped, so <CR><LF>.<CR> followed by the
    # real end (<CR><LF>.<CR><LF>) reads as "." too.
    for variant in ("lf_dot_lf", "lf_dot_crlf", "crlf_dot_lf", "crlf_dot_cr"):
        finding = found[f"probe.smuggling_{variant}"]
        assert finding["severity"] == "critical"
        assert "; 500 5.5.2 unknown command" in finding["evidence"]
    # CR alone ends nothing there: those messages were taken whole, with the bare CR inside.
    assert "probe.smuggling_cr_dot_crlf" not in found
    assert found["probe.bare_line_ending_accepted"]["evidence"] == (
        "accepted with these sequences inside: cr_dot_crlf, cr_dot_cr"
    )
    assert found["probe.header_from_unchecked"]["severity"] == "critical"


def test_a_strict_server_shows_no_smuggling(probe: Probe) -> None:
    code, found = probe(Flaws(), "--auth", "u@flawed.example.test", password="pw")
    assert not [c for c in found if c.startswith("probe.smuggling_")]
    # This server checks nothing in the header, and keeps bare line ends inside lines.
    assert {c for c, f in found.items() if f["severity"] != "info"} == {
        "probe.bare_line_ending_accepted",
        "probe.header_from_unchecked",
    }
    assert code == 1


def test_open_relay_and_vrfy_are_found(probe: Probe) -> None:
    code, found = probe(Flaws(open_relay=True, vrfy=True))
    assert code == 1
    assert found["probe.relay_without_auth"]["severity"] == "critical"
    assert found["probe.relay_without_auth"]["evidence"] == (
        "MAIL FROM:<probe@example.net>: 250 2.1.0 ok ; RCPT TO:<probe@example.org>: 250 2.1.5 ok"
    )
    assert found["probe.vrfy_answers"]["evidence"] == (
        "VRFY postmaster: 250 <postmaster@flawed.example.test>"
    )


def test_the_certificate_name_is_checked(probe: Probe) -> None:
    code, found = probe(Flaws(), "--name", "mail.example.test")
    assert code == 1
    finding = found["probe.cert_name_mismatch"]
    assert finding["evidence"] == "names in the certificate: localhost, 127.0.0.1"


def test_an_untrusted_certificate_is_found(probe: Probe, tmp_path: Path) -> None:
    other = tmp_path / "other.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    code, found = probe(Flaws(), "--cafile", str(other))
    assert code == 1
    assert found["probe.cert_untrusted"]["severity"] == "critical"
    assert "unable to get local issuer certificate" in found["probe.cert_untrusted"]["message"]
    # The rest was still probed, over a connection that took any certificate.
    assert "probe.tls" in found

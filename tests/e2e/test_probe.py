"""`sendgate probe` against live servers: sendgate on its defaults and with each unsafe override.

The probe runs as the real CLI in a subprocess. Each test probes a server of its own: a probe
of a server with weaknesses opens a dozen connections without logging in, and a defended
server refuses an address past 20 such connections in 10 seconds.
"""

from __future__ import annotations

import json

import pytest
from tests.e2e.conftest import InstanceFactory, ServerFactory, ServerProcess, run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def probe(
    server: ServerProcess, *extra: str, implicit: bool = False, stdin: str = ""
) -> tuple[int, dict[str, dict[str, str]]]:
    port = server.tls_port if implicit else server.port
    args = ["probe", f"127.0.0.1:{port}", "--cafile", str(server.instance.ca_pem), "--json"]
    result = run_cli([*args, *(["--implicit-tls"] if implicit else []), *extra], stdin=stdin)
    assert result.stderr == ""
    findings = json.loads(result.stdout)["findings"]
    for finding in findings:
        assert set(finding) == {"code", "severity", "message", "evidence", "fix"}
        assert finding["severity"] in ("info", "warning", "critical")
    return result.code, {finding["code"]: finding for finding in findings}


def not_info(found: dict[str, dict[str, str]]) -> dict[str, str]:
    return {code: f["severity"] for code, f in found.items() if f["severity"] != "info"}


def test_sendgate_on_its_defaults_has_no_warning(
    instance: InstanceFactory, server: ServerFactory
) -> None:
    live = server(instance())
    code, found = probe(live, "--auth", live.instance.user, stdin=live.instance.password + "\n")
    assert (code, not_info(found)) == (0, {})
    assert found["probe.tls"]["message"].startswith("TLS works: TLSv1.3 with ")
    assert "STARTTLS" in found["probe.greeting"]["evidence"]
    assert "AUTH" not in found["probe.greeting"]["evidence"]  # not before TLS
    # Every smuggling variant was sent, and refused as a whole message: nothing was unclear.
    assert not [c for c in found if c.startswith("probe.smuggling")]


def test_sendgate_implicit_tls_has_no_warning(
    instance: InstanceFactory, server: ServerFactory
) -> None:
    live = server(instance())
    code, found = probe(live, implicit=True)
    assert (code, not_info(found)) == (0, {})
    assert "AUTH" in found["probe.greeting"]["evidence"]


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (
            {"unsafe_overrides": ["plaintext_auth"], "auth.allow_plaintext": True},
            {"probe.auth_before_tls": "critical", "probe.auth_accepted_before_tls": "critical"},
        ),
        (
            {"unsafe_overrides": ["tls_below_1_2"], "tls.min_version": "1.0"},
            {
                "probe.tls10_accepted": "warning",
                "probe.tls11_accepted": "warning",
                "probe.suite_cbc": "warning",
            },
        ),
    ],
    ids=["plaintext_auth", "tls_below_1_2"],
)
def test_each_unsafe_override_shows_as_its_finding(
    instance: InstanceFactory,
    server: ServerFactory,
    settings: dict[str, bool | str | list[str]],
    expected: dict[str, str],
) -> None:
    live = server(instance(settings))
    code, found = probe(live)
    assert (code, not_info(found)) == (1, expected)


def test_probe_errors_are_one_line_with_exit_status_2() -> None:
    for args, message in (
        (["probe", "127.0.0.1:0x1"], "'127.0.0.1:0x1': port must be a number from 1 to 65535"),
        (["probe", "[::1:25"], "'[::1:25': expected [IPV6]:PORT"),
        (["probe", "127.0.0.1:1", "--cafile", "/nonexistent"], "/nonexistent: no such file"),
    ):
        result = run_cli(args)
        assert (result.code, result.stdout, result.stderr) == (
            2,
            "",
            f"sendgate probe: {message}\n",
        )
    closed = run_cli(["probe", "127.0.0.1:1"])
    assert closed.code == 2
    assert closed.stderr.startswith("sendgate probe: cannot connect to 127.0.0.1:1: ")
    assert closed.stderr.count("\n") == 1

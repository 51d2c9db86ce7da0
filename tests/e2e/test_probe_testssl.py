"""`sendgate probe` against the reference Postfix and against sendgate, checked by testssl.sh.

The reference server (../shared/anchors/postfix-ref, installed by the test) has real
weaknesses in its default configuration: it offers anonymous and CBC suites and reads a bare
LF as a line end, so `<LF>.<LF>` ends its DATA. The probe must find each of them, and on every
TLS question (protocol versions, suite categories) say what testssl.sh (Debian package
testssl.sh) says about the same port in the same test.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.e2e.conftest import InstanceFactory, ServerFactory, TomlScalar, run_cli
from tests.e2e.postfix_ref import RefEnv, running_postfix_ref

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TESTSSL_TIMEOUT = 300.0
# The probe's TLS findings and the testssl.sh JSON ids that answer the same question.
SAME_QUESTION = {
    "probe.ssl3_accepted": "SSLv3",
    "probe.tls10_accepted": "TLS1",
    "probe.tls11_accepted": "TLS1_1",
    "probe.suite_null": "cipherlist_NULL",
    "probe.suite_anonymous": "cipherlist_aNULL",
    "probe.suite_export": "cipherlist_EXPORT",
    "probe.suite_low": "cipherlist_LOW",
    "probe.suite_3des": "cipherlist_3DES_IDEA",
    "probe.suite_cbc": "cipherlist_AVERAGE",
}


@pytest.fixture(scope="module")
def postfix() -> Iterator[RefEnv]:
    with running_postfix_ref() as (_, env):
        yield env


def run_testssl(port: int, tmp_path: Path) -> dict[str, bool]:
    """testssl.sh's answer per question id: offered or not."""
    binary = shutil.which("testssl") or shutil.which("testssl.sh")
    assert binary is not None, "testssl.sh is not installed (scripts/test installs it)"
    report = tmp_path / f"testssl-{port}.json"
    completed = subprocess.run(
        [binary, "--quiet", "--color", "0", "--warnings", "off", "--jsonfile", str(report),
         "--starttls", "smtp", "-p", "-s", f"127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=TESTSSL_TIMEOUT, check=False,
    )  # fmt: skip
    assert report.exists(), completed.stdout[-2000:] + completed.stderr[-2000:]
    entries = {entry["id"]: entry["finding"] for entry in json.loads(report.read_text())}
    missing = set(SAME_QUESTION.values()) - set(entries)
    assert not missing, f"testssl.sh did not answer {missing}: {completed.stdout[-2000:]}"
    return {key: entries[key].startswith("offered") for key in SAME_QUESTION.values()}


def probe(args: list[str], stdin: str = "") -> tuple[int, dict[str, dict[str, str]]]:
    result = run_cli(["probe", *args, "--json"], stdin=stdin)
    assert result.stderr == ""
    return result.code, {f["code"]: f for f in json.loads(result.stdout)["findings"]}


def agreement(found: dict[str, dict[str, str]], testssl_says: dict[str, bool]) -> dict[str, str]:
    """Each question where the two tools disagree, with both answers."""
    return {
        code: f"probe {'found' if code in found else 'did not find'}, testssl.sh says "
        f"{'offered' if testssl_says[ident] else 'not offered'}"
        for code, ident in SAME_QUESTION.items()
        if (code in found) != testssl_says[ident]
    }


def test_probe_finds_the_reference_postfix_weaknesses(postfix: RefEnv, tmp_path: Path) -> None:
    args = [f"127.0.0.1:{postfix.port}", "--cafile", str(postfix.cafile)]
    code, found = probe(
        [*args, "--name", "msa.example.test", "--auth", postfix.user], postfix.password + "\n"
    )
    assert code == 1
    assert found["probe.suite_anonymous"]["severity"] == "critical"
    assert found["probe.suite_cbc"]["severity"] == "warning"
    assert found["probe.smuggling_lf_dot_lf"]["severity"] == "critical"
    assert "500 5.5.2 Error: bad syntax" in found["probe.smuggling_lf_dot_lf"]["evidence"]
    # What it does right: STARTTLS, AUTH only after it, TLS 1.2+ only, a verified certificate.
    for absent in ("probe.auth_before_tls", "probe.starttls_injection", "probe.tls10_accepted",
                   "probe.cert_untrusted", "probe.cert_name_mismatch"):  # fmt: skip
        assert absent not in found
    assert agreement(found, run_testssl(postfix.port, tmp_path)) == {}


def test_probe_and_testssl_agree_on_sendgate_with_tls_1_0(
    instance: InstanceFactory, server: ServerFactory, tmp_path: Path
) -> None:
    settings: dict[str, TomlScalar] = {
        "unsafe_overrides": ["tls_below_1_2"],
        "tls.min_version": "1.0",
    }
    # testssl.sh opens dozens of connections without a login: lift the rate cap for it.
    live = server(instance({**settings, "limits.unauthenticated_rate_per_ip": 0}))
    code, found = probe([f"127.0.0.1:{live.port}", "--cafile", str(live.instance.ca_pem)])
    assert code == 1
    assert {"probe.tls10_accepted", "probe.tls11_accepted", "probe.suite_cbc"} <= set(found)
    says = run_testssl(live.port, tmp_path)
    assert agreement(found, says) == {}
    assert says["TLS1"]

"""Real mail clients submit through a live `sendgate serve`; the spool holds exactly their bytes.

swaks, msmtp, curl, `openssl s_client` and smtplib each send one message over 587 (STARTTLS)
and over 465 (implicit TLS), verifying the server against the test CA. Each message carries its
own Message-ID and Date, so the server must store the client's bytes with only a Received field
in front. The negative tests show that no client gets mail in without TLS and AUTH.
"""

from __future__ import annotations

import re
import secrets
import smtplib
import ssl
import subprocess
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.e2e.conftest import ServerProcess

pytestmark = pytest.mark.e2e

RCPT = "bob@example.org"
# Short, so that a stalled client costs seconds, not minutes.
CLIENT_TIMEOUT = 4
TOOL_TIMEOUT = CLIENT_TIMEOUT + 3  # a backstop for tools whose own timeout misses the handshake

ClientRun = Callable[["ServerProcess", bytes, bool, Path], str]


def _message(client: str, implicit_tls: bool) -> bytes:
    """A message unique to this run, with a line that the client must dot-stuff."""
    kind = "465" if implicit_tls else "587"
    token = secrets.token_hex(6)
    lines = [
        "From: Alice <alice@example.test>",
        f"To: {RCPT}",
        f"Subject: sent by {client} on {kind}",
        f"Message-ID: <{client}-{kind}-{token}@example.test>",
        f"Date: {format_datetime(datetime.now(UTC))}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        f"Hello from {client} ({token}).",
        ".a line starting with a dot, stuffed on the wire and unstuffed by the server",
        "",
        "last line",
        "",
    ]
    return "\r\n".join(lines).encode()


def _run(argv: list[str], *, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False
    )


def _dot_stuffed(message: bytes) -> bytes:
    lines = message.split(b"\r\n")
    return b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)


# --- one function per client: send `message`, assert the client saw success ----------------------


def _swaks(server: ServerProcess, message: bytes, implicit_tls: bool, workdir: Path) -> str:
    data = workdir / "swaks.eml"
    # swaks always writes CRLF before the final ".", so the file leaves out the last CRLF.
    data.write_bytes(message.removesuffix(b"\r\n"))
    instance = server.instance
    result = _run(
        [
            "swaks",
            "--server", "127.0.0.1",
            "--port", str(server.tls_port if implicit_tls else server.port),
            "--tls-on-connect" if implicit_tls else "--tls",
            "--tls-verify",
            "--tls-ca-path", str(instance.ca_pem),
            "--helo", "client.example",
            "--timeout", f"{CLIENT_TIMEOUT}s",
            "--auth", "PLAIN",
            "--auth-user", instance.user,
            "--auth-password", instance.password,
            "--from", instance.user,
            "--to", RCPT,
            "--data", f"@{data}",
        ]
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<~  250 2.0.0 queued as " in result.stdout
    return result.stdout


def _msmtp(server: ServerProcess, message: bytes, implicit_tls: bool, workdir: Path) -> str:
    instance = server.instance
    rc = workdir / "msmtprc"
    rc.write_text(
        "\n".join(
            [
                "account sendgate",
                "host 127.0.0.1",
                f"port {server.tls_port if implicit_tls else server.port}",
                "tls on",
                f"tls_starttls {'off' if implicit_tls else 'on'}",
                f"tls_trust_file {instance.ca_pem}",
                "auth plain",
                f"user {instance.user}",
                f"password {instance.password}",
                f"from {instance.user}",
                "domain client.example",
                f"timeout {CLIENT_TIMEOUT}",
                "",
            ]
        )
    )
    rc.chmod(0o600)  # msmtp refuses a config file with a password that others can read
    result = subprocess.run(
        ["msmtp", "--debug", "-C", str(rc), "-a", "sendgate", RCPT],
        input=message,
        capture_output=True,
        timeout=TOOL_TIMEOUT,
        check=False,
    )
    output = (result.stdout + result.stderr).decode("utf-8", "replace")
    assert result.returncode == 0, output
    assert "<-- 250 2.0.0 queued as " in output
    return output


def _curl(server: ServerProcess, message: bytes, implicit_tls: bool, workdir: Path) -> str:
    instance = server.instance
    upload = workdir / "curl.eml"
    upload.write_bytes(message)
    if implicit_tls:
        url, tls = f"smtps://127.0.0.1:{server.tls_port}/client.example", []
    else:
        url, tls = f"smtp://127.0.0.1:{server.port}/client.example", ["--ssl-reqd"]
    result = _run(
        [
            "curl", "--verbose", "--silent", "--show-error", *tls,
            "--max-time", str(CLIENT_TIMEOUT),
            "--cacert", str(instance.ca_pem),
            "--mail-from", instance.user,
            "--mail-rcpt", RCPT,
            "--user", f"{instance.user}:{instance.password}",
            "--upload-file", str(upload),
            url,
        ]
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "< 250 2.0.0 queued as " in result.stderr
    return result.stderr


def _openssl(server: ServerProcess, message: bytes, implicit_tls: bool, workdir: Path) -> str:
    instance = server.instance
    script = b"".join(
        [
            b"EHLO client.example\r\n",
            f"AUTH PLAIN {instance.auth_plain()}\r\n".encode(),
            f"MAIL FROM:<{instance.user}>\r\n".encode(),
            f"RCPT TO:<{RCPT}>\r\n".encode(),
            b"DATA\r\n",
            _dot_stuffed(message),
            b".\r\nQUIT\r\n",
        ]
    )
    result = subprocess.run(
        _s_client(server, implicit_tls),
        input=script,
        capture_output=True,
        timeout=TOOL_TIMEOUT,
        check=False,
    )
    output = result.stdout.decode("utf-8", "replace")
    assert result.returncode == 0, output + result.stderr.decode("utf-8", "replace")
    assert "235 2.7.0 " in output
    assert "250 2.0.0 queued as " in output
    assert output.rstrip().endswith("221 2.0.0 Bye")
    return output


def _s_client(server: ServerProcess, implicit_tls: bool) -> list[str]:
    """`openssl s_client` verifying the server's IP address against the test CA."""
    port = server.tls_port if implicit_tls else server.port
    argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}"]
    if not implicit_tls:
        argv += ["-starttls", "smtp"]
    # -quiet implies -ign_eof: keep reading after stdin ends until the server closes.
    return [
        *argv,
        "-CAfile", str(server.instance.ca_pem),
        "-verify_return_error",
        "-verify_ip", "127.0.0.1",
        "-quiet",
        "-nocommands",
    ]  # fmt: skip


def _smtplib(server: ServerProcess, message: bytes, implicit_tls: bool, workdir: Path) -> str:
    if implicit_tls:
        client: smtplib.SMTP = server.smtps(timeout=CLIENT_TIMEOUT)
    else:
        client = server.smtp(timeout=CLIENT_TIMEOUT)
    with client:
        queue_id = server.submit(client, message, rcpt=RCPT)
    return f"queued as {queue_id}"


CLIENTS: Mapping[str, ClientRun] = MappingProxyType(
    {"swaks": _swaks, "msmtp": _msmtp, "curl": _curl, "openssl": _openssl, "smtplib": _smtplib}
)


# --- the checks ----------------------------------------------------------------------------------


def _check_stored(server: ServerProcess, queue_id: str, sent: bytes) -> None:
    """The spool holds one Received field followed by exactly the bytes the client sent."""
    spool = server.instance.spool()
    stored = spool.message(queue_id)
    envelope = spool.envelope(queue_id)
    assert envelope.size == len(stored)
    assert (envelope.sender, envelope.recipients, envelope.user) == (
        server.instance.user,
        (RCPT,),
        server.instance.user,
    )
    assert stored.endswith(sent), stored
    received = stored[: len(stored) - len(sent)]
    fields = received.split(b"\r\n")
    assert fields[0].startswith(b"Received: from ")
    assert fields[-1] == b""  # the field ends with CRLF
    assert all(line.startswith(b"\t") for line in fields[1:-1]), received
    text = received.decode()
    assert "by mx.example.test (sendgate) with ESMTPSA id " + queue_id in text
    assert re.search(r"\(using TLSv1\.[23] with cipher [A-Z0-9_-]+ \(\d+ bits\)\);", text), text
    assert "127.0.0.1" not in text


@pytest.mark.parametrize("implicit_tls", [False, True], ids=["587", "465"])
@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_client_submits_one_message(
    shared_server: ServerProcess, tmp_path: Path, client: str, implicit_tls: bool
) -> None:
    instance = shared_server.instance
    before = set(instance.queue_ids())
    message = _message(client, implicit_tls)

    output = CLIENTS[client](shared_server, message, implicit_tls, tmp_path)

    new = set(instance.queue_ids()) - before
    assert len(new) == 1, new
    (queue_id,) = new
    assert f"queued as {queue_id}" in output
    _check_stored(shared_server, queue_id, message)
    listed = instance.cli("queue", "list").ok().stdout.splitlines()
    assert len(listed) == len(before) + 1
    assert [line for line in listed if line.startswith(queue_id + " ")] != []


# --- without TLS or AUTH nothing gets in ---------------------------------------------------------


def test_curl_without_ssl_reqd_cannot_authenticate(shared_server: ServerProcess) -> None:
    instance = shared_server.instance
    before = instance.queue_ids()

    result = _run(
        [
            "curl", "--verbose", "--silent", "--show-error",
            "--mail-from", instance.user, "--mail-rcpt", RCPT,
            "--user", f"{instance.user}:{instance.password}",
            "--upload-file", "-",
            f"smtp://127.0.0.1:{shared_server.port}/client.example",
        ],
        stdin=_message("curl", False).decode(),
    )  # fmt: skip

    # No AUTH offered in plaintext, so curl goes on unauthenticated and MAIL is refused.
    assert "AUTH" not in "".join(re.findall(r"^< 250[ -].*$", result.stderr, re.M))
    assert "< 530 5.7.0 " in result.stderr
    assert result.returncode == 55, result.stderr  # CURLE_SEND_ERROR: "MAIL failed: 530"
    assert instance.queue_ids() == before


def test_smtplib_login_before_starttls_is_refused(shared_server: ServerProcess) -> None:
    instance = shared_server.instance
    before = instance.queue_ids()
    with smtplib.SMTP("127.0.0.1", shared_server.port, "client.example", 20) as client:
        client.ehlo()
        assert not client.has_extn("auth")
        assert client.has_extn("starttls")

        with pytest.raises(smtplib.SMTPNotSupportedError):
            client.login(instance.user, instance.password)
        code, text = client.docmd("AUTH", f"PLAIN {instance.auth_plain()}")
        assert (code, text) == (530, b"5.7.0 Must issue a STARTTLS command first")
        code, text = client.mail(instance.user)
        assert (code, text[:5]) == (530, b"5.7.0")
    assert instance.queue_ids() == before


def test_smtplib_without_auth_is_refused_after_starttls(shared_server: ServerProcess) -> None:
    instance = shared_server.instance
    before = instance.queue_ids()
    with shared_server.smtp(login=False) as client:
        code, text = client.mail(instance.user)
        assert (code, text[:5]) == (530, b"5.7.0")
        code, _ = client.rcpt(RCPT)
        assert code == 503
    assert instance.queue_ids() == before


def test_swaks_without_tls_cannot_authenticate(shared_server: ServerProcess) -> None:
    instance = shared_server.instance
    before = instance.queue_ids()

    result = _run(
        [
            "swaks", "--server", "127.0.0.1", "--port", str(shared_server.port),
            "--auth", "PLAIN", "--auth-user", instance.user,
            "--auth-password", instance.password,
            "--from", instance.user, "--to", RCPT,
        ]
    )  # fmt: skip

    assert result.returncode != 0, result.stdout
    assert "*** Host did not advertise authentication" in result.stdout + result.stderr
    assert "queued as" not in result.stdout
    assert instance.queue_ids() == before


def test_msmtp_without_tls_cannot_authenticate(
    shared_server: ServerProcess, tmp_path: Path
) -> None:
    instance = shared_server.instance
    before = instance.queue_ids()
    rc = tmp_path / "msmtprc"
    rc.write_text(
        f"account plain\nhost 127.0.0.1\nport {shared_server.port}\ntls off\nauth plain\n"
        f"user {instance.user}\npassword {instance.password}\nfrom {instance.user}\n"
    )
    rc.chmod(0o600)

    result = subprocess.run(
        ["msmtp", "-C", str(rc), "-a", "plain", RCPT],
        input=_message("msmtp", False),
        capture_output=True,
        timeout=TOOL_TIMEOUT,
        check=False,
    )

    assert result.returncode != 0
    assert b"authentication" in result.stderr.lower()
    assert instance.queue_ids() == before


def test_openssl_without_auth_is_refused(shared_server: ServerProcess) -> None:
    instance = shared_server.instance
    before = instance.queue_ids()
    script = (
        f"EHLO client.example\r\nMAIL FROM:<{instance.user}>\r\nRCPT TO:<{RCPT}>\r\n"
        "DATA\r\nQUIT\r\n"
    ).encode()

    result = subprocess.run(
        _s_client(shared_server, implicit_tls=False),
        input=script,
        capture_output=True,
        timeout=TOOL_TIMEOUT,
        check=False,
    )

    output = result.stdout.decode()
    assert "530 5.7.0 Authentication required" in output
    assert "354" not in output
    assert output.rstrip().endswith("221 2.0.0 Bye")
    assert instance.queue_ids() == before


def test_clients_verify_the_certificate(shared_server: ServerProcess) -> None:
    """Without the test CA the clients refuse the server: verification really is on."""
    client = smtplib.SMTP("127.0.0.1", shared_server.port, "client.example", 20)
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            client.starttls(context=ssl.create_default_context())
    finally:
        client.close()
    result = _run(
        [
            "curl", "--silent", "--ssl-reqd", "--max-time", str(CLIENT_TIMEOUT),
            f"smtp://127.0.0.1:{shared_server.port}/client.example",
        ]
    )  # fmt: skip
    assert result.returncode == 60  # CURLE_PEER_FAILED_VERIFICATION


def test_wrong_password_is_refused(shared_server: ServerProcess) -> None:
    instance = shared_server.instance
    with shared_server.smtp(login=False) as client:
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.login(instance.user, instance.password + "x")
        assert refused.value.smtp_code == 535

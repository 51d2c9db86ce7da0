"""Tests for sendgate.service: the session settings, the event loop, and `serve` end to end.

`serve` runs in a forked child (a process group of its own) on a config made by
`init_instance` with a trustme certificate, one worker and delivery held, listening on free
loopback ports. The test waits on its log lines, talks to it with smtplib, and stops it with a
real SIGTERM. Refusals to start go through the command line, whose exit code and one-line error
are what people see.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import smtplib
import socket
import stat
import sys
from pathlib import Path

import pytest
import trustme
import uvloop
from tests.support.forked import WAIT, Forked
from tests.support.tls import client_context

from sendgate.cli import main as cli_main
from sendgate.config.load import load_config
from sendgate.config.schema import Config
from sendgate.dkim.keys import generate_key
from sendgate.errors import SendgateError
from sendgate.policy.passwords import hash_password, new_hasher
from sendgate.scaffold import init_instance
from sendgate.service import _bind_local, run_loop, serve, session_settings
from sendgate.smtp.session import SessionSettings
from sendgate.store.backends import open_stores
from sendgate.store.envelope import Envelope

HOSTNAME = "mx.example.test"
USER = "alice@example.test"
PASSWORD = "correct horse battery staple 42"
RECIPIENT = "bob@example.org"
MESSAGE = b"Subject: hi\r\n\r\nbody\r\n"
# One worker, and nothing leaves: a held runner never looks up the recipients' MX hosts.
# No scheduled audit: its live probe and DNS lookups are not what these tests look at.
SERVING = {
    "workers = 0": "workers = 1",
    "hold = false": "hold = true",
    "interval = 86400": "interval = 0",
}
_LISTENING = re.compile(r"event=listening kind=(submissions?) address=127\.0\.0\.1:(\d+)")
_QUEUED = re.compile(r"^2\.0\.0 queued as ([0-9A-Z]{18})$")


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def config_path(tmp_path: Path, ca: trustme.CA) -> Path:
    """An instance made by `init_instance` with a certificate from the test CA."""
    leaf = ca.issue_cert("localhost", "127.0.0.1", HOSTNAME)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    key.chmod(0o600)
    return init_instance(
        tmp_path / "sg",
        hostname=HOSTNAME,
        submission="127.0.0.1:0",
        submissions="127.0.0.1:0",
        cert=cert,
        key=key,
    )


def configure(path: Path, changes: dict[str, str]) -> Config:
    """Replace whole lines that `init_instance` wrote, then load the file as `serve` would."""
    text = path.read_text()
    for old, new in changes.items():
        assert text.count(f"\n{old}\n") == 1, f"{old!r} is not one line of {path}"
        text = text.replace(f"\n{old}\n", f"\n{new}\n")
    path.write_text(text)
    return load_config(path)


def serving(cfg: Config, path: Path) -> Forked:
    return Forked(lambda log: serve(cfg, log, path))


def ports(server: Forked) -> dict[str, int]:
    """The ports `serve` logged it listens on, by kind, once it is ready."""
    server.wait_for("event=ready")
    found = {}
    for line in server.matching("event=listening"):
        match = _LISTENING.search(line)
        assert match is not None, line
        found[match[1]] = int(match[2])
    return found


def stop(server: Forked) -> None:
    """SIGTERM once the supervisor handles it; it must exit 0 with every child stopped."""
    server.wait_for("event=workers_started")
    server.signal(signal.SIGTERM)
    assert server.wait() == 0, server.text()
    assert server.matching("event=stopped code=0")
    assert server.matching("event=child_error") == []


def first_line(sock: socket.socket) -> bytes:
    """What the server sends first, up to its first CRLF."""
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(1)
        assert chunk, f"closed after {data!r}"
        data += chunk
    return data


def events(lines: list[str]) -> list[str]:
    return [match[1] for line in lines if (match := re.search(r" event=(\S+)", line))]


def people_lines(text: str) -> list[str]:
    """What the command line printed for people on stderr (the log lines start with ts=)."""
    return [line for line in text.splitlines() if not line.startswith("ts=")]


# --- session_settings and run_loop -----------------------------------------------------------


def test_session_settings_follow_the_defaults(config_path: Path) -> None:
    assert session_settings(load_config(config_path)) == SessionSettings(
        hostname=HOSTNAME,
        max_message_size=26214400,
        max_recipients=100,
        max_errors=10,
        tls_available=True,
        auth_required=True,
        auth_without_tls=False,
    )


def test_session_settings_map_each_setting(config_path: Path) -> None:
    cfg = configure(
        config_path,
        {
            "unsafe_overrides = []": 'unsafe_overrides = ["no_auth", "plaintext_auth"]',
            "max_message_size = 26214400": "max_message_size = 1048576",
            "max_recipients = 100": "max_recipients = 7",
            "max_errors = 10": "max_errors = 3",
            "required = true": "required = false",
            "allow_plaintext = false": "allow_plaintext = true",
        },
    )
    assert session_settings(cfg) == SessionSettings(
        hostname=HOSTNAME,
        max_message_size=1048576,
        max_recipients=7,
        max_errors=3,
        tls_available=True,  # the certificates are required: STARTTLS is always offered
        auth_required=False,
        auth_without_tls=True,
    )


def test_run_loop_runs_on_uvloop_when_it_is_installed() -> None:
    loops: list[asyncio.AbstractEventLoop] = []

    async def main() -> None:
        loops.append(asyncio.get_running_loop())

    run_loop(main)
    assert len(loops) == 1
    assert isinstance(loops[0], uvloop.Loop)
    assert loops[0].is_closed()


def test_run_loop_falls_back_to_asyncio_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` raises ImportError
    loops: list[asyncio.AbstractEventLoop] = []

    async def main() -> None:
        loops.append(asyncio.get_running_loop())

    run_loop(main)
    assert len(loops) == 1
    assert not isinstance(loops[0], uvloop.Loop)
    assert isinstance(loops[0], asyncio.BaseEventLoop)


# --- serve -----------------------------------------------------------------------------------


def test_serve_starts_logs_what_it_found_and_stops_on_sigterm(
    config_path: Path, ca: trustme.CA
) -> None:
    cfg = configure(
        config_path,
        {
            **SERVING,
            "unsafe_overrides = []": 'unsafe_overrides = ["plaintext_auth", "world_readable_key"]',
            "allow_plaintext = false": "allow_plaintext = true",
        },
    )
    cfg.tls.certificates[0].key.chmod(0o640)
    generate_key(cfg.dkim.key_dir, "example.test", "s1", "ed25519")
    stores = open_stores(cfg)
    try:
        kept = stores.queue.new_id()
        stores.queue.put(
            Envelope(kept, USER, (RECIPIENT,), USER, 0.0, len(MESSAGE)),
            MESSAGE,
        )
        broken = stores.queue.new_id()
    finally:
        stores.close()
    spool = cfg.data_dir / "spool"
    (spool / "queue" / broken).write_bytes(b"not an envelope\n" + MESSAGE)
    (spool / "tmp" / "01HX0000000000PART").write_bytes(b"half a message")

    with serving(cfg, config_path) as server:
        found = ports(server)
        assert set(found) == {"submission", "submissions"}
        assert 0 not in found.values()
        banner = f"220 {HOSTNAME} ESMTP ready\r\n".encode()
        with socket.create_connection(("127.0.0.1", found["submission"]), WAIT) as plain:
            assert first_line(plain) == banner
        with (
            socket.create_connection(("127.0.0.1", found["submissions"]), WAIT) as raw,
            client_context(ca).wrap_socket(raw, server_hostname="localhost") as implicit,
        ):
            assert first_line(implicit) == banner
        held = server.wait_for("event=delivery_held")
        stop(server)

    assert "runner=delivery" in held  # the child after the acceptors is the delivery runner
    supervisor_events = ["unsafe_override", "spool_swept", "dkim_key", "listening", "ready"]
    # The ports are bound first: a serve started as root gives root up right after.
    assert [e for e in events(server.lines) if e in supervisor_events] == [
        "unsafe_override",
        "unsafe_override",
        "listening",
        "listening",
        "spool_swept",
        "dkim_key",
        "ready",
    ]
    overrides = server.matching("event=unsafe_override")
    assert [line.split(" setting=")[1].split()[0] for line in overrides] == [
        "plaintext_auth",
        "world_readable_key",
    ]
    assert all("level=warning" in line for line in overrides)
    assert server.wait_for("event=spool_swept").endswith(
        f"tmp_removed=1 restored=0 corrupt={broken} queued=1"
    )
    assert server.wait_for("event=dkim_key").endswith(
        "domain=example.test selector=s1 algorithm=ed25519"
    )
    assert server.wait_for("event=ready").endswith(f"workers=1 hostname={HOSTNAME}")


def test_a_message_submitted_over_starttls_with_auth_is_queued(
    config_path: Path, ca: trustme.CA
) -> None:
    cfg = configure(config_path, SERVING)
    stores = open_stores(cfg)
    try:
        stores.users.add_user(USER, hash_password(new_hasher(), PASSWORD))
    finally:
        stores.close()

    with serving(cfg, config_path) as server:
        port = ports(server)["submission"]
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example", timeout=WAIT) as c:
            c.starttls(context=client_context(ca))
            c.login(USER, PASSWORD)
            assert c.mail(USER)[0] == 250
            assert c.rcpt(RECIPIENT)[0] == 250
            code, text = c.data(f"From: {USER}\r\nTo: {RECIPIENT}\r\nSubject: hi\r\n\r\nhello\r\n")
        assert code == 250
        match = _QUEUED.match(text.decode())
        assert match is not None, text
        queue_id = match[1]
        accepted = server.wait_for(f"event=accepted .*queue_id={queue_id}")
        stop(server)

    assert "worker=0" in accepted
    assert f"user={USER}" in accepted
    stores = open_stores(cfg)
    try:
        assert stores.queue.ids() == [queue_id]
        envelope = stores.queue.envelope(queue_id)
        assert (envelope.sender, envelope.recipients, envelope.user) == (USER, (RECIPIENT,), USER)
        assert stores.queue.message(queue_id).endswith(b"\r\n\r\nhello\r\n")
    finally:
        stores.close()


def _cli_serve(config: Path) -> Forked:
    """`sendgate --config CONFIG serve` in a forked child; its stderr is the test's capture."""
    return Forked(lambda _log: cli_main(["--config", str(config), "serve"]))


def test_a_port_in_use_stops_serve_with_one_line_naming_it(
    config_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        configure(
            config_path,
            {**SERVING, 'submissions = ["127.0.0.1:0"]': f'submissions = ["127.0.0.1:{port}"]'},
        )
        with _cli_serve(config_path) as child:
            assert child.wait() == 1
    err = capfd.readouterr().err
    assert people_lines(err) == [f"sendgate: cannot listen on 127.0.0.1:{port}: {os.strerror(98)}"]
    assert "event=workers_started" not in err
    assert "event=ready" not in err


def test_a_bad_delivery_ca_file_stops_serve_before_it_listens(
    config_path: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    ca_file = tmp_path / "empty.pem"
    ca_file.write_text("")
    configure(config_path, {**SERVING, 'ca_file = ""': f'ca_file = "{ca_file}"'})
    with _cli_serve(config_path) as child:
        assert child.wait() == 2  # a configuration error
    err = capfd.readouterr().err
    assert people_lines(err) == [
        f"sendgate: delivery.ca_file: cannot load CA certificates from {ca_file}: "
        "NO_CERTIFICATE_OR_CRL_FOUND"
    ]
    assert "event=listening" not in err
    assert "event=workers_started" not in err


def test_the_sendmail_socket_replaces_a_stale_socket_and_nothing_else(tmp_path: Path) -> None:
    path = tmp_path / "sendmail.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # what a killed serve leaves behind
    sock = _bind_local(path)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666
    finally:
        sock.close()
    path.unlink()
    path.write_text("not a socket")
    with pytest.raises(SendgateError) as caught:
        _bind_local(path)
    assert str(caught.value) == f"cannot listen on {path}: Address already in use"
    assert path.read_text() == "not a socket"

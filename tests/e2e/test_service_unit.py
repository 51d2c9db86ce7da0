"""`serve` as a system service: the systemd unit in contrib/, sd_notify, and giving up root.

The unit is checked by systemd's own `systemd-analyze verify` and `security` (its exposure score
printed as a figure). The notifications go to a datagram socket the test binds as systemd would
and names in $NOTIFY_SOCKET. Giving up root runs a real `serve` as root with `service.user =
"nobody"` and reads the processes' user ids from /proc.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.e2e.conftest import InstanceFactory, ServerFactory

pytestmark = pytest.mark.e2e

UNIT = Path(__file__).resolve().parents[2] / "contrib" / "systemd" / "sendgate.service"
MAX_EXPOSURE = 2.0  # systemd's scale: 0 (sandboxed) to 10 (exposed); below 2 reads "OK"


@pytest.fixture
def unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's sendgate (verify runs it)."""
    executable = Path(sys.executable).parent / "sendgate"
    assert executable.is_file()
    text = UNIT.read_text().replace("/usr/local/bin/sendgate", str(executable))
    path = tmp_path / "sendgate.service"
    path.write_text(text)
    return path


def test_systemd_verifies_the_unit(unit: Path) -> None:
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_the_unit_is_sandboxed(unit: Path) -> None:
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
    )
    match = re.search(r"Overall exposure level for sendgate\.service: (\d+\.\d+)", done.stdout)
    assert match is not None, done.stdout[-500:] + done.stderr
    exposure = float(match.group(1))
    print(f"figure: systemd-analyze security exposure {exposure}")
    assert exposure <= MAX_EXPOSURE
    for setting in ("User=", "CapabilityBoundingSet=", "ProtectSystem=", "NoNewPrivileges="):
        assert re.search(rf"✓ {setting}", done.stdout), setting


@pytest.fixture
def systemd_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd's, named in $NOTIFY_SOCKET."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(30)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def test_systemd_hears_ready_reloading_and_stopping(
    instance: InstanceFactory, server: ServerFactory, systemd_socket: socket.socket
) -> None:
    running = server(instance())
    ready = systemd_socket.recv(4096).decode()
    assert ready.startswith("READY=1\nSTATUS=serving, 1 acceptors\nMAINPID=")
    assert running.proc is not None
    assert ready.endswith(f"MAINPID={running.proc.pid}")
    assert running.matching("event=workers_started")  # ready only once the children run

    running.send_signal(signal.SIGHUP)
    reloading = systemd_socket.recv(4096).decode()
    assert re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=\d+", reloading)
    assert systemd_socket.recv(4096) == b"READY=1"

    assert running.stop() == 0
    assert systemd_socket.recv(4096) == b"STOPPING=1"


def uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^Uid:\s+(\d+)\s+(\d+)\s+(\d+)", status, re.M)
    assert match is not None
    real, effective, saved = map(int, match.groups())
    assert real == effective == saved  # no way back: all three changed
    return real


def test_serve_started_as_root_runs_as_the_service_user(
    instance: InstanceFactory,
    server: ServerFactory,
    open_directory: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    nobody = pwd.getpwnam("nobody")
    made = instance()
    made.configure({"service.user": "nobody"})  # after `user add`, which runs as root here
    if os.geteuid() != 0:
        refused = made.cli("serve")
        assert refused.code == 1
        assert "only root can switch users" in refused.stderr
        return
    # The instance moves where nobody can reach it, and becomes nobody's (data, keys, config).
    home = open_directory / "sg"
    shutil.copytree(made.directory, home)
    for tls_file in (made.cert, made.key):
        shutil.copy2(tls_file, home / tls_file.name)
    text = (home / "sendgate.toml").read_text()
    text = text.replace(str(made.cert), str(home / made.cert.name))
    text = text.replace(str(made.key), str(home / made.key.name))
    (home / "sendgate.toml").write_text(text)
    for path in [home, *home.rglob("*")]:
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    moved = dataclasses.replace(
        made,
        directory=home,
        config=home / "sendgate.toml",
        data_dir=home / "data",
        cert=home / made.cert.name,
        key=home / made.key.name,
    )

    # Under `coverage run` the server would write its data, as nobody, where only root may.
    monkeypatch.delenv("COVERAGE_PROCESS_CONFIG", raising=False)
    running = server(moved)
    running.wait_for(rf"event=user user=nobody uid={nobody.pw_uid} gid={nobody.pw_gid}$")
    assert running.proc is not None
    assert uid_of(running.proc.pid) == nobody.pw_uid
    assert {uid_of(pid) for pid in (*running.worker_pids, running.runner_pid)} == {nobody.pw_uid}
    with running.smtp() as client:
        queue_id = running.submit(client, moved.message("as nobody"))
    spooled = next((home / "data" / "spool").rglob(queue_id))
    assert spooled.stat().st_uid == nobody.pw_uid

"""Helpers that run the reference Postfix (../shared/anchors/postfix-ref) as a private instance.

`running_postfix_ref()` sets up and starts Postfix, Dovecot and Postfix's smtp-sink under
`STATE_DIR` on their own ports (11587 STARTTLS, 11465 implicit TLS, 11025 sink), so they never
clash with a benchmark instance on the script's defaults, and stops them afterwards. A file lock
lets only one such instance run at a time on this machine (pytest-xdist workers, parallel runs);
an instance left running by a killed run is stopped through the script's PID files first.
`setup` apt-installs postfix and dovecot when missing: it needs root, and the first run on a
cold machine takes longer (see `SETUP_TIMEOUT`).

Security: the script runs as root with an environment stripped of any inherited REF_* setting.
Postfix's log and the sink's dumps are only read and matched, never executed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2].parent / "shared" / "anchors" / "postfix-ref"
# Fixed, short (the script allows 60 characters), so a killed run's instance is found again.
STATE_DIR = Path("/tmp/sendgate-e2e-postfix-ref")
LOCK_FILE = Path("/tmp/sendgate-e2e-postfix-ref.lock")
PORT = 11587
TLS_PORT = 11465
SINK_PORT = 11025
SETUP_TIMEOUT = 900.0  # apt-get update + install on a cold machine
COMMAND_TIMEOUT = 120.0  # start and stop wait up to 15 s per daemon
SINK_TIMEOUT = 60.0
POLL_INTERVAL = 0.05
# The names `postfix-ref env` exports, in the order `env()` reads them back.
_ENV_NAMES = (
    "REF_HOST", "REF_PORT", "REF_TLS_PORT", "REF_USER", "REF_PASSWORD", "REF_RCPT",
    "REF_CAFILE", "REF_PIDS", "REF_SINK_PORT", "REF_SINK_DIR", "REF_STATE_DIR",
)  # fmt: skip
# "postfix/cleanup[123]: 3FE7D7E6001: ..." (smtpd logs as "postfix-ref/submission/smtpd").
_POSTFIX_QUEUE_ID = re.compile(r" postfix[\w/-]*\[\d+\]: ([0-9A-F]{6,}): ")


@dataclass(frozen=True, slots=True)
class RefEnv:
    """What `postfix-ref env` exports for a running instance."""

    host: str
    port: int
    tls_port: int
    user: str
    password: str
    rcpt: str
    cafile: Path
    pids: tuple[int, ...]
    sink_port: int
    sink_dir: Path
    state_dir: Path

    @property
    def postfix_log(self) -> Path:
        return self.state_dir / "log" / "postfix.log"


class PostfixRef:
    """The `postfix-ref` script bound to one state directory and port set."""

    def __init__(
        self,
        state_dir: Path = STATE_DIR,
        *,
        port: int = PORT,
        tls_port: int = TLS_PORT,
        sink_port: int = SINK_PORT,
    ) -> None:
        self.state_dir = state_dir
        self.ports = (port, tls_port, sink_port)
        self.setup_seconds = 0.0

    def _environment(self) -> dict[str, str]:
        # Inherited REF_* settings (a shell that eval'ed a benchmark instance) must not leak in.
        env = {name: value for name, value in os.environ.items() if not name.startswith("REF_")}
        port, tls_port, sink_port = self.ports
        env.update(
            REF_STATE_DIR=str(self.state_dir),
            REF_PORT=str(port),
            REF_TLS_PORT=str(tls_port),
            REF_SINK_PORT=str(sink_port),
        )
        return env

    def run(self, command: str, *, timeout: float = COMMAND_TIMEOUT) -> str:
        """Run `postfix-ref COMMAND`; its stdout, or an AssertionError quoting its stderr."""
        done = subprocess.run(
            ["bash", str(SCRIPT), command],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=self._environment(),
            timeout=timeout,
            check=False,
        )
        assert done.returncode == 0, (
            f"postfix-ref {command} exited {done.returncode}:\n{done.stderr}{done.stdout}"
        )
        return done.stdout

    def setup(self) -> None:
        started = time.monotonic()
        self.run("setup", timeout=SETUP_TIMEOUT)
        self.setup_seconds = time.monotonic() - started

    def start(self) -> None:
        self.run("start")

    def stop(self) -> None:
        self.run("stop")

    def env(self) -> RefEnv:
        """The instance's settings, as `eval "$(postfix-ref env)"` gives them to a shell."""
        # bash evaluates the script's quoting; it prints the values NUL-separated, in order.
        printer = 'eval "$(bash "$0" env)" && printf "%s\\0" ' + " ".join(
            f'"${name}"' for name in _ENV_NAMES
        )
        done = subprocess.run(
            ["bash", "-c", printer, str(SCRIPT)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=self._environment(),
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
        assert done.returncode == 0, f"postfix-ref env failed:\n{done.stderr.decode()}"
        values = done.stdout.decode().split("\0")
        assert len(values) == len(_ENV_NAMES) + 1, done.stdout
        assert values.pop() == "", done.stdout  # after the last NUL
        got = dict(zip(_ENV_NAMES, values, strict=True))
        return RefEnv(
            host=got["REF_HOST"],
            port=int(got["REF_PORT"]),
            tls_port=int(got["REF_TLS_PORT"]),
            user=got["REF_USER"],
            password=got["REF_PASSWORD"],
            rcpt=got["REF_RCPT"],
            cafile=Path(got["REF_CAFILE"]),
            pids=tuple(int(pid) for pid in got["REF_PIDS"].split(",") if pid),
            sink_port=int(got["REF_SINK_PORT"]),
            sink_dir=Path(got["REF_SINK_DIR"]),
            state_dir=Path(got["REF_STATE_DIR"]),
        )


def require_script() -> None:
    """Fail (never skip) when the reference script is not where the project expects it."""
    if not SCRIPT.is_file():
        pytest.fail(
            f"reference Postfix script missing: {SCRIPT} "
            "(expected at ../shared/anchors/postfix-ref from the repository root)",
            pytrace=False,
        )


@contextlib.contextmanager
def running_postfix_ref() -> Iterator[tuple[PostfixRef, RefEnv]]:
    """Set up and start a fresh private instance; stop it (and remove its state) afterwards."""
    require_script()
    assert os.geteuid() == 0, "postfix-ref needs root (it installs packages and runs Postfix)"
    with LOCK_FILE.open("a") as lock:
        # Blocks while another test process runs its instance on the same ports.
        fcntl.flock(lock, fcntl.LOCK_EX)
        ref = PostfixRef()
        ref.stop()  # an instance a killed run left behind (PID files only: nothing else)
        shutil.rmtree(ref.state_dir, ignore_errors=True)
        try:
            ref.setup()
            ref.start()
            env = ref.env()
            assert len(env.pids) == 2, f"Postfix or Dovecot is not running: {env.pids}"
            yield ref, env
        finally:
            ref.stop()
        shutil.rmtree(ref.state_dir, ignore_errors=True)


# --- what reached the sink -----------------------------------------------------------------------


def _queue_id_for(log: str, message_id: str) -> str | None:
    """Postfix's queue id of the message whose cleanup line names `message_id`."""
    for line in log.splitlines():
        if f"message-id=<{message_id}>" in line:
            found = _POSTFIX_QUEUE_ID.search(line)
            if found:
                return found.group(1)
    return None


def _delivered(log: str, queue_id: str) -> bool:
    return any(
        f": {queue_id}: " in line and "status=sent" in line and "relay=" in line
        for line in log.splitlines()
    )


def wait_relayed(env: RefEnv, message_id: str, timeout: float = SINK_TIMEOUT) -> str:
    """Wait until Postfix logs that it relayed `message_id` to the sink; return its queue id.

    Postfix's only signal that the second hop (Postfix -> smtp-sink) finished is its log file,
    written by postlogd; the standard library cannot watch a file for changes, so this reads it
    again every POLL_INTERVAL until `timeout` passes: a bounded poll of Postfix's own event.
    """
    deadline = time.monotonic() + timeout
    log = ""
    while True:
        log = env.postfix_log.read_text("utf-8", "replace") if env.postfix_log.exists() else ""
        queue_id = _queue_id_for(log, message_id)
        if queue_id is not None and _delivered(log, queue_id):
            return queue_id
        if time.monotonic() >= deadline:
            tail = "\n".join(log.splitlines()[-30:])
            raise AssertionError(
                f"Postfix did not relay <{message_id}> within {timeout}s; its log ends:\n{tail}"
            )
        time.sleep(POLL_INTERVAL)


def sink_dumps(env: RefEnv, marker: bytes) -> list[bytes]:
    """Every sink dump (one per transaction) that contains `marker`."""
    found = []
    for path in sorted(env.sink_dir.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            if marker in data:
                found.append(data)
    return found

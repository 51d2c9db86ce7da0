"""`sendgate sendmail` and a `sendmail` link against a running server, with real callers.

The server listens on its sendmail socket and maps the local user root (these tests' user) to
the instance's account. bsd-mailx's `mail` is pointed at the link through its own setting
(`set sendmail=...`), as it would call /usr/sbin/sendmail. A local user the server does not
know (nobody) is refused by the socket itself, whatever it claims.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.e2e.conftest import Instance, InstanceFactory, ServerFactory, ServerProcess

pytestmark = pytest.mark.e2e

SENDGATE = Path(sys.executable).parent / "sendgate"


@pytest.fixture
def local(
    instance: InstanceFactory, server: ServerFactory, open_directory: Path
) -> tuple[Instance, ServerProcess, Path]:
    sock = open_directory / "sendmail.sock"
    made = instance(
        {"sendmail.socket": str(sock), "sendmail.accounts": ["root=alice@example.test"]}
    )
    running = server(made)
    running.wait_for(rf"event=listening kind=sendmail address={sock}")
    return made, running, sock


def sendmail(
    sock: Path, args: list[str], message: bytes, *, user: str | None = None
) -> subprocess.CompletedProcess[bytes]:
    command = [str(SENDGATE), "sendmail", *args]
    if user is not None:
        command = [
            "setpriv",
            f"--reuid={user}",
            f"--regid={user if user != 'nobody' else 'nogroup'}",
            "--clear-groups",
            *command,
        ]
    env = {**os.environ, "SENDGATE_SENDMAIL_SOCKET": str(sock)}
    if user is not None:
        # Under `coverage run` the child would write its data where only root may.
        env.pop("COVERAGE_PROCESS_CONFIG", None)
    return subprocess.run(command, input=message, capture_output=True, env=env, timeout=60)


def queued_messages(made: Instance) -> list[bytes]:
    spool = made.spool()
    return [spool.message(queue_id) for queue_id in made.queue_ids()]


def test_a_script_sends_with_t_and_the_account_is_the_sender(
    local: tuple[Instance, ServerProcess, Path],
) -> None:
    made, running, sock = local
    message = b"To: bob@example.org\nBcc: carol@example.net\nSubject: nightly report\n\nall fine\n"
    done = sendmail(sock, ["-t", "-oi", "-FNightly Job"], message)
    assert (done.returncode, done.stderr) == (0, b"")
    running.wait_for(r"event=local_user .*unix_user=root user=alice@example\.test")
    accepted = running.wait_for(r"event=accepted .*client=local .*user=alice@example\.test ")
    assert "recipients=2" in accepted[0]
    [content] = queued_messages(made)
    assert b"From: Nightly Job <alice@example.test>\r\n" in content
    assert b"Bcc" not in content
    assert b"\r\n\r\nall fine\r\n" in content
    [connect] = running.matching(r"event=connect .*client=local ")
    assert connect.endswith("tls=local")


def test_bsd_mailx_through_a_sendmail_link(
    local: tuple[Instance, ServerProcess, Path], tmp_path: Path
) -> None:
    made, running, sock = local
    link = tmp_path / "sendmail"
    link.symlink_to(SENDGATE)
    rc = tmp_path / "mailrc"
    rc.write_text(f"set sendmail={link}\n")
    env = {**os.environ, "MAILRC": str(rc), "SENDGATE_SENDMAIL_SOCKET": str(sock)}
    done = subprocess.run(
        ["mail", "-s", "from mailx", "bob@example.org"],
        input=b"sent by bsd-mailx\n",
        capture_output=True,
        env=env,
        timeout=60,
    )
    assert (done.returncode, done.stderr) == (0, b"")
    running.wait_for(r"event=accepted .*client=local ")
    [content] = queued_messages(made)
    assert b"Subject: from mailx\r\n" in content
    assert b"From: alice@example.test\r\n" in content


def test_refusals_have_sysexits_codes(local: tuple[Instance, ServerProcess, Path]) -> None:
    made, running, sock = local
    body = b"Subject: x\n\nhi\n"
    not_owned = sendmail(sock, ["-f", "someone@example.net", "bob@example.org"], body)
    assert not_owned.returncode == 77  # EX_NOPERM
    assert not_owned.stderr.startswith(b"sendmail: sender someone@example.net: 553 ")
    stranger = sendmail(sock, ["bob@example.org"], body, user="nobody")
    assert stranger.returncode == 77
    assert stranger.stderr == (
        b"sendmail: the server refused: 554 5.7.1 This local user may not send mail here\n"
    )
    running.wait_for(r"event=refused .*client=local .*reason=local_user key=nobody")
    assert made.queue_ids() == []
    running.stop()
    down = sendmail(sock, ["bob@example.org"], body)
    assert down.returncode == 75  # EX_TEMPFAIL: the caller tries again later
    assert down.stderr.startswith(b"sendmail: cannot reach the server at ")


def test_n_r_and_v_ask_for_delivery_reports(
    local: tuple[Instance, ServerProcess, Path],
) -> None:
    made, running, sock = local
    message = b"Subject: backup\n\ndone\n"
    done = sendmail(
        sock, ["-N", "success, delay", "-R", "hdrs", "-V", "backup 7", "bob@example.org"], message
    )
    assert (done.returncode, done.stderr) == (0, b"")
    running.wait_for(r"event=accepted .*client=local ")
    [queue_id] = made.queue_ids()
    envelope = made.spool().envelope(queue_id)
    assert (envelope.ret, envelope.envid) == ("HDRS", "backup 7")
    assert envelope.notify(0) == ("SUCCESS", "DELAY")
    assert not envelope.requiretls  # the local socket has no TLS, so it offers no REQUIRETLS

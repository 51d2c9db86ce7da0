"""The delivery side of the `sendgate` command: smarthost init, DKIM keys and queue operations.

Every run is the real CLI in a subprocess. Refusals are one line on stderr starting with
"sendgate: " and exit 1, with no traceback; nothing here starts a server or sends mail.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from sendgate.config.kinds import HostPort
from sendgate.config.load import load_config
from sendgate.config.schema import RouteConfig
from sendgate.store.delivery_state import DeliveryState, RecipientState
from sendgate.store.envelope import Envelope

if TYPE_CHECKING:
    from tests.e2e.conftest import Cmd, Instance, InstanceFactory

pytestmark = pytest.mark.e2e

UNKNOWN_ID = "0123456789ABCDEFGH"
BOB = "bob@example.org"
_RECORD = re.compile(
    r'(?P<selector>[a-z0-9-]+)\._domainkey\.example\.test\. IN TXT \( "v=DKIM1; k=rsa; " '
    r'"p=[A-Za-z0-9+/=]+"( "[A-Za-z0-9+/=]+")* \)'
)


def _error(cmd: Cmd) -> str:
    """Assert `cmd` exited 1 with one clean line on stderr and nothing on stdout; return it."""
    assert cmd.code == 1, (cmd.code, cmd.stdout, cmd.stderr)
    assert "Traceback" not in cmd.stderr
    lines = cmd.stderr.splitlines()
    assert len(lines) == 1, cmd.stderr
    assert lines[0].startswith("sendgate: ")
    assert cmd.stdout == ""
    return lines[0]


def _init_args(target: Path, *extra: str) -> list[str]:
    return [
        "init", str(target), "--hostname", "mx.example.test",
        "--submission", "127.0.0.1:0", "--submissions", "127.0.0.1:0", *extra,
    ]  # fmt: skip


def _queue(made: Instance, recipients: tuple[str, ...] = (BOB,)) -> str:
    """Put one message straight into the instance's spool (no server is running)."""
    spool = made.spool()
    message = made.message("queued-by-test")
    queue_id = spool.new_id()
    spool.put(
        Envelope(
            queue_id=queue_id,
            sender=made.user,
            recipients=recipients,
            user=made.user,
            received_at=time.time(),
            size=len(message),
        ),
        message,
    )
    return queue_id


# --- init --smarthost ---------------------------------------------------------------------------


def test_init_with_a_loopback_plaintext_smarthost(
    instance: InstanceFactory, tmp_path: Path
) -> None:
    target = tmp_path / "relayed"
    cmd = instance.cli(
        *_init_args(target, "--smarthost", "127.0.0.1:2525", "--smarthost-tls", "none")
    )
    assert cmd.code == 0, cmd.stderr
    assert cmd.stderr == ""
    config = target / "sendgate.toml"
    assert cmd.stdout.splitlines()[0] == f"wrote {config}"
    assert load_config(config).delivery.routes == (
        RouteConfig(domains=("*",), smarthost=HostPort("127.0.0.1", 2525), tls="none"),
    )


def test_init_with_a_tls_smarthost_by_name(instance: InstanceFactory, tmp_path: Path) -> None:
    target = tmp_path / "relayed"
    instance.cli(*_init_args(target, "--smarthost", "relay.example.net:587")).ok()
    [route] = load_config(target / "sendgate.toml").delivery.routes
    assert route.smarthost == HostPort("relay.example.net", 587)
    assert route.tls == "starttls"  # the default: TLS with certificate checks


def test_init_refuses_plaintext_to_a_remote_smarthost(
    instance: InstanceFactory, tmp_path: Path
) -> None:
    target = tmp_path / "refused"
    cmd = instance.cli(
        *_init_args(target, "--smarthost", "relay.example.net:25", "--smarthost-tls", "none")
    )
    line = _error(cmd)
    assert line.startswith("sendgate: --smarthost-tls none: ")
    assert "loopback" in line
    assert not target.exists()  # refused before anything was written


@pytest.mark.parametrize("value", ["bad", "relay.example.net", "relay.example.net:0", ":25"])
def test_init_refuses_a_malformed_smarthost(
    instance: InstanceFactory, tmp_path: Path, value: str
) -> None:
    target = tmp_path / "refused"
    line = _error(instance.cli(*_init_args(target, "--smarthost", value)))
    assert line.startswith("sendgate: --smarthost: ")
    assert not target.exists()


def test_an_unknown_smarthost_tls_mode_is_a_usage_error(
    instance: InstanceFactory, tmp_path: Path
) -> None:
    target = tmp_path / "refused"
    cmd = instance.cli(*_init_args(target, "--smarthost", "127.0.0.1:25", "--smarthost-tls", "tls"))
    assert cmd.code == 2
    assert "--smarthost-tls" in cmd.stderr
    assert not target.exists()


# --- dkim keygen --------------------------------------------------------------------------------


def test_dkim_keygen_prints_the_record_and_keeps_the_key_private(
    instance: InstanceFactory,
) -> None:
    made = instance()
    cmd = made.cli("dkim", "keygen", "example.test").ok()

    [line] = cmd.stdout.splitlines()
    match = _RECORD.fullmatch(line)
    assert match is not None, line
    selector = match["selector"]
    assert re.fullmatch(r"sg\d{6}", selector)
    key = made.directory / "dkim" / "example.test" / f"{selector}.rsa.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert key.read_bytes().splitlines()[0].endswith(b" PRIVATE KEY-----")
    assert str(key) in cmd.stderr  # where it went is said on stderr, not mixed into the record


def test_dkim_keygen_with_a_selector_and_ed25519(instance: InstanceFactory) -> None:
    made = instance()
    cmd = made.cli(
        "dkim", "keygen", "example.test", "--selector", "mail2026", "--algorithm", "ed25519"
    ).ok()
    [line] = cmd.stdout.splitlines()
    assert line.startswith('mail2026._domainkey.example.test. IN TXT ( "v=DKIM1; k=ed25519; " ')
    key = made.directory / "dkim" / "example.test" / "mail2026.ed25519.key"
    assert key.stat().st_mode & 0o777 == 0o600


def test_dkim_keygen_refuses_a_second_key_for_the_domain(instance: InstanceFactory) -> None:
    made = instance()
    made.cli("dkim", "keygen", "example.test", "--selector", "first").ok()
    first = made.directory / "dkim" / "example.test" / "first.rsa.key"
    before = first.read_bytes()

    for selector in ("first", "second"):
        line = _error(made.cli("dkim", "keygen", "example.test", "--selector", selector))
        assert str(first) in line

    assert first.read_bytes() == before
    assert not (first.parent / "second.rsa.key").exists()


@pytest.mark.parametrize("selector", ["bad sel", "-dash", "a" * 64, "../up"])
def test_dkim_keygen_refuses_a_bad_selector(instance: InstanceFactory, selector: str) -> None:
    made = instance()
    line = _error(made.cli("dkim", "keygen", "example.test", f"--selector={selector}"))
    assert "selector" in line
    assert not (made.directory / "dkim" / "example.test").exists()


def test_dkim_keygen_refuses_a_bad_domain(instance: InstanceFactory) -> None:
    made = instance()
    _error(made.cli("dkim", "keygen", "not a domain"))
    assert not list((made.directory / "dkim").glob("*/*.key"))


# --- queue explain / retry / remove -------------------------------------------------------------


@pytest.mark.parametrize("action", ["explain", "retry", "remove", "show"])
def test_queue_actions_on_an_unknown_id(instance: InstanceFactory, action: str) -> None:
    made = instance()
    line = _error(made.cli("queue", action, UNKNOWN_ID))
    assert line == f"sendgate: unknown queue id {UNKNOWN_ID}"


@pytest.mark.parametrize("action", ["explain", "retry", "remove"])
def test_queue_actions_refuse_a_malformed_id(instance: InstanceFactory, action: str) -> None:
    made = instance()
    line = _error(made.cli("queue", action, "../../etc/passwd"))
    assert line == "sendgate: invalid queue id '../../etc/passwd'"


def test_explain_retry_and_remove_a_queued_message(instance: InstanceFactory) -> None:
    made = instance()
    queue_id = _queue(made)

    explained = made.cli("queue", "explain", queue_id).ok().stdout.splitlines()
    assert explained[0] == f"queue-id: {queue_id}"
    assert explained[1] == f"sender: {made.user}"
    assert explained[-1] == "attempts: 0 (not tried yet; due now)"

    retried = made.cli("queue", "retry", queue_id).ok()
    assert retried.stdout == f"{queue_id}: retry requested\n"
    assert (made.data_dir / "spool" / "retry" / queue_id).exists()

    listed = made.cli("queue", "list").ok().stdout.splitlines()
    assert [line.split(" ", 1)[0] for line in listed] == [queue_id]

    removed = made.cli("queue", "remove", queue_id).ok()
    assert removed.stdout == f"{queue_id}: removed\n"
    assert made.cli("queue", "list").ok().stdout == ""
    assert not (made.data_dir / "spool" / "retry" / queue_id).exists()
    _error(made.cli("queue", "explain", queue_id))


def test_explain_shows_the_last_attempt_per_recipient(instance: InstanceFactory) -> None:
    made = instance()
    carol = "carol@example.org"
    queue_id = _queue(made, (BOB, carol))
    state = DeliveryState(
        (
            RecipientState(BOB, "delivered", 1, 1_800_000_000.0, "mx1.example.org", "250 2.0.0 OK"),
            RecipientState(
                carol, "pending", 1, 1_800_000_000.0, "mx1.example.org", "451 4.2.1 busy", "4.2.1"
            ),
        ),
        next_attempt=1_800_000_300.0,
        attempts=1,
    )
    made.spool().write_state(queue_id, state.to_json())

    text = made.cli("queue", "explain", queue_id).ok().stdout
    assert f"recipient: {carol}\n  status: pending\n  attempts: 1\n" in text
    assert "  last-attempt: 2027-01-15T08:00:00Z\n  host: mx1.example.org\n" in text
    assert "  reply: 451 4.2.1 busy\n" in text
    assert text.endswith("next-attempt: 2027-01-15T08:05:00Z\n")


def test_explain_with_an_unreadable_state_is_a_one_line_error(instance: InstanceFactory) -> None:
    made = instance()
    queue_id = _queue(made)
    made.spool().write_state(queue_id, b"{not json")
    line = _error(made.cli("queue", "explain", queue_id))
    assert line.startswith("sendgate: state: malformed")

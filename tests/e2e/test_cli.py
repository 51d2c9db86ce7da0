"""The `sendgate` command as users run it: exit codes, one-line errors, and effects on a server.

Every run is a real subprocess (`python -m sendgate`) with stdin piped, so passwords come from
stdin exactly as in scripts. Errors must be one line on stderr starting with "sendgate: ",
exit 1 for a refused operation and 2 for a bad configuration, and never a traceback.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.e2e.conftest import Cmd, InstanceFactory, ServerFactory

pytestmark = pytest.mark.e2e

GOOD_PASSWORD = "violet tractor harbour 1987"
# <id> <received, ISO 8601 UTC> <size> <sender> -> <recipients>
_QUEUE_LINE = re.compile(
    r"(?P<id>[0-9A-Z]{18}) \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (?P<size>\d+) "
    r"(?P<sender>\S+) -> (?P<rcpts>\S+)"
)


def _error(cmd: Cmd, code: int) -> str:
    """Assert `cmd` failed with `code` and one clean line on stderr; return that line."""
    assert cmd.code == code, (cmd.code, cmd.stdout, cmd.stderr)
    assert "Traceback" not in cmd.stderr
    lines = cmd.stderr.splitlines()
    assert len(lines) == 1, cmd.stderr
    assert lines[0].startswith("sendgate: ")
    return lines[0]


# --- init ----------------------------------------------------------------------------------------


def test_init_creates_a_private_instance(instance: InstanceFactory, tmp_path: Path) -> None:
    target = tmp_path / "fresh"

    cmd = instance.cli(
        "init", str(target), "--hostname", "mx.example.test",
        "--submission", "127.0.0.1:0", "--submissions", "127.0.0.1:0",
    )  # fmt: skip

    assert cmd.code == 0, cmd.stderr
    assert cmd.stderr == ""
    assert cmd.stdout.splitlines()[0] == f"wrote {target / 'sendgate.toml'}"
    assert sorted(path.name for path in target.iterdir()) == ["data", "sendgate.toml", "tls"]
    assert (target / "sendgate.toml").stat().st_mode & 0o777 == 0o600
    assert (target / "tls" / "key.pem").stat().st_mode & 0o777 == 0o600
    assert (target / "data").stat().st_mode & 0o777 == 0o700


def test_init_refuses_an_existing_config(instance: InstanceFactory) -> None:
    made = instance()
    before = made.config.read_bytes()

    line = _error(instance.cli("init", str(made.directory), "--hostname", "mx.example.test"), 1)

    assert line == f"sendgate: {made.config}: already exists; not overwriting it"
    assert made.config.read_bytes() == before


def test_init_refuses_a_cert_without_its_key(instance: InstanceFactory, tmp_path: Path) -> None:
    made = instance()
    cmd = instance.cli("init", str(tmp_path / "other"), "--cert", str(made.cert))
    assert "--key" in _error(cmd, 1)
    assert not (tmp_path / "other").exists()


# --- users ---------------------------------------------------------------------------------------


def test_user_add_refuses_weak_passwords(instance: InstanceFactory) -> None:
    made = instance()
    for password, why in (
        ("k9#Zq", "too short"),
        ("qwerty123456", "commonly used password"),
        ("bob-bob-bob-1234567", "contains the user name"),
    ):
        line = _error(made.cli("user", "add", "bob@example.test", stdin=password + "\n"), 1)

        assert line.startswith("sendgate: password refused: ")
        assert why in line
        assert password not in line
    assert "bob@example.test" not in made.cli("user", "list").ok().stdout


def test_user_add_list_and_duplicates(instance: InstanceFactory) -> None:
    made = instance()

    added = made.cli("user", "add", "Bob@Example.TEST", stdin=GOOD_PASSWORD + "\n").ok()
    duplicate = made.cli("user", "add", "bob@example.test", stdin=GOOD_PASSWORD + "\n")
    listed = made.cli("user", "list").ok()

    assert added.stdout == "added bob@example.test\n"
    assert _error(duplicate, 1) == "sendgate: bob@example.test: user exists"
    assert sorted(listed.stdout.splitlines()) == [
        "alice@example.test alice@example.test",
        "bob@example.test bob@example.test",
    ]
    bad = _error(made.cli("user", "add", "not an address", stdin=GOOD_PASSWORD + "\n"), 1)
    assert "'not an address'" in bad


def test_sender_addresses_take_effect_on_the_running_server(
    instance: InstanceFactory, server: ServerFactory
) -> None:
    made = instance()
    running = server(made)
    alias = "sales@example.test"

    added = made.cli("user", "addr-add", made.user, alias).ok()
    assert added.stdout == f"{made.user} may send as {alias}\n"
    with running.smtp() as client:
        queue_id = running.submit(client, made.message("as-alias", sender=alias), sender=alias)
    assert made.spool().envelope(queue_id).sender == alias

    removed = made.cli("user", "addr-remove", made.user, alias).ok()
    assert removed.stdout == f"{made.user} may no longer send as {alias}\n"
    with running.smtp() as client:
        code, text = client.mail(alias)
        assert (code, text[:5]) == (553, b"5.7.1")
        # The header From: is checked too, even with an owned envelope sender.
        assert client.mail(made.user)[0] == 250
        assert client.rcpt("bob@example.org")[0] == 250
        code, text = client.data(made.message("header-alias", sender=alias))
        assert (code, text[:5]) == (550, b"5.7.1")
    assert made.queue_ids() == [queue_id]


# --- queue ---------------------------------------------------------------------------------------


def test_queue_list_and_show(instance: InstanceFactory, server: ServerFactory) -> None:
    made = instance()
    running = server(made)
    with running.smtp() as client:
        first = running.submit(client, made.message("first"))
        second = running.submit(client, made.message("second"), rcpt="carol@example.org")

    listed = made.cli("queue", "list").ok().stdout.splitlines()

    matches = [_QUEUE_LINE.fullmatch(line) for line in listed]
    assert all(matches), listed
    assert [(m["id"], m["sender"], m["rcpts"]) for m in matches if m] == [
        (first, made.user, "bob@example.org"),
        (second, made.user, "carol@example.org"),
    ]
    assert [int(m["size"]) for m in matches if m] == [
        len(made.spool().message(first)),
        len(made.spool().message(second)),
    ]

    shown = made.cli("queue", "show", second).ok().stdout
    assert f"queue-id: {second}\n" in shown
    assert "recipient: carol@example.org\n" in shown
    assert f"with ESMTPSA id {second}" in shown
    assert "Subject: second\n" in shown
    assert "body of second" not in shown  # headers only

    assert _error(made.cli("queue", "show", "../etc"), 1) == ("sendgate: invalid queue id '../etc'")
    unknown = "0" * 18
    assert _error(made.cli("queue", "show", unknown), 1) == f"sendgate: unknown queue id {unknown}"


# --- configuration errors ------------------------------------------------------------------------


def test_missing_config_file(instance: InstanceFactory) -> None:
    line = _error(instance.cli("--config", "missing.toml", "serve"), 2)
    assert "missing.toml" in line


def test_bad_config_values_name_the_key(instance: InstanceFactory) -> None:
    made = instance()
    for key, bad, good in (
        ("limits.max_errors", 0, 10),
        ("listen.workers", "two", 1),
        ("tls.min_version", "1.1", "1.2"),
    ):
        made.configure({key: bad})

        for args in (("serve",), ("queue", "list"), ("user", "list")):
            line = _error(made.cli(*args), 2)
            assert line.startswith(f"sendgate: {made.config}: {key}: "), line

        made.configure({key: good})
    made.cli("queue", "list").ok()

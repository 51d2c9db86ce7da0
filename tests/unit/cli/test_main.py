"""Tests for sendgate.cli.main in process: the command table, exit codes and one-line errors.

The e2e tests run the same commands as subprocesses; these pin the table's wiring and the
error mapping (ConfigError -> 2, SendgateError -> 1) without starting an interpreter per case.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pytest

from sendgate.cli import GROUPS, main
from sendgate.store.envelope import Envelope
from sendgate.store.local.spool import Spool

MESSAGE = b"Subject: hi\r\n\r\nbody\r\n"
QUEUE_ID = "01HX0000000000ABCD"


@pytest.fixture
def config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    directory = tmp_path / "instance"
    code = main(
        [
            "init", str(directory), "--hostname", "mx.example.test",
            "--submission", "127.0.0.1:2587", "--submissions", "127.0.0.1:2465",
        ]
    )  # fmt: skip
    path = directory / "sendgate.toml"
    assert code == 0
    assert capsys.readouterr().out == (
        f"wrote {path}\nnext: sendgate --config {path} user add ADDRESS\n"
    )
    return path


def test_help_lists_the_groups_of_the_table_in_order(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--help"])
    assert caught.value.code == 0
    # Each command is listed on a line of its own, indented by four spaces.
    out = capsys.readouterr().out.splitlines()
    listed = [line.split()[0] for line in out if re.match(r"    \S", line)]
    expected = [
        "init",
        "serve",
        "user",
        "queue",
        "bans",
        "dkim",
        "dns",
        "db",
        "cluster",
        "audit",
        "probe",
        "sendmail",
    ]
    assert listed == [group.name for group in GROUPS] == expected


def test_queue_commands_print_for_people(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spool = Spool(config.parent / "data" / "spool")
    envelope = Envelope(QUEUE_ID, "", ("bob@example.org",), "alice", 0.0, len(MESSAGE))
    spool.put(envelope, MESSAGE)

    assert main(["--config", str(config), "queue", "list"]) == 0
    assert capsys.readouterr().out == (
        f"{QUEUE_ID} 1970-01-01T00:00:00Z {len(MESSAGE)} <> -> bob@example.org\n"
    )
    assert main(["--config", str(config), "queue", "show", QUEUE_ID]) == 0
    assert capsys.readouterr().out.endswith("body: 7BIT\n\nSubject: hi\n")
    assert main(["--config", str(config), "queue", "explain", QUEUE_ID]) == 0
    assert capsys.readouterr().out.endswith("attempts: 0 (not tried yet; due now)\n")
    assert main(["--config", str(config), "queue", "retry", QUEUE_ID]) == 0
    assert capsys.readouterr().out == f"{QUEUE_ID}: retry requested\n"
    assert main(["--config", str(config), "queue", "remove", QUEUE_ID]) == 0
    assert capsys.readouterr().out == f"{QUEUE_ID}: removed\n"
    assert spool.ids() == []


def test_a_refused_operation_is_one_line_and_exit_1(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(config), "queue", "show", QUEUE_ID]) == 1
    assert capsys.readouterr() == ("", f"sendgate: unknown queue id {QUEUE_ID}\n")


def test_a_bad_configuration_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.toml"
    assert main(["--config", str(missing), "user", "list"]) == 2
    assert capsys.readouterr() == (
        "",
        f"sendgate: {missing}: cannot read: No such file or directory\n",
    )


def test_user_add_reads_the_password_from_stdin(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("violet tractor harbour 1987\n"))
    assert main(["--config", str(config), "user", "add", "Alice@Example.org"]) == 0
    assert main(["--config", str(config), "user", "list"]) == 0
    assert (
        capsys.readouterr().out == "added alice@example.org\nalice@example.org alice@example.org\n"
    )


def test_sendgate_config_from_the_environment(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SENDGATE_CONFIG", str(config))
    assert main(["queue", "list"]) == 0
    assert capsys.readouterr() == ("", "")


def test_with_a_service_user_only_serve_runs_as_root(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = config.read_text()
    assert text.count('\nuser = ""\n') == 1
    config.write_text(text.replace('\nuser = ""\n', '\nuser = "nobody"\n'))
    code = main(["--config", str(config), "dkim", "status"])
    out, err = capsys.readouterr()
    if os.geteuid() == 0:
        assert (code, out) == (1, "")
        assert err == (
            "sendgate: this server's files belong to nobody (service.user): run the command as "
            "that user, e.g. sudo -u nobody sendgate ...\n"
        )
    else:
        assert (code, err) == (0, "")

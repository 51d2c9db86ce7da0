"""`sendgate sendmail`'s own work: the command line and the message as it leaves for the server.

The exchange with a real server is in tests/e2e/test_sendmail.py; here, what is decided before.
"""

from __future__ import annotations

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sendgate.cli import main
from sendgate.cli.sendmail import (
    EX_TEMPFAIL,
    EX_USAGE,
    Prepared,
    Reports,
    SendmailError,
    prepare,
    reports,
)

MESSAGE = (
    b"To: Bob <bob@example.org>, carol@example.net\n"
    b"Cc: dave@example.net\n"
    b"Bcc: eve@example.net,\n"
    b"  frank@example.net\n"
    b"Subject: hi\n"
    b"\n"
    b"hello\n"
    b".\n"
    b"after the dot\n"
)


def test_t_takes_the_recipients_from_the_header_and_drops_bcc() -> None:
    prepared = prepare(MESSAGE, ["extra@example.org"], from_headers=True, dot_ends=False)
    assert prepared.recipients == (
        "extra@example.org",
        "bob@example.org",
        "carol@example.net",
        "dave@example.net",
        "eve@example.net",
        "frank@example.net",
    )
    assert b"Bcc" not in prepared.message
    assert b"frank" not in prepared.message  # the continuation line went with its field
    assert prepared.message.startswith(b"To: Bob <bob@example.org>, carol@example.net\r\nCc: ")
    assert prepared.message.endswith(b"\r\nhello\r\n.\r\nafter the dot\r\n")


def test_a_lone_dot_ends_the_message_unless_i() -> None:
    ended = prepare(MESSAGE, ["bob@example.org"], from_headers=False, dot_ends=True)
    assert ended.message.endswith(b"\r\n\r\nhello\r\n")
    assert b"Bcc: eve" in ended.message  # without -t the header is left alone
    assert ended.recipients == ("bob@example.org",)


def test_no_recipient_is_a_usage_error() -> None:
    with pytest.raises(SendmailError, match="no recipients") as caught:
        prepare(b"Subject: x\n\nhi\n", [], from_headers=True, dot_ends=True)
    assert caught.value.status == EX_USAGE


@given(st.binary(max_size=300), st.booleans(), st.booleans())
def test_any_input_gives_crlf_lines_or_a_usage_error(raw: bytes, headers: bool, dots: bool) -> None:
    try:
        prepared = prepare(raw, ["x@example.org"], from_headers=headers, dot_ends=dots)
    except SendmailError as exc:
        raise AssertionError(exc) from None  # a recipient is always given
    assert isinstance(prepared, Prepared)
    assert b"\n" not in prepared.message.replace(b"\r\n", b"")
    assert prepared.message == b"" or prepared.message.endswith(b"\r\n")


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["sendmail", "-bs"], EX_USAGE, "sendmail: -bs is not supported (only -bm)\n"),
        (["sendmail", "-f"], EX_USAGE, "sendmail: argument -f/-r: expected one argument\n"),
        (
            ["sendmail", "-oi", "-t"],
            EX_USAGE,
            "sendmail: no recipients (give them as arguments, or -t)\n",
        ),
        (
            [
                "--config",
                "unused.toml",
                "sendmail",
                "-oi",
                "-fme@example.org",
                "-FMe",
                "bob@example.org",
            ],
            EX_TEMPFAIL,
            "sendmail: cannot reach the server at /nonexistent/sock: No such file or directory\n",
        ),
    ],
)
def test_the_command_line(
    argv: list[str],
    status: int,
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SENDGATE_SENDMAIL_SOCKET", "/nonexistent/sock")
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"Subject: x\n\nhi\n")))
    assert main(argv) == status
    assert capsys.readouterr() == ("", message)


@pytest.mark.parametrize(
    ("notify", "ret", "envid", "expected"),
    [
        (None, None, None, Reports()),
        ("never", None, None, Reports((), ("NOTIFY=NEVER",))),
        ("failure, success", "FULL", None, Reports(("RET=FULL",), ("NOTIFY=SUCCESS,FAILURE",))),
        (None, "hdrs", "job=7 run", Reports(("RET=HDRS", "ENVID=job+3D7+20run"), ())),
    ],
)
def test_n_r_and_v_become_dsn_parameters(
    notify: str | None, ret: str | None, envid: str | None, expected: Reports
) -> None:
    assert reports(notify, ret, envid) == expected


@pytest.mark.parametrize(
    ("notify", "ret", "envid", "problem"),
    [
        ("sometimes", None, None, "-N takes never"),
        ("never,success", None, None, "-N takes never"),
        (None, "body", None, "-R takes full or hdrs"),
        (None, None, "x" * 101, "-V takes 1 to 100"),
        (None, None, "caf\u00e9", "-V takes 1 to 100"),
        (None, None, "a\tb", "-V takes 1 to 100"),
        (None, None, "", "-V takes 1 to 100"),
    ],
)
def test_bad_report_requests_are_usage_errors(
    notify: str | None, ret: str | None, envid: str | None, problem: str
) -> None:
    with pytest.raises(SendmailError, match=problem) as caught:
        reports(notify, ret, envid)
    assert caught.value.status == EX_USAGE

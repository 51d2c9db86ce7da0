"""Tests for `sendgate bans list|add|remove`, run in process against an instance's limit store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sendgate.cli import main
from sendgate.store.local.limits import LocalLimitStore
from sendgate.text import iso_utc


def limits(config: Path) -> LocalLimitStore:
    return LocalLimitStore(config.parent / "data" / "limits.db")


def run(config: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["--config", str(config), "bans", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("target", "key"),
    [
        ("192.0.2.7", "net:192.0.2.7/32"),
        ("192.0.2.0/24", "net:192.0.2.0/24"),
        ("2001:db8::1", "net:2001:db8::/64"),
        ("2001:db8:0:100::/56", "net:2001:db8:0:100::/56"),
        ("2001:db8::/48", "net:2001:db8::/48"),
        ("Alice@Example.org", "account:alice@example.org"),
    ],
)
def test_add_bans_the_key_of_the_target_for_the_configured_ban_time(
    config: Path, capsys: pytest.CaptureFixture[str], target: str, key: str
) -> None:
    code, out, err = run(config, capsys, "add", target)
    ban = limits(config).ban_of(key)
    assert ban is not None
    assert (ban.until - ban.since, ban.reason, ban.offences) == (900.0, "operator", 1)
    kind, _, shown = key.partition(":")
    kind = {"net": "network", "account": "account"}[kind]
    assert (code, out, err) == (0, f"banned {kind} {shown} until {iso_utc(ban.until)}\n", "")


def test_add_with_duration_and_reason_counts_repeat_offences(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(config, capsys, "add", "192.0.2.7", "--duration", "60", "--reason", "probe")[0] == 0
    code, out, _ = run(config, capsys, "add", "192.0.2.7", "--duration", "7200", "--json")
    ban = limits(config).ban_of("net:192.0.2.7/32")
    assert ban is not None
    # The new ban replaces the shorter one (since kept): it lasts 7200 s from the second add.
    assert ban.until - ban.since == pytest.approx(7200.0, abs=5)
    assert (ban.offences, ban.reason) == (2, "operator")
    assert (code, json.loads(out)) == (
        0,
        {
            "kind": "network",
            "target": "192.0.2.7/32",
            "since": iso_utc(ban.since),
            "until": iso_utc(ban.until),
            "offences": 2,
            "reason": "operator",
        },
    )


def test_list_shows_every_active_ban_in_text_and_json(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(config, capsys, "list") == (0, "", "")
    assert run(config, capsys, "list", "--json") == (0, "[]\n", "")
    run(config, capsys, "add", "192.0.2.0/24", "--reason", "botnet \x1b[2J")
    run(config, capsys, "add", "bob@example.org")
    store = limits(config)
    net, account = store.ban_of("net:192.0.2.0/24"), store.ban_of("account:bob@example.org")
    assert net is not None
    assert account is not None
    code, out, _ = run(config, capsys, "list")
    assert (code, out.splitlines()) == (
        0,
        [
            f"account bob@example.org {iso_utc(account.since)} {iso_utc(account.until)} 1 operator",
            f"network 192.0.2.0/24 {iso_utc(net.since)} {iso_utc(net.until)} 1 "
            "operator: botnet \\x1b[2J",
        ],
    )
    listed = json.loads(run(config, capsys, "list", "--json")[1])
    assert [(row["kind"], row["target"], row["reason"]) for row in listed] == [
        ("account", "bob@example.org", "operator"),
        ("network", "192.0.2.0/24", "operator: botnet \x1b[2J"),
    ]


def test_remove_ends_a_ban_and_refuses_one_that_is_not_there(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(config, capsys, "add", "2001:db8::1")
    assert run(config, capsys, "remove", "2001:db8::2") == (
        0,
        "unbanned network 2001:db8::/64\n",
        "",
    )
    assert limits(config).ban_of("net:2001:db8::/64") is None
    assert run(config, capsys, "remove", "2001:db8::2") == (
        1,
        "",
        "sendgate: 2001:db8::/64: not banned\n",
    )
    run(config, capsys, "add", "carol@example.org")
    code, out, _ = run(config, capsys, "remove", "carol@example.org", "--json")
    assert (code, json.loads(out)) == (
        0,
        {"kind": "account", "target": "carol@example.org", "removed": True},
    )


@pytest.mark.parametrize(
    ("target", "error"),
    [
        ("bogus", "'bogus' is not an address, a network (host bits zero) or an account"),
        ("192.0.2.7/24", "'192.0.2.7/24' is not an address, a network (host bits zero)"),
        ("10.0.0.0/8", "10.0.0.0/8: only /32 and /24 networks can be banned"),
        ("2001:db8::/32", "2001:db8::/32: only /64, /56 and /48 networks can be banned"),
        ("198.51.100.7", "198.51.100.7/32: overlaps 198.51.100.0/24 of [login_limits].allow"),
        ("2001:db8:1::/48", "2001:db8:1::/48: overlaps 2001:db8:1:2::/64 of [login_limits]"),
    ],
)
@pytest.mark.parametrize("action", ["add", "remove"])
def test_a_target_that_cannot_be_banned_is_a_one_line_error(
    config: Path, capsys: pytest.CaptureFixture[str], target: str, error: str, action: str
) -> None:
    text = config.read_text()
    allow = 'allow = ["198.51.100.0/24", "2001:db8:1:2::/64"]'
    config.write_text(text.replace("\nallow = []\n", f"\n{allow}\n", 1))
    code, out, err = run(config, capsys, action, target)
    assert (code, out) == (1, "")
    assert err.startswith(f"sendgate: {error}")
    assert err.count("\n") == 1
    assert limits(config).bans() == []


@pytest.mark.parametrize("duration", ["0", "-5", "soon", "nan", "inf", "1e300", "8640001"])
def test_a_bad_duration_is_a_usage_error(
    config: Path, capsys: pytest.CaptureFixture[str], duration: str
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--config", str(config), "bans", "add", "192.0.2.7", "--duration", duration])
    assert caught.value.code == 2
    assert "is not a number of seconds between 0 and 8640000" in capsys.readouterr().err

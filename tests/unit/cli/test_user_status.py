"""Tests for `sendgate user status|unflag` and the --json forms of the original user actions."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from tests.support.cli import Cli, one_line_error

from sendgate.config.load import load_config
from sendgate.policy.keys import account_key, known_lock_key
from sendgate.store.backends import Stores, open_stores
from sendgate.store.users import UserSettings
from sendgate.text import iso_utc

ALICE = "alice@example.org"
DAY = 86400.0
DEFAULT_SETTINGS = [
    "app_passwords_only: no (default)",
    "sign_in_notice: yes (default)",
    "messages_per_hour: 200 (default)",
    "messages_per_day: 1000 (default)",
    "recipients_per_message: 100 (default)",
    "recipients_per_day: 2000 (default)",
    "new_recipients_per_day: 500 (default)",
]


def test_status_of_a_new_user(cli: Cli) -> None:
    assert cli("user", "status", "ALICE@example.org") == (
        0,
        "\n".join(
            [
                f"user: {ALICE}",
                f"address: {ALICE}",
                *DEFAULT_SETTINGS,
                "flag: not flagged",
                "known-network: none",
                "app-passwords: none",
                "account-lock: none",
            ]
        )
        + "\n",
        "",
    )


def test_status_shows_everything_the_stores_know(cli: Cli, stores: Stores) -> None:
    users = stores.users
    now = time.time()
    users.add_address(ALICE, "@example.net")
    users.set_settings(ALICE, UserSettings(sign_in_notice=False, messages_per_day=0))
    for label in ("phone", "laptop"):
        users.add_app_password(ALICE, label, "x", "00000000", now)
    memory = 30 * DAY  # the default [login_limits].known_network_memory
    users.note_login(ALICE, "203.0.113.0/24", now - memory - 10, memory=memory, recent=3600)
    users.note_login(ALICE, "192.0.2.0/24", now - 2 * DAY, memory=memory, recent=3600)
    users.note_login(ALICE, "192.0.2.0/24", now - DAY, memory=memory, recent=3600)
    users.note_login(ALICE, "2001:db8::/48", now - 60, memory=memory, recent=3600)
    flag = users.set_flag(ALICE, "networks", now - 30)
    lock = stores.limits.ban(account_key(ALICE), 3600, "account_failures", memory=DAY)
    known = stores.limits.ban(
        known_lock_key(ALICE, "192.0.2.0/24"), 600, "known_failures", memory=DAY
    )
    stores.limits.ban(known_lock_key("x" + ALICE, "192.0.2.0/24"), 600, "other", memory=DAY)
    code, out, err = cli("user", "status", ALICE)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"user: {ALICE}",
        "address: @example.net",
        f"address: {ALICE}",
        "app_passwords_only: no (default)",
        "sign_in_notice: no",
        "messages_per_hour: 200 (default)",
        "messages_per_day: 0 (unlimited)",
        "recipients_per_message: 100 (default)",
        "recipients_per_day: 2000 (default)",
        "new_recipients_per_day: 500 (default)",
        f"flag: networks (since {iso_utc(flag.since)})",
        f"known-network: 2001:db8::/48 first-seen {iso_utc(now - 60)}"
        f" last-seen {iso_utc(now - 60)}",
        f"known-network: 192.0.2.0/24 first-seen {iso_utc(now - 2 * DAY)}"
        f" last-seen {iso_utc(now - DAY)}",
        "app-passwords: laptop, phone",
        f"account-lock: until {iso_utc(lock.until)} (account_failures,"
        f" since {iso_utc(lock.since)})",
        f"known-network-lock: 192.0.2.0/24 until {iso_utc(known.until)} (known_failures,"
        f" since {iso_utc(known.since)})",
    ]
    document = cli.json("user", "status", ALICE)
    assert document == {
        "username": ALICE,
        "addresses": ["@example.net", ALICE],
        "settings": {
            "app_passwords_only": {"value": False, "default": True},
            "sign_in_notice": {"value": False, "default": False},
            "messages_per_hour": {"value": 200, "default": True},
            "messages_per_day": {"value": 0, "default": False},
            "recipients_per_message": {"value": 100, "default": True},
            "recipients_per_day": {"value": 2000, "default": True},
            "new_recipients_per_day": {"value": 500, "default": True},
        },
        "flag": {"reason": "networks", "since": iso_utc(flag.since)},
        "known_networks": [
            {
                "network": "2001:db8::/48",
                "first_seen": iso_utc(now - 60),
                "last_seen": iso_utc(now - 60),
            },
            {
                "network": "192.0.2.0/24",
                "first_seen": iso_utc(now - 2 * DAY),
                "last_seen": iso_utc(now - DAY),
            },
        ],
        "app_passwords": ["laptop", "phone"],
        "account_lock": {
            "since": iso_utc(lock.since),
            "until": iso_utc(lock.until),
            "reason": "account_failures",
            "offences": 1,
        },
        "known_network_locks": [
            {
                "network": "192.0.2.0/24",
                "since": iso_utc(known.since),
                "until": iso_utc(known.until),
                "reason": "known_failures",
            }
        ],
    }


def test_status_reads_the_defaults_from_the_configuration(cli: Cli, config: Path) -> None:
    text = config.read_text()
    text = text.replace("messages_per_hour = 200", "messages_per_hour = 50")
    notice = text.index("[sign_in_notice]")
    text = text[:notice] + text[notice:].replace("enabled = true", "enabled = false", 1)
    text = text.replace("known_network_memory = 2592000\n", "known_network_memory = 3600\n")
    config.write_text(text)
    cfg = load_config(config)
    assert cfg.login_limits.known_network_memory == 3600.0
    stores = open_stores(cfg)
    try:
        now = time.time()
        memory = 30 * DAY
        stores.users.note_login(ALICE, "192.0.2.0/24", now - 7200, memory=memory, recent=60)
    finally:
        stores.close()
    out = cli("user", "status", ALICE)[1].splitlines()
    assert "sign_in_notice: no (default)" in out
    assert "messages_per_hour: 50 (default)" in out
    assert "known-network: none" in out  # seen two hours ago, remembered for one


def test_status_escapes_what_a_terminal_would_act_on(cli: Cli, stores: Stores) -> None:
    stores.users.set_flag(ALICE, "evil\x1b[2J\u202e", 1_800_000_000.0)
    out = cli("user", "status", ALICE)[1]
    assert "flag: evil\\x1b[2J\\u202e (since 2027-01-15T08:00:00Z)\n" in out
    assert "\x1b" not in cli("user", "status", ALICE, "--json")[1]


def test_unflag(cli: Cli, stores: Stores) -> None:
    assert cli("user", "unflag", ALICE) == (0, f"{ALICE}: not flagged\n", "")
    stores.users.set_flag(ALICE, "sending_limit", 1_800_000_000.0)
    assert cli("user", "unflag", ALICE) == (
        0,
        f"{ALICE}: flag cleared (sending_limit since 2027-01-15T08:00:00Z)\n",
        "",
    )
    assert stores.users.flag_of(ALICE) is None
    stores.users.set_flag(ALICE, "networks", 1_800_000_000.0)
    assert cli.json("user", "unflag", ALICE) == {"username": ALICE, "was_flagged": True}
    assert cli.json("user", "unflag", ALICE) == {"username": ALICE, "was_flagged": False}


# --- the original actions ---------------------------------------------------------------------


def test_original_actions_print_as_before(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("another long passphrase 42\n"))
    assert cli("user", "passwd", ALICE) == (0, f"password changed for {ALICE}\n", "")
    assert cli("user", "addr-add", ALICE, "@Example.NET") == (
        0,
        f"{ALICE} may send as @example.net\n",
        "",
    )
    assert cli("user", "list") == (0, f"{ALICE} @example.net,{ALICE}\n", "")
    assert cli("user", "addr-remove", ALICE, "@example.net") == (
        0,
        f"{ALICE} may no longer send as @example.net\n",
        "",
    )
    assert cli("user", "remove", ALICE) == (0, f"removed {ALICE}\n", "")
    assert cli("user", "list") == (0, "", "")


def test_original_actions_with_json(
    cli: Cli, stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("another long passphrase 42\n"))
    assert cli.json("user", "passwd", ALICE) == {"username": ALICE, "password_changed": True}
    monkeypatch.setattr("sys.stdin", io.StringIO("yet another passphrase 43\n"))
    bob = "bob@example.org"
    assert cli.json("user", "add", "Bob@example.org") == {"username": bob, "added": True}
    assert cli.json("user", "addr-add", ALICE, "sales@example.org") == {
        "username": ALICE,
        "address": "sales@example.org",
        "may_send_as": True,
    }
    assert cli.json("user", "list") == {
        "users": [
            {"username": ALICE, "addresses": [ALICE, "sales@example.org"]},
            {"username": bob, "addresses": [bob]},
        ]
    }
    assert cli.json("user", "addr-remove", ALICE, "sales@example.org") == {
        "username": ALICE,
        "address": "sales@example.org",
        "may_send_as": False,
    }
    assert cli.json("user", "remove", bob) == {"username": bob, "removed": True}
    assert stores.users.get_user(bob) is None


def test_errors_stay_one_line_with_json(cli: Cli) -> None:
    one_line_error(
        cli("user", "remove", "nobody@example.org", "--json"), ("unknown user nobody@example.org")
    )
    one_line_error(
        cli("user", "set", ALICE, "hourly", "1", "--json"),
        "unknown setting 'hourly' (one of: app_passwords_only, sign_in_notice,"
        " messages_per_hour, messages_per_day, recipients_per_message, recipients_per_day,"
        " new_recipients_per_day)",
    )

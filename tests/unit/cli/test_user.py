"""Tests for `sendgate user app-password|set` run in process, with their --json forms."""

from __future__ import annotations

import re
import time

import pytest
from argon2 import PasswordHasher
from tests.support.cli import Cli, one_line_error

from sendgate.policy.app_passwords import lookup_of
from sendgate.store.backends import Stores
from sendgate.store.users import UserSettings
from sendgate.text import iso_utc

ALICE = "alice@example.org"
APP_PASSWORD = re.compile(r"[a-z2-7]{5}(-[a-z2-7]{5}){3}")


def settings_of(stores: Stores) -> UserSettings:
    user = stores.users.get_user(ALICE)
    assert user is not None
    return user.settings


# --- app passwords ----------------------------------------------------------------------------


def test_app_password_add_prints_the_password_alone_on_the_last_line(
    cli: Cli, stores: Stores
) -> None:
    code, out, err = cli("user", "app-password", "add", "Alice@Example.org", "phone")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[:-1] == [f"app password phone added for {ALICE}; it is shown this once:"]
    password = lines[-1]
    assert APP_PASSWORD.fullmatch(password)
    [app] = stores.users.app_passwords(ALICE)
    assert (app.label, app.lookup, app.last_used) == ("phone", lookup_of(password), None)
    assert app.password_hash.startswith("$argon2id$")
    assert PasswordHasher().verify(app.password_hash, password)
    assert abs(app.created - time.time()) < 60


def test_app_password_add_json_carries_the_password(cli: Cli, stores: Stores) -> None:
    document = cli.json("user", "app-password", "add", ALICE, "laptop")
    [app] = stores.users.app_passwords(ALICE)
    assert document == {
        "username": ALICE,
        "label": "laptop",
        "created": iso_utc(app.created),
        "password": document["password"],
    }
    assert PasswordHasher().verify(app.password_hash, document["password"])


def test_app_password_list_and_remove(cli: Cli, stores: Stores) -> None:
    assert cli("user", "app-password", "list", ALICE) == (0, "", "")
    for label in ("phone", "laptop"):
        assert cli("user", "app-password", "add", ALICE, label)[0] == 0
    phone = next(app for app in stores.users.app_passwords(ALICE) if app.label == "phone")
    laptop = next(app for app in stores.users.app_passwords(ALICE) if app.label == "laptop")
    stores.users.touch_app_password(ALICE, "phone", 1_800_000_000.0)
    assert cli("user", "app-password", "list", ALICE) == (
        0,
        f"laptop {iso_utc(laptop.created)} never\n"
        f"phone {iso_utc(phone.created)} 2027-01-15T08:00:00Z\n",
        "",
    )
    assert cli.json("user", "app-password", "list", ALICE) == {
        "username": ALICE,
        "app_passwords": [
            {"label": "laptop", "created": iso_utc(laptop.created), "last_used": None},
            {
                "label": "phone",
                "created": iso_utc(phone.created),
                "last_used": "2027-01-15T08:00:00Z",
            },
        ],
    }
    assert cli("user", "app-password", "remove", ALICE, "phone") == (
        0,
        f"app password phone removed from {ALICE}\n",
        "",
    )
    assert cli.json("user", "app-password", "remove", ALICE, "laptop") == {
        "username": ALICE,
        "label": "laptop",
        "removed": True,
    }
    assert stores.users.app_passwords(ALICE) == []
    one_line_error(
        cli("user", "app-password", "remove", ALICE, "phone"),
        f"user {ALICE} has no app password labelled phone",
    )


@pytest.mark.parametrize(
    "label",
    ["", "my phone", "a" * 65, "tab\there", "esc\x1b[31m", "bidi\u202e"],
    ids=["empty", "space", "too-long", "tab", "escape", "bidi"],
)
def test_app_password_labels_are_checked(cli: Cli, stores: Stores, label: str) -> None:
    one_line_error(
        cli("user", "app-password", "add", ALICE, label),
        f"label {label!r}: use 1 to 64 printable characters without spaces",
    )
    assert stores.users.app_passwords(ALICE) == []


def test_app_password_label_limits_are_inclusive(cli: Cli, stores: Stores) -> None:
    for label in ("a", "b" * 64, "téléphone-2"):
        assert cli("user", "app-password", "add", ALICE, label)[0] == 0
    assert len(stores.users.app_passwords(ALICE)) == 3


def test_app_password_label_must_be_new(cli: Cli) -> None:
    assert cli("user", "app-password", "add", ALICE, "phone")[0] == 0
    one_line_error(
        cli("user", "app-password", "add", ALICE, "phone"),
        f"user {ALICE} already has an app password labelled phone",
    )


@pytest.mark.parametrize(
    "argv",
    [
        ("app-password", "add", "nobody@example.org", "phone"),
        ("app-password", "list", "nobody@example.org"),
        ("app-password", "remove", "nobody@example.org", "phone"),
        ("set", "nobody@example.org", "messages_per_day", "5"),
        ("status", "nobody@example.org"),
        ("unflag", "nobody@example.org"),
    ],
    ids=lambda argv: "-".join(argv[:2]),
)
def test_unknown_user_is_one_line(cli: Cli, argv: tuple[str, ...]) -> None:
    one_line_error(cli("user", *argv), "nobody@example.org: no such user")


def test_a_user_that_is_not_an_address_is_one_line(cli: Cli) -> None:
    code, out, err = cli("user", "status", "not an address")
    assert (code, out) == (1, "")
    assert err.startswith("sendgate: 'not an address': not a valid mail address (")
    assert err.count("\n") == 1


def test_missing_arguments_are_usage_errors(cli: Cli) -> None:
    with pytest.raises(SystemExit) as caught:
        cli("user", "app-password", "add", ALICE)
    assert caught.value.code == 2


# --- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "value", "stored", "shown"),
    [
        ("app_passwords_only", "yes", UserSettings(app_passwords_only=True), "yes"),
        ("app_passwords_only", "no", UserSettings(), "no (default)"),
        ("sign_in_notice", "no", UserSettings(sign_in_notice=False), "no"),
        ("sign_in_notice", "yes", UserSettings(sign_in_notice=True), "yes"),
        ("sign_in_notice", "default", UserSettings(), "yes (default)"),
        ("messages_per_hour", "0", UserSettings(messages_per_hour=0), "0 (unlimited)"),
        ("messages_per_day", "100000000", UserSettings(messages_per_day=100000000), "100000000"),
        ("recipients_per_message", "7", UserSettings(recipients_per_message=7), "7"),
        ("recipients_per_day", "0042", UserSettings(recipients_per_day=42), "42"),
        ("new_recipients_per_day", "default", UserSettings(), "500 (default)"),
    ],
)
def test_user_set(
    cli: Cli, stores: Stores, setting: str, value: str, stored: UserSettings, shown: str
) -> None:
    assert cli("user", "set", ALICE, setting, value)[:2] == (0, f"{ALICE}: {setting} = {shown}\n")
    assert settings_of(stores) == stored


def test_user_set_default_gives_the_choice_back(cli: Cli, stores: Stores) -> None:
    cli("user", "set", ALICE, "messages_per_hour", "5")
    cli("user", "set", ALICE, "messages_per_day", "6")
    assert cli("user", "set", ALICE, "messages_per_hour", "default")[0] == 0
    assert settings_of(stores) == UserSettings(messages_per_day=6)


def test_user_set_json(cli: Cli) -> None:
    assert cli.json("user", "set", ALICE, "messages_per_hour", "5") == {
        "username": ALICE,
        "setting": "messages_per_hour",
        "value": 5,
        "in_force": 5,
        "default": False,
    }
    assert cli.json("user", "set", ALICE, "sign_in_notice", "default") == {
        "username": ALICE,
        "setting": "sign_in_notice",
        "value": None,
        "in_force": True,
        "default": True,
    }


def test_app_passwords_only_without_an_app_password_warns(cli: Cli) -> None:
    code, out, err = cli("user", "set", ALICE, "app_passwords_only", "yes")
    assert (code, out) == (0, f"{ALICE}: app_passwords_only = yes\n")
    assert err == (
        f"sendgate: note: {ALICE} has no app password yet, so it cannot log in on SMTP until"
        " one is added\n"
    )
    cli("user", "app-password", "add", ALICE, "phone")
    assert cli("user", "set", ALICE, "app_passwords_only", "yes")[2] == ""


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("hourly", "5", "unknown setting 'hourly' (one of: app_passwords_only, sign_in_notice,"),
        ("app_passwords_only", "default", "app_passwords_only: 'default' is not yes or no"),
        ("app_passwords_only", "true", "app_passwords_only: 'true' is not yes or no"),
        ("sign_in_notice", "maybe", "sign_in_notice: 'maybe' is not yes, no or default"),
        ("messages_per_hour", "-1", "messages_per_hour: '-1' is not a whole number"),
        ("messages_per_hour", "1.5", "messages_per_hour: '1.5' is not a whole number"),
        ("messages_per_hour", "yes", "messages_per_hour: 'yes' is not a whole number"),
        ("messages_per_hour", "100000001", "messages_per_hour: '100000001' is not a whole"),
        ("messages_per_hour", "9" * 5000, "messages_per_hour: '999"),
        ("messages_per_hour", "\u0661\u0662", "messages_per_hour: '١٢' is not a whole number"),
        ("messages_per_hour", "", "messages_per_hour: '' is not a whole number"),
    ],
    ids=lambda value: value[:20] if isinstance(value, str) else None,
)
def test_user_set_refuses_bad_names_and_values(
    cli: Cli, stores: Stores, setting: str, value: str, message: str
) -> None:
    code, out, err = cli("user", "set", ALICE, setting, value)
    assert (code, out) == (1, "")
    assert err.startswith(f"sendgate: {message}")
    assert err.count("\n") == 1
    assert settings_of(stores) == UserSettings()

"""`sendgate user app-password|set|status|unflag`: an account's app passwords, settings and state.

`app-password add USER LABEL` prints the new password alone on the last line of stdout, so a
script can take it with `tail -n 1`; it is shown this once and stored only as an argon2id hash.
`app-password list USER` prints one line per app password: ``LABEL CREATED LAST-USED`` (ISO
8601 UTC, "never" if unused; labels hold no spaces). `status USER` is in `cli.user_status`.

Security: flag reasons and ban reasons come from the policy, labels and names from operators;
everything printed for people goes through `text.printable`, and JSON escapes what is not ASCII.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from typing import Any

from sendgate.cli.command import print_json
from sendgate.cli.user_status import (
    format_status,
    read_status,
    settings_in_force,
    shown_setting,
    status_json,
)
from sendgate.config.schema import Config
from sendgate.errors import UserError
from sendgate.policy.app_passwords import generate, lookup_of
from sendgate.policy.passwords import hash_password, new_hasher
from sendgate.smtp.address import AddressError, parse_mailbox
from sendgate.store.backends import Stores
from sendgate.store.users import SETTING_NAMES, UserRecord, UserStore
from sendgate.text import iso_utc, printable

ACTIONS = frozenset({"app-password", "set", "status", "unflag"})
MAX_LABEL = 64
# The largest limit the configuration accepts ([sending_limits] settings).
MAX_LIMIT = 100_000_000
_YES_NO = {"yes": True, "no": False}


def add_arguments(
    user: argparse._SubParsersAction[argparse.ArgumentParser], json_option: argparse.ArgumentParser
) -> None:
    """Add this module's actions to the `user` subcommands."""
    apps = user.add_parser("app-password", help="add, list or remove a user's app passwords")
    app_actions = apps.add_subparsers(dest="app_action", required=True, metavar="ACTION")
    add = app_actions.add_parser(
        "add",
        help="make an app password; printed once, alone on the last line",
        parents=[json_option],
    )
    add.add_argument("user", metavar="USER")
    add.add_argument("label", metavar="LABEL")
    listing = app_actions.add_parser(
        "list", help="labels, creation and last use", parents=[json_option]
    )
    listing.add_argument("user", metavar="USER")
    remove = app_actions.add_parser("remove", help="remove an app password", parents=[json_option])
    remove.add_argument("user", metavar="USER")
    remove.add_argument("label", metavar="LABEL")
    setting = user.add_parser(
        "set",
        help="set one of a user's settings: "
        + ", ".join(SETTING_NAMES)
        + " (yes|no, or a number; 'default' gives the choice back to the configuration)",
        parents=[json_option],
    )
    setting.add_argument("user", metavar="USER")
    setting.add_argument("setting", metavar="SETTING")
    setting.add_argument("value", metavar="VALUE")
    for name, text in (
        ("status", "settings in force, flag, known networks, app passwords, lock"),
        ("unflag", "clear the flag of an account flagged as compromised"),
    ):
        user.add_parser(name, help=text, parents=[json_option]).add_argument("user", metavar="USER")


def canonical_user(text: str) -> str:
    """The store's name for the user an operator typed; UserError if it is not a mailbox."""
    try:
        address = parse_mailbox(text, smtputf8=True)
    except AddressError as exc:
        raise UserError(f"{text!r}: not a valid mail address ({exc})") from exc
    return str(address).lower()


def run(args: argparse.Namespace, cfg: Config, stores: Stores) -> None:
    """Run one of `ACTIONS`; UserError for bad input or an unknown user."""
    users = stores.users
    username = canonical_user(args.user)
    record = users.get_user(username)
    if record is None:
        raise UserError(f"{username}: no such user")
    if args.action == "app-password":
        _app_password(args, users, record)
    elif args.action == "set":
        _set(args, cfg, users, record)
    elif args.action == "status":
        status = read_status(cfg, stores, record, time.time())
        if args.json:
            print_json(status_json(status))
        else:
            print(format_status(status))
    else:
        flag = users.flag_of(username)
        cleared = users.clear_flag(username)
        if args.json:
            print_json({"username": username, "was_flagged": cleared})
        elif flag is None or not cleared:
            print(f"{username}: not flagged")
        else:
            print(
                f"{username}: flag cleared ({printable(flag.reason)} since {iso_utc(flag.since)})"
            )


def _app_password(args: argparse.Namespace, users: UserStore, record: UserRecord) -> None:
    username = record.username
    if args.app_action == "list":
        apps = users.app_passwords(username)
        if args.json:
            listed = [
                {
                    "label": app.label,
                    "created": iso_utc(app.created),
                    "last_used": None if app.last_used is None else iso_utc(app.last_used),
                }
                for app in apps
            ]
            print_json({"username": username, "app_passwords": listed})
        else:
            for app in apps:
                last = "never" if app.last_used is None else iso_utc(app.last_used)
                print(f"{printable(app.label)} {iso_utc(app.created)} {last}")
        return
    label = check_label(args.label)
    if args.app_action == "remove":
        users.remove_app_password(username, label)
        if args.json:
            print_json({"username": username, "label": label, "removed": True})
        else:
            print(f"app password {label} removed from {username}")
        return
    if any(app.label == label for app in users.app_passwords(username)):
        raise UserError(f"user {username} already has an app password labelled {label}")
    password = generate()
    created = time.time()
    hashed = hash_password(new_hasher(), password)
    users.add_app_password(username, label, hashed, lookup_of(password), created)
    if args.json:
        print_json(
            {
                "username": username,
                "label": label,
                "created": iso_utc(created),
                "password": password,
            }
        )
    else:
        print(f"app password {label} added for {username}; it is shown this once:")
        print(password)


def check_label(label: str) -> str:
    """`label` if it is 1 to 64 printable characters without spaces, else UserError."""
    if (
        not 1 <= len(label) <= MAX_LABEL
        or not label.isprintable()
        or any(char.isspace() for char in label)
    ):
        raise UserError(
            f"label {label!r}: use 1 to {MAX_LABEL} printable characters without spaces"
        )
    return label


def parse_setting(name: str, text: str) -> bool | int | None:
    """The stored value of `sendgate user set USER NAME TEXT` (None: default); UserError if bad."""
    if name not in SETTING_NAMES:
        raise UserError(f"unknown setting {name!r} (one of: {', '.join(SETTING_NAMES)})")
    if name == "app_passwords_only":
        if text in _YES_NO:
            return _YES_NO[text]
        raise UserError(f"{name}: {text!r} is not yes or no")
    if text == "default":
        return None
    if name == "sign_in_notice":
        if text in _YES_NO:
            return _YES_NO[text]
        raise UserError(f"{name}: {text!r} is not yes, no or default")
    # The length check first keeps int() cheap; isascii() refuses digits of other scripts.
    if text.isascii() and text.isdigit() and len(text) <= 12 and int(text) <= MAX_LIMIT:
        return int(text)
    raise UserError(f"{name}: {text!r} is not a whole number from 0 to {MAX_LIMIT} or default")


def _set(args: argparse.Namespace, cfg: Config, users: UserStore, record: UserRecord) -> None:
    value = parse_setting(args.setting, args.value)
    change: dict[str, Any] = {args.setting: value}
    settings = dataclasses.replace(record.settings, **change)
    users.set_settings(record.username, settings)
    if settings.app_passwords_only and not users.app_passwords(record.username):
        print(
            f"sendgate: note: {record.username} has no app password yet, so it cannot log in"
            " on SMTP until one is added",
            file=sys.stderr,
        )
    in_force, default = settings_in_force(cfg, settings)[args.setting]
    if args.json:
        print_json(
            {
                "username": record.username,
                "setting": args.setting,
                "value": value,
                "in_force": in_force,
                "default": default,
            }
        )
    else:
        print(f"{record.username}: {args.setting} = {shown_setting(in_force, default)}")

"""`sendgate user ...`: add, change, remove and list users and the addresses they may send as.

The account actions (app passwords, settings, status, unflag) live in `cli.user_account`; this
module parses every `user` action and runs the original ones. With `--json` every action prints
one JSON document on stdout instead of its lines for people; errors stay one line on stderr.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from sendgate.cli import user_account
from sendgate.cli.command import Group, add_json_flag, load, print_json
from sendgate.cli.user_account import canonical_user
from sendgate.errors import UserError
from sendgate.policy.passwords import hash_password, new_hasher, password_problem
from sendgate.smtp.address import AddressError, parse_domain
from sendgate.store.backends import open_stores
from sendgate.store.users import UserStore


def _arguments(parser: argparse.ArgumentParser) -> None:
    json_option = argparse.ArgumentParser(add_help=False)
    add_json_flag(json_option)
    user = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (
        ("add", "add a user (it may send as ADDRESS); password from a prompt or stdin"),
        ("passwd", "change a user's password; password from a prompt or stdin"),
        ("remove", "remove a user"),
    ):
        action = user.add_parser(name, help=text, parents=[json_option])
        action.add_argument("address", metavar="ADDRESS")
    user.add_parser(
        "list", help="list users and the addresses they may send as", parents=[json_option]
    )
    for name, text in (
        ("addr-add", "let USER send as ADDRESS (or a whole domain: @example.org)"),
        ("addr-remove", "stop USER sending as ADDRESS"),
    ):
        action = user.add_parser(name, help=text, parents=[json_option])
        action.add_argument("user", metavar="USER")
        action.add_argument("address", metavar="ADDRESS")
    user_account.add_arguments(user, json_option)


def _owned_address(text: str) -> str:
    if text.startswith("@"):
        try:
            return "@" + parse_domain(text[1:], smtputf8=True)
        except AddressError as exc:
            raise UserError(f"{text!r}: not a valid domain ({exc})") from exc
    return canonical_user(text)


def _read_password(username: str) -> str:
    if sys.stdin.isatty():
        first = getpass.getpass(f"Password for {username}: ")
        if getpass.getpass("Repeat password: ") != first:
            raise UserError("passwords do not match")
        password = first
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    problem = password_problem(password, username)
    if problem is not None:
        raise UserError(f"password refused: {problem}")
    return password


def run(args: argparse.Namespace) -> int:
    cfg = load(args)
    stores = open_stores(cfg)
    try:
        if args.action in user_account.ACTIONS:
            user_account.run(args, cfg, stores)
        else:
            _run(args, stores.users)
    finally:
        stores.close()
    return 0


def _run(args: argparse.Namespace, store: UserStore) -> None:
    action = args.action
    if action == "list":
        records = store.list_users()
        if args.json:
            users = [{"username": r.username, "addresses": list(r.addresses)} for r in records]
            print_json({"users": users})
        else:
            for record in records:
                print(f"{record.username} {','.join(record.addresses)}")
    elif action in ("add", "passwd"):
        username = canonical_user(args.address)
        if action == "passwd" and store.get_user(username) is None:
            raise UserError(f"{username}: no such user")
        if action == "add" and store.get_user(username) is not None:
            raise UserError(f"{username}: user exists")
        hashed = hash_password(new_hasher(), _read_password(username))
        if action == "add":
            store.add_user(username, hashed)
            _say(args, f"added {username}", {"username": username, "added": True})
        else:
            store.set_password_hash(username, hashed)
            _say(
                args,
                f"password changed for {username}",
                {"username": username, "password_changed": True},
            )
    elif action == "remove":
        username = canonical_user(args.address)
        store.remove_user(username)
        _say(args, f"removed {username}", {"username": username, "removed": True})
    else:
        username = canonical_user(args.user)
        address = _owned_address(args.address)
        document = {"username": username, "address": address}
        if action == "addr-add":
            store.add_address(username, address)
            _say(args, f"{username} may send as {address}", document | {"may_send_as": True})
        else:
            store.remove_address(username, address)
            text = f"{username} may no longer send as {address}"
            _say(args, text, document | {"may_send_as": False})


def _say(args: argparse.Namespace, text: str, document: dict[str, object]) -> None:
    if args.json:
        print_json(document)
    else:
        print(text)


GROUP = Group("user", "manage users", _arguments, run)

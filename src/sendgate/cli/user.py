"""`sendgate user ...`: add, change, remove and list users and the addresses they may send as."""

from __future__ import annotations

import argparse
import getpass
import sys

from sendgate.cli.command import Group, load
from sendgate.errors import UserError
from sendgate.policy.passwords import hash_password, new_hasher, password_problem
from sendgate.smtp.address import AddressError, parse_domain, parse_mailbox
from sendgate.store.backends import open_stores


def _arguments(parser: argparse.ArgumentParser) -> None:
    user = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (
        ("add", "add a user (it may send as ADDRESS); password from a prompt or stdin"),
        ("passwd", "change a user's password; password from a prompt or stdin"),
        ("remove", "remove a user"),
    ):
        user.add_parser(name, help=text).add_argument("address", metavar="ADDRESS")
    user.add_parser("list", help="list users and the addresses they may send as")
    for name, text in (
        ("addr-add", "let USER send as ADDRESS (or a whole domain: @example.org)"),
        ("addr-remove", "stop USER sending as ADDRESS"),
    ):
        action = user.add_parser(name, help=text)
        action.add_argument("user", metavar="USER")
        action.add_argument("address", metavar="ADDRESS")


def _canonical_user(text: str) -> str:
    try:
        address = parse_mailbox(text, smtputf8=True)
    except AddressError as exc:
        raise UserError(f"{text!r}: not a valid mail address ({exc})") from exc
    return str(address).lower()


def _owned_address(text: str) -> str:
    if text.startswith("@"):
        try:
            return "@" + parse_domain(text[1:], smtputf8=True)
        except AddressError as exc:
            raise UserError(f"{text!r}: not a valid domain ({exc})") from exc
    return _canonical_user(text)


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
    store = stores.users
    try:
        action = args.action
        if action == "list":
            for record in store.list_users():
                print(f"{record.username} {','.join(record.addresses)}")
        elif action in ("add", "passwd"):
            username = _canonical_user(args.address)
            if action == "passwd" and store.get_user(username) is None:
                raise UserError(f"{username}: no such user")
            if action == "add" and store.get_user(username) is not None:
                raise UserError(f"{username}: user exists")
            hashed = hash_password(new_hasher(), _read_password(username))
            if action == "add":
                store.add_user(username, hashed)
                print(f"added {username}")
            else:
                store.set_password_hash(username, hashed)
                print(f"password changed for {username}")
        elif action == "remove":
            username = _canonical_user(args.address)
            store.remove_user(username)
            print(f"removed {username}")
        else:
            username = _canonical_user(args.user)
            address = _owned_address(args.address)
            if action == "addr-add":
                store.add_address(username, address)
                print(f"{username} may send as {address}")
            else:
                store.remove_address(username, address)
                print(f"{username} may no longer send as {address}")
    finally:
        stores.close()
    return 0


GROUP = Group("user", "manage users", _arguments, run)

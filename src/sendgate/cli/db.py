"""`sendgate db migrate`: create or upgrade the tables of the stores kept in PostgreSQL.

Run it once before the first node starts, and again after an upgrade that brings a new schema
version: a node refuses to start on a version it does not know. Several nodes (or operators)
migrating at once are put in order by the database, and each step is applied once.
"""

from __future__ import annotations

import argparse

from sendgate.cli.command import Group, add_json_flag, load, print_json
from sendgate.store.backends import migrate_database


def _arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    migrate = actions.add_parser("migrate", help="create or upgrade the PostgreSQL tables")
    add_json_flag(migrate)


def run(args: argparse.Namespace) -> int:
    cfg = load(args)
    before, after = migrate_database(cfg)
    if args.json:
        print_json({"before": before, "after": after})
    elif before == after:
        print(f"schema version {after}: already current")
    else:
        print(f"schema version {before} -> {after}")
    return 0


GROUP = Group(
    "db", "create or upgrade the shared database's tables (cluster mode)", _arguments, run
)

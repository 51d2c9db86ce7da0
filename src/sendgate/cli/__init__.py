"""The `sendgate` command: parse arguments, call library code, print, exit (0 ok, 1 fail, 2 usage).

These invocations are relied on by scripts and docs and must keep working exactly so:
`sendgate init DIR [--hostname NAME] [--submission HOST:PORT] [--submissions HOST:PORT]`,
`sendgate --config FILE user add ADDRESS` (password from stdin when it is not a terminal),
`sendgate --config FILE serve`, `sendgate --config FILE queue list`,
`sendgate init DIR --smarthost HOST:PORT [--smarthost-tls none|starttls|implicit]`,
`sendgate --config FILE dkim keygen DOMAIN [--selector S]`,
`sendgate --config FILE queue list|show|retry|remove|explain ID`,
`sendgate --config FILE queue hold|release ID|--user USER`,
`sendgate --config FILE bans list|add|remove [TARGET]`,
`sendgate --config FILE user status|unflag USER` (each of these with `--json`),
`sendgate --config FILE user app-password add USER LABEL` (the password alone on the last line
of stdout), `sendgate --config FILE audit [--json]`,
`sendgate --config FILE dns DOMAIN [--check]`,
`sendgate probe HOST[:PORT] [--implicit-tls] [--auth USER] [--json]`,
`sendgate --config FILE db migrate [--json]`, `sendgate --config FILE cluster status [--json]`.
Passwords are read from a prompt or stdin, never from argv.

Each command group is one module of this package (init, serve, user, queue, bans, dkim, dns,
db, cluster, audit, probe) offering a `Group` row; `GROUPS` below lists them in the order
`--help` shows. Adding a group is one new module and one entry there. This package owns every
line printed for people; the library code it calls returns values and raises `SendgateError`s,
and prints nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from sendgate import __version__
from sendgate.cli import (
    audit,
    bans,
    cluster,
    db,
    dkim,
    dns,
    init,
    probe,
    queue,
    sendmail,
    serve,
    user,
)
from sendgate.cli.command import Group
from sendgate.errors import ConfigError, SendgateError
from sendgate.scaffold import CONFIG_NAME

GROUPS: tuple[Group, ...] = (
    init.GROUP,
    serve.GROUP,
    user.GROUP,
    queue.GROUP,
    bans.GROUP,
    dkim.GROUP,
    dns.GROUP,
    db.GROUP,
    cluster.GROUP,
    audit.GROUP,
    probe.GROUP,
    sendmail.GROUP,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sendgate", description="Secure mail submission agent.")
    parser.add_argument("--version", action="version", version=f"sendgate {__version__}")
    parser.add_argument(
        "--config",
        type=Path,
        help=f"configuration file (default: $SENDGATE_CONFIG or ./{CONFIG_NAME}; "
        f"`serve` without one creates ./{serve.DEFAULT_DIR}/)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        command = sub.add_parser(group.name, help=group.help)
        group.add_arguments(command)
        command.set_defaults(run=group.run)
    return parser


def _command_at(argv: list[str]) -> int | None:
    """Where the command name is, past the global options; None if there is none."""
    index = 0
    while index < len(argv):
        if argv[index] == "--config":
            index += 2
        elif argv[index].startswith("--config="):
            index += 1
        else:
            return index
    return None


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None and Path(sys.argv[0]).name == "sendmail":
        return sendmail.sendmail_main(sys.argv[1:])  # a `sendmail` link to sendgate
    given = list(sys.argv[1:] if argv is None else argv)
    command = _command_at(given)
    if command is not None and given[command] == "sendmail":
        # Its options are sendmail's (-t, -oi, -fADDRESS...), not for argparse's subcommand.
        return sendmail.sendmail_main(given[command + 1 :])
    args = _parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except ConfigError as exc:
        print(f"sendgate: {exc}", file=sys.stderr)
        return 2
    except SendgateError as exc:
        print(f"sendgate: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `sendgate queue list | head`: the reader left; not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0

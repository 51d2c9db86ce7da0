"""What every command group shares: its row in the command table and the configuration it reads."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sendgate.config.load import load_config
from sendgate.config.schema import Config
from sendgate.errors import UserError
from sendgate.scaffold import CONFIG_NAME


@dataclass(frozen=True, slots=True)
class Group:
    """One command group, `sendgate NAME ...`: its help line, its arguments, what it runs.

    `run` gets the parsed arguments and returns the exit status; it raises `SendgateError`
    (exit 1) or `ConfigError` (exit 2) for `main` to print as one line.
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def config_path(args: argparse.Namespace) -> Path:
    """--config, else $SENDGATE_CONFIG, else ./sendgate.toml."""
    if args.config is not None:
        return Path(args.config)
    return Path(os.environ.get("SENDGATE_CONFIG", CONFIG_NAME))


def load(args: argparse.Namespace, *, as_root: bool = False) -> Config:
    """The configuration the command runs against; ConfigError if it is missing or invalid.

    With `service.user` set, only `serve` (`as_root`) may run as root: files another command
    made as root (a key, a database's journal) the server could not open afterwards.
    """
    cfg = load_config(config_path(args))
    user = cfg.service.user
    if not as_root and user and user != "root" and os.geteuid() == 0:
        raise UserError(
            f"this server's files belong to {user} (service.user): run the command as that "
            f"user, e.g. sudo -u {user} sendgate ..."
        )
    return cfg


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    """The `--json` option every admin action offers."""
    parser.add_argument("--json", action="store_true", help="print one JSON document for scripts")


def print_json(document: object) -> None:
    """Print `document` as the one JSON document of a `--json` action."""
    print(json.dumps(document, indent=2))

"""`sendgate serve`: run the server; with no configuration anywhere, make a local one first."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sendgate.cli.command import Group, config_path, load
from sendgate.config.load import load_config
from sendgate.config.schema import Config
from sendgate.log import EventLog
from sendgate.scaffold import CONFIG_NAME, default_hostname, init_instance

DEFAULT_DIR = Path("sendgate-data")
# Unprivileged stand-ins for 587/465 when not running as root.
DEFAULT_USER_PORTS = (2587, 2465)


def _arguments(serve: argparse.ArgumentParser) -> None:
    """No arguments: everything comes from the configuration."""


def _embedded_default() -> tuple[Config, Path]:
    """`sendgate serve` with no config anywhere: a local instance in ./sendgate-data/."""
    config = DEFAULT_DIR / CONFIG_NAME
    if not config.exists():
        submission, submissions = (587, 465) if os.geteuid() == 0 else DEFAULT_USER_PORTS
        init_instance(
            DEFAULT_DIR,
            hostname=default_hostname(),
            submission=f"0.0.0.0:{submission}",
            submissions=f"0.0.0.0:{submissions}",
        )
        print(
            f"created {config} (self-signed certificate; add users with "
            f"`sendgate --config {config} user add ADDRESS`)",
            file=sys.stderr,
        )
    return load_config(config), config


def run(args: argparse.Namespace) -> int:
    from sendgate.service import serve

    explicit = args.config is not None or "SENDGATE_CONFIG" in os.environ
    if explicit or Path(CONFIG_NAME).exists():
        cfg, path = load(args, as_root=True), config_path(args)
    else:
        cfg, path = _embedded_default()
    log = EventLog(sys.stderr, fmt=cfg.log.format, level=cfg.log.level)
    return serve(cfg, log, path)


GROUP = Group("serve", "run the submission server", _arguments, run)

"""`sendgate dkim keygen DOMAIN`: make a DKIM signing key and print the DNS record to publish."""

from __future__ import annotations

import argparse
import sys
import time

from sendgate.cli.command import Group, load
from sendgate.dkim.keys import default_selector, generate_key


def _arguments(parser: argparse.ArgumentParser) -> None:
    dkim = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    keygen = dkim.add_parser("keygen", help="make a signing key for DOMAIN; print its DNS record")
    keygen.add_argument("domain", metavar="DOMAIN")
    keygen.add_argument("--selector", help="DNS selector (default: sgYYYYMM)")
    keygen.add_argument(
        "--algorithm", choices=("rsa", "ed25519"), default="rsa", help="default rsa (2048 bits)"
    )


def run(args: argparse.Namespace) -> int:
    cfg = load(args)
    selector = args.selector or default_selector(time.time())
    path, record = generate_key(cfg.dkim.key_dir, args.domain, selector, args.algorithm)
    print(f"wrote {path}", file=sys.stderr)
    print("publish this DNS record, then restart sendgate to sign with the key:", file=sys.stderr)
    print(record)
    return 0


GROUP = Group("dkim", "DKIM signing keys", _arguments, run)

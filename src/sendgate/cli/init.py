"""`sendgate init DIR`: a new instance (configuration, certificate, data directory)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sendgate.cli.command import Group
from sendgate.errors import UserError
from sendgate.scaffold import default_hostname, init_instance


def _arguments(init: argparse.ArgumentParser) -> None:
    init.add_argument("directory", type=Path, metavar="DIR")
    init.add_argument("--hostname", help="server name (default: this machine's FQDN)")
    init.add_argument("--submission", metavar="HOST:PORT", help="STARTTLS listener")
    init.add_argument("--submissions", metavar="HOST:PORT", help="implicit-TLS listener")
    init.add_argument("--cert", type=Path, help="use this certificate instead of generating one")
    init.add_argument("--key", type=Path, help="private key for --cert")
    init.add_argument(
        "--smarthost", metavar="HOST:PORT", help="relay all outgoing mail through this server"
    )
    init.add_argument(
        "--smarthost-tls",
        choices=("none", "starttls", "implicit"),
        default="starttls",
        help="TLS to the smarthost (default starttls; none only to a loopback address)",
    )
    init.add_argument(
        "--cluster",
        metavar="POSTGRESQL_URL",
        help="keep users and the queue in this PostgreSQL, shared with other nodes",
    )
    init.add_argument(
        "--redis",
        metavar="REDIS_URL",
        help="keep the limits and bans in this Redis, shared with other nodes",
    )
    init.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="HTTP listener for metrics, health and client set-up (a loopback address)",
    )


def run(args: argparse.Namespace) -> int:
    if (args.cert is None) != (args.key is None):
        raise UserError("--cert and --key go together")
    path = init_instance(
        args.directory,
        hostname=args.hostname or default_hostname(),
        submission=args.submission or "0.0.0.0:587",
        submissions=args.submissions or "0.0.0.0:465",
        cert=args.cert,
        key=args.key,
        smarthost=args.smarthost,
        smarthost_tls=args.smarthost_tls,
        http=args.http,
        cluster=args.cluster,
        redis=args.redis,
    )
    print(f"wrote {path}")
    if args.cluster:
        print(f"next: sendgate --config {path} db migrate (once for the cluster)")
    print(f"next: sendgate --config {path} user add ADDRESS")
    return 0


GROUP = Group("init", "create a configuration, certificate and data directory", _arguments, run)

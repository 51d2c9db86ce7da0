"""`sendgate probe HOST[:PORT] [--implicit-tls] [--auth USER] [--json]`: check any server.

Needs no configuration: it looks at a submission server (sendgate or not) from outside.
Exit status: 0 when nothing is a warning or worse, 1 otherwise, 2 when the probe cannot run.
"""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import ssl
import sys
from pathlib import Path

from sendgate.cli.command import Group, add_json_flag
from sendgate.cli.report import report
from sendgate.probe import SUBMISSION, SUBMISSIONS, Credentials, ProbeError, Target, probe
from sendgate.probe.wire import WireError


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "server",
        metavar="HOST[:PORT]",
        help=f"the server (port {SUBMISSION}, or {SUBMISSIONS} with --implicit-tls); "
        "an IPv6 address with a port in brackets: [::1]:587",
    )
    parser.add_argument("--implicit-tls", action="store_true", help="TLS from the first byte")
    parser.add_argument(
        "--auth",
        metavar="USER",
        help="log in as USER (password from a prompt or stdin) for the checks that need a "
        "login; test messages go to the user's own address only",
    )
    parser.add_argument("--to", metavar="ADDRESS", help="the user's address, if USER is not one")
    parser.add_argument("--name", help="the name clients use for the server (default: HOST)")
    parser.add_argument("--cafile", type=Path, help="trust these CAs instead of the system's")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per read (10)")
    add_json_flag(parser)


def parse_server(text: str, implicit_tls: bool) -> tuple[str, int]:
    """HOST, HOST:PORT, [V6]:PORT or a bare IPv6 address; ValueError naming the problem."""
    host, port = text, None
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r}: expected [IPV6]:PORT")
        port = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host:
        raise ValueError(f"{text!r}: no host")
    if ":" in host or text.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{text!r}: not a host name or address") from None
    if port is None:
        return host, SUBMISSIONS if implicit_tls else SUBMISSION
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: port must be a number from 1 to 65535")
    return host, int(port)


def run(args: argparse.Namespace) -> int:
    try:
        host, port = parse_server(args.server, args.implicit_tls)
    except ValueError as exc:
        print(f"sendgate probe: {exc}", file=sys.stderr)
        return 2
    if not args.timeout > 0:
        print("sendgate probe: --timeout must be more than 0", file=sys.stderr)
        return 2
    if args.cafile is not None and not args.cafile.is_file():
        print(f"sendgate probe: {args.cafile}: no such file", file=sys.stderr)
        return 2
    target = Target(host, port, args.implicit_tls, args.name or "", args.cafile, args.timeout)
    credentials = None
    if args.auth:
        credentials = Credentials(args.auth, _read_password(args.auth))
        if "@" not in (args.to or args.auth):
            print(
                "sendgate probe: --auth USER is not an address; give --to ADDRESS", file=sys.stderr
            )
            return 2
    try:
        findings = probe(target, credentials, args.to or "")
    except (ProbeError, WireError) as exc:
        print(f"sendgate probe: {exc}", file=sys.stderr)
        return 2
    except ssl.SSLError as exc:  # a CA file that holds no certificate
        print(f"sendgate probe: {args.cafile}: {exc.reason or exc}", file=sys.stderr)
        return 2
    return report(f"probe of {target.shown}", findings, args.json)


def _read_password(user: str) -> str:
    if sys.stdin.isatty():
        return getpass.getpass(f"Password for {user}: ")
    return sys.stdin.readline().rstrip("\r\n")


GROUP = Group(
    "probe", "check any submission server from outside (no configuration needed)", _arguments, run
)

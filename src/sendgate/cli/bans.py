"""`sendgate bans ...`: list, add and remove network bans and account locks.

A target is what `policy.keys.parse_ban_target` accepts: an address (an IPv6 address means its
/64), a network of a width the defences ban (IPv4 /32 and /24, IPv6 /64, /56 and /48), or an
account (anything with an "@"). Every action takes `--json` for scripts. Networks on the
allow-list ([login_limits].allow) are never banned, not even by the operator.

Security: ban keys hold account names that clients typed at AUTH, and reasons may quote them;
every such field goes through `text.printable` (or JSON's ASCII escapes) before it reaches the
operator's terminal.
"""

from __future__ import annotations

import argparse
import ipaddress
import math

from sendgate.cli.command import Group, add_json_flag, load, print_json
from sendgate.errors import UserError
from sendgate.policy.keys import describe_key, parse_ban_target
from sendgate.policy.networks import (
    BLOCK_PREFIX,
    HOST_PREFIX,
    IPV6_MIDDLE_PREFIX,
    IPNetwork,
    parse_allow_list,
)
from sendgate.store.backends import open_stores
from sendgate.store.limits import Ban
from sendgate.text import iso_utc, printable

# The widths the defences look up for a client (policy.networks.ClientNetworks.bannable): a
# ban of another width would never be enforced, so it is refused rather than stored.
ENFORCED_PREFIXES = {
    4: {HOST_PREFIX[4], BLOCK_PREFIX[4]},
    6: {HOST_PREFIX[6], IPV6_MIDDLE_PREFIX, BLOCK_PREFIX[6]},
}


MAX_DURATION = 8640000.0  # 100 days, the longest [login_limits].ban_max


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not 0 < value <= MAX_DURATION:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of seconds between 0 and {MAX_DURATION:.0f} (100 days)"
        )
    return value


def _arguments(parser: argparse.ArgumentParser) -> None:
    bans = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions = [bans.add_parser("list", help="active bans: kind, target, since, until, why")]
    add = bans.add_parser("add", help="ban an address or network, or lock an account")
    add.add_argument(
        "--duration",
        type=_seconds,
        metavar="SECONDS",
        help="how long (default: [login_limits].ban_time)",
    )
    add.add_argument("--reason", metavar="TEXT", help="why, kept with the ban")
    remove = bans.add_parser("remove", help="end a ban or an account lock now")
    for action in (add, remove):
        action.add_argument(
            "target",
            metavar="TARGET",
            help="an address (IPv6: its /64), a network, or an account (NAME@DOMAIN)",
        )
        actions.append(action)
    for action in actions:
        add_json_flag(action)


def run(args: argparse.Namespace) -> int:
    cfg = load(args)
    stores = open_stores(cfg)  # opens the limit store on first use: after the checks below
    try:
        if args.action == "list":
            bans = stores.limits.bans()
            if args.json:
                print_json([ban_json(ban) for ban in bans])
            for ban in [] if args.json else bans:
                print(format_ban_line(ban))
            return 0
        key = _key(args.target, cfg.login_limits.allow)
        kind, target = describe_key(key)
        if args.action == "add":
            duration = cfg.login_limits.ban_time if args.duration is None else args.duration
            reason = f"operator: {args.reason}" if args.reason else "operator"
            ban = stores.limits.ban(key, duration, reason, memory=cfg.login_limits.ban_memory)
            if args.json:
                print_json(ban_json(ban))
            else:
                print(f"banned {kind} {printable(target)} until {iso_utc(ban.until)}")
        else:
            if not stores.limits.unban(key):
                raise UserError(f"{printable(target)}: not banned")
            if args.json:
                print_json({"kind": kind, "target": target, "removed": True})
            else:
                print(f"unbanned {kind} {printable(target)}")
    finally:
        stores.close()
    return 0


def _key(text: str, allow: tuple[str, ...]) -> str:
    """The ban key of an operator's target; UserError for one that cannot or must not be banned."""
    try:
        key = parse_ban_target(text)
    except ValueError as exc:
        raise UserError(printable(str(exc))) from None
    kind, target = describe_key(key)
    if kind != "network":
        return key
    network: IPNetwork = ipaddress.ip_network(target)
    if network.prefixlen not in ENFORCED_PREFIXES[network.version]:
        widths = "/32 and /24" if network.version == 4 else "/64, /56 and /48"
        raise UserError(
            f"{network}: only {widths} networks can be banned (what the defences check)"
        )
    for allowed in parse_allow_list(allow):
        if allowed.version == network.version and network.overlaps(allowed):
            raise UserError(
                f"{network}: overlaps {allowed} of [login_limits].allow, which is never banned"
            )
    return key


GROUP = Group("bans", "list, add and remove bans of networks and accounts", _arguments, run)


def format_ban_line(ban: Ban) -> str:
    """Return the `sendgate bans list` line of one ban.

    Format, fields separated by single spaces (the reason, last, may hold spaces)::

        <kind: network|account> <target> <since, ISO 8601 UTC> <until> <offences> <reason>
    """
    kind, target = describe_key(ban.key)
    return (
        f"{kind} {printable(target)} {iso_utc(ban.since)} {iso_utc(ban.until)} "
        f"{ban.offences} {printable(ban.reason)}"
    )


def ban_json(ban: Ban) -> dict[str, str | int]:
    """The `--json` object of one ban."""
    kind, target = describe_key(ban.key)
    return {
        "kind": kind,
        "target": target,
        "since": iso_utc(ban.since),
        "until": iso_utc(ban.until),
        "offences": ban.offences,
        "reason": ban.reason,
    }

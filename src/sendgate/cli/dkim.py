"""`sendgate dkim ACTION`: DKIM signing keys, and their rotation without a gap in signing.

- `keygen DOMAIN`: a domain's first key; prints the DNS record to publish.
- `rotate DOMAIN`: stages the key that is to replace the active one and prints its record;
  nothing signs with it yet.
- `switch DOMAIN`: once DNS publishes the staged key's record (checked through the configured
  resolver unless `--unchecked`), makes it the active key; the old key's record is listed as
  retired, to stay published for `--keep-days` (by default the queue lifetime plus two days,
  at least a week). A running server signs with the new key after SIGHUP.
- `status [DOMAIN]`: each domain's active, staged and retired keys.
- `prune`: forgets the retired records whose time is over (their DNS records may go).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

from sendgate.cli.command import Group, add_json_flag, load, print_json
from sendgate.config.schema import Config
from sendgate.dkim.keys import (
    ALGORITHMS,
    DkimKey,
    default_selector,
    dns_record,
    generate_key,
    load_keys,
    user_domain,
)
from sendgate.dkim.rotation import (
    RetiredRecord,
    prune_retired,
    retired_records,
    stage_key,
    staged_keys,
    switch_key,
)
from sendgate.dnsrecords import Kind, Record, Verdict, check, resolver_lookup
from sendgate.errors import UserError
from sendgate.text import printable, utc_minute

_DAY = 86400.0
_MARGIN_DAYS = 2.0  # after the queue lifetime: receivers verify a little after delivery
_MIN_KEEP_DAYS = 7.0
_RELOAD = "reload sendgate (SIGHUP: `systemctl reload sendgate` or `kill -HUP <pid of serve>`)"


def _arguments(parser: argparse.ArgumentParser) -> None:
    dkim = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    keygen = dkim.add_parser("keygen", help="make a signing key for DOMAIN; print its DNS record")
    keygen.add_argument("domain", metavar="DOMAIN")
    keygen.add_argument("--selector", help="DNS selector (default: sgYYYYMM)")
    keygen.add_argument("--algorithm", choices=ALGORITHMS, default="rsa", help="default rsa")
    rotate = dkim.add_parser("rotate", help="stage DOMAIN's next key; print its DNS record")
    rotate.add_argument("domain", metavar="DOMAIN")
    rotate.add_argument("--selector", help="DNS selector (default: sgYYYYMM, else sgYYYYMMDD)")
    rotate.add_argument(
        "--algorithm", choices=ALGORITHMS, help="the key to replace (needed with two keys)"
    )
    switch = dkim.add_parser("switch", help="sign with DOMAIN's staged key once DNS has it")
    switch.add_argument("domain", metavar="DOMAIN")
    switch.add_argument("--algorithm", choices=ALGORITHMS, help="needed with two staged keys")
    switch.add_argument(
        "--keep-days",
        type=_days,
        help="days the old record stays published (default: queue lifetime + 2, at least 7)",
    )
    switch.add_argument(
        "--unchecked", action="store_true", help="switch without asking DNS for the new record"
    )
    status = dkim.add_parser("status", help="each domain's active, staged and retired keys")
    status.add_argument("domain", metavar="DOMAIN", nargs="?")
    add_json_flag(status)
    dkim.add_parser("prune", help="forget retired records whose time is over")


def _days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of days: {text!r}") from None
    if not 0 <= days <= 3650:
        raise argparse.ArgumentTypeError(f"{text} days: give 0 to 3650")
    return days


def run(args: argparse.Namespace) -> int:
    cfg = load(args)
    now = time.time()
    if args.action == "keygen":
        return _keygen(cfg, args, now)
    if args.action == "rotate":
        return _rotate(cfg, args, now)
    if args.action == "switch":
        return _switch(cfg, args, now)
    if args.action == "status":
        return _status(cfg, args, now)
    return _prune(cfg, now)


def _keygen(cfg: Config, args: argparse.Namespace, now: float) -> int:
    selector = args.selector or default_selector(now)
    path, record = generate_key(cfg.dkim.key_dir, args.domain, selector, args.algorithm)
    print(f"wrote {path}", file=sys.stderr)
    print(f"publish this DNS record, then {_RELOAD} to sign with the key:", file=sys.stderr)
    print(record)
    return 0


def _rotate(cfg: Config, args: argparse.Namespace, now: float) -> int:
    key = stage_key(cfg.dkim.key_dir, args.domain, args.algorithm, args.selector, now)
    config = _config_option(args)
    print(f"staged the {key.algorithm} key {key.selector} for {key.domain}", file=sys.stderr)
    print(
        "publish this DNS record; `sendgate"
        f"{config} dns {key.domain} --check` shows when DNS has it; then run `sendgate{config} "
        f"dkim switch {key.domain}`:",
        file=sys.stderr,
    )
    print(dns_record(key))
    return 0


def _switch(cfg: Config, args: argparse.Namespace, now: float) -> int:
    domain = user_domain(args.domain)
    staged = [key for key in staged_keys(cfg.dkim.key_dir) if key.domain == domain]
    if not args.unchecked:
        for key in staged:
            if args.algorithm in (None, key.algorithm):
                _require_published(cfg, key)
    keep_days = args.keep_days
    if keep_days is None:
        keep_days = max(_MIN_KEEP_DAYS, cfg.delivery.queue_lifetime / _DAY + _MARGIN_DAYS)
    switched = switch_key(cfg.dkim.key_dir, domain, args.algorithm, keep_days * _DAY, now)
    new = switched.new
    print(f"{domain} now signs with the {new.algorithm} key {new.selector} after a reload")
    if switched.retired is not None:
        old = switched.retired
        print(
            f"keep the record {old.selector}._domainkey.{domain} published until "
            f"{utc_minute(old.until)}: mail signed with it is still being delivered and verified "
            "(the time counts from now: reload at once); then remove it and run "
            "`sendgate dkim prune`"
        )
    print(f"now {_RELOAD}")
    return 0


def _require_published(cfg: Config, key: DkimKey) -> None:
    """UserError unless DNS (the configured resolver) publishes `key`'s record as it is."""
    record = Record(
        Kind.DKIM, f"{key.selector}._domainkey.{key.domain}", "TXT", key.public_record, ""
    )
    [result] = check([record], resolver_lookup(cfg), cfg.hostname)
    if result.verdict is not Verdict.OK:
        detail = f" ({printable(result.detail, keep_tabs=False)})" if result.detail else ""
        raise UserError(
            f"DNS does not publish the staged key's record {record.name} yet: "
            f"{result.verdict.value}{detail}; publish it (`sendgate dns {key.domain}` prints "
            "it) and wait for DNS, or pass --unchecked"
        )


def _status(cfg: Config, args: argparse.Namespace, now: float) -> int:
    key_dir = cfg.dkim.key_dir
    wanted = user_domain(args.domain) if args.domain is not None else None
    rows: list[dict[str, str | int]] = []
    for state, keys in (("active", load_keys(key_dir)), ("staged", staged_keys(key_dir))):
        rows += (
            {"domain": k.domain, "state": state, "selector": k.selector, "algorithm": k.algorithm}
            for k in keys
        )
    for record in retired_records(key_dir):
        rows.append(_retired_row(record, now))
    rows = [row for row in rows if wanted in (None, row["domain"])]
    rows.sort(key=lambda row: (row["domain"], _ORDER[str(row["state"])], row["algorithm"]))
    if args.json:
        print_json({"keys": rows})
        return 0
    if not rows:
        print(f"no DKIM keys for {wanted}" if wanted else "no DKIM keys")
        return 0
    for row in rows:
        line = f"{row['domain']:30} {row['state']:8} {row['algorithm']:8} {row['selector']}"
        if row["state"] == "retired":
            line += f"  keep published until {utc_minute(float(row['until']))}"
        print(line)
    return 0


_ORDER = {"active": 0, "staged": 1, "retired": 2}


def _retired_row(record: RetiredRecord, now: float) -> dict[str, str | int]:
    return {
        "domain": record.domain,
        "state": "retired",
        "selector": record.selector,
        "algorithm": record.algorithm,
        "until": int(record.until),
        "expired": int(record.until <= now),
    }


def _prune(cfg: Config, now: float) -> int:
    pruned = prune_retired(cfg.dkim.key_dir, now)
    for record in pruned:
        print(
            f"forgot {record.selector}._domainkey.{record.domain} (kept until "
            f"{utc_minute(record.until)}): remove it from DNS if it is still there"
        )
    if not pruned:
        print("no retired record is past its time")
    return 0


def _config_option(args: argparse.Namespace) -> str:
    """` --config FILE` when the command was given one, so that the advice can be pasted."""
    return f" --config {shlex.quote(str(args.config))}" if args.config is not None else ""


GROUP = Group("dkim", "DKIM signing keys and their rotation", _arguments, run)

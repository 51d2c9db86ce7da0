"""`sendgate --config FILE dns DOMAIN [--check] [--mx] [--json]`: the records DOMAIN publishes.

Without --check it prints them in zone-file syntax (exit 0). With --check it asks DNS, through
the configured resolver (`delivery.resolver`, else the system's), and says per record: ok,
missing or wrong with what DNS holds (exit 0 only when every record is ok, 1 otherwise).
The DKIM records are the signing keys', a rotation's staged key (so that --check shows when
DNS has it) and the retired keys' while they must stay published.
"""

from __future__ import annotations

import argparse
import sys

from sendgate.cli.command import Group, add_json_flag, load, print_json
from sendgate.dkim.keys import domain_or_none, load_keys
from sendgate.dkim.rotation import retired_records, staged_keys
from sendgate.dnsrecords import Record, Verdict, check, records, resolver_lookup, zone_text
from sendgate.text import printable


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("domain", metavar="DOMAIN")
    parser.add_argument("--check", action="store_true", help="compare with what DNS publishes")
    parser.add_argument("--mx", action="store_true", help="also an MX record: this host receives")
    add_json_flag(parser)


def run(args: argparse.Namespace) -> int:
    cfg = load(args)
    domain = domain_or_none(args.domain)
    if domain is None:
        shown = printable(args.domain, keep_tabs=False)
        print(f"sendgate dns: {shown!r}: not a domain name", file=sys.stderr)
        return 2
    key_dir = cfg.dkim.key_dir
    wanted = records(
        cfg,
        domain,
        load_keys(key_dir),
        mx=args.mx,
        staged=staged_keys(key_dir),
        retired=retired_records(key_dir),
    )
    mx_hosts = [cfg.hostname] if args.mx else []
    if not args.check:
        if args.json:
            print_json({"records": [_record(r) for r in wanted]})
        else:
            sys.stdout.write(zone_text(domain, wanted, mx_hosts))
        return 0
    results = check(wanted, resolver_lookup(cfg), cfg.hostname)
    if args.json:
        print_json(
            {
                "records": [
                    {**_record(c.record), "verdict": c.verdict.value, "detail": c.detail}
                    for c in results
                ]
            }
        )
    else:
        for result in results:
            line = f"{result.verdict.value:8} {result.record.kind.value:16} {result.record.name}"
            if result.detail:
                line += f": {printable(result.detail, keep_tabs=False)}"
            print(line)
    return 0 if all(c.verdict is Verdict.OK for c in results) else 1


def _record(record: Record) -> dict[str, str]:
    return {
        "kind": record.kind.value,
        "name": record.name,
        "type": record.rtype,
        "value": record.value,
        "zone_line": record.zone_line(),
    }


GROUP = Group("dns", "the DNS records a domain publishes; --check asks DNS", _arguments, run)

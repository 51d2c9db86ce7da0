"""`sendgate --config FILE audit [--json]`: findings about this installation.

Exit status: 0 when nothing is a warning or worse, 1 otherwise, 2 when the audit cannot run
(no configuration, an unreadable store). The listeners are probed live when the server runs.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from sendgate.audit import configured_listeners, run_audit
from sendgate.cli.command import Group, add_json_flag, config_path, load
from sendgate.cli.report import report
from sendgate.delivery.runner import trust_store
from sendgate.dnsrecords import resolver_lookup
from sendgate.errors import ConfigError, SendgateError
from sendgate.store.backends import open_stores

DNS_TIMEOUT = 5.0  # per lookup: an audit on a machine without DNS must still end soon


def _arguments(parser: argparse.ArgumentParser) -> None:
    add_json_flag(parser)


def run(args: argparse.Namespace) -> int:
    cfg = load(args)
    path = config_path(args)
    try:
        stores = open_stores(cfg)
        try:
            users = stores.users.list_users()
        finally:
            stores.close()
    except ConfigError:
        raise
    except SendgateError as exc:
        print(f"sendgate audit: cannot read the stores: {exc}", file=sys.stderr)
        return 2
    findings = run_audit(
        cfg,
        path,
        users,
        datetime.now(UTC),
        configured_listeners(cfg),
        lookup=resolver_lookup(cfg, timeout=DNS_TIMEOUT),
        trust=trust_store(cfg),
    )
    return report(f"audit of {path}", findings, args.json)


GROUP = Group("audit", "findings about this installation (exit 1 on a warning)", _arguments, run)

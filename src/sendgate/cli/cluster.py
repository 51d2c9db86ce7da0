"""`sendgate cluster status`: where the shared stores are, and the nodes that share the queue.

One line per store, then one line per node that claimed from the shared queue: its name, when
it last claimed (a runner claims at least every `delivery.scan_interval` seconds, so a node not
seen for much longer is down or cut off), its version and the leases it holds now.

Security: node names come from other nodes' configuration files: printed through
`text.printable`. URLs are shown without credentials.
"""

from __future__ import annotations

import argparse

from sendgate.cli.command import Group, add_json_flag, load, print_json
from sendgate.store.backends import cluster_status
from sendgate.text import iso_utc, printable


def _arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    status = actions.add_parser("status", help="the shared stores and the nodes seen")
    add_json_flag(status)


def run(args: argparse.Namespace) -> int:
    status = cluster_status(load(args))
    queue = status.queue
    if args.json:
        print_json(
            {
                "users": status.users,
                "limits": status.limits,
                "queue": status.queue_at,
                "queue_status": None
                if queue is None
                else {
                    "server_version": queue.server_version,
                    "schema_version": queue.schema_version,
                    "queued": queue.queued,
                    "leased": queue.leased,
                    "held": queue.held,
                    "deferred": queue.deferred,
                    "nodes": [
                        {
                            "name": node.name,
                            "seen": iso_utc(node.seen),
                            "seconds_ago": round(max(0.0, queue.now - node.seen), 1),
                            "version": node.version,
                            "leases": node.leases,
                        }
                        for node in queue.nodes
                    ],
                },
            }
        )
        return 0
    print(f"users   {status.users}")
    print(f"limits  {status.limits}")
    if queue is None:
        print(f"queue   {status.queue_at}")
        return 0
    print(
        f"queue   {status.queue_at} (PostgreSQL {queue.server_version}, schema"
        f" {queue.schema_version}): {queue.queued} queued, {queue.leased} leased,"
        f" {queue.held} held, {queue.deferred} deferred"
    )
    for node in queue.nodes:
        ago = max(0.0, queue.now - node.seen)
        print(
            f"node    {printable(node.name)} seen {iso_utc(node.seen)} ({ago:.0f} s ago)"
            f" version {printable(node.version)} leases {node.leases}"
        )
    return 0


GROUP = Group("cluster", "the shared stores and the nodes seen (cluster mode)", _arguments, run)

#!/usr/bin/env python3
"""Curves: msgs/s against concurrency and message size, and memory per idle connection.

The same servers and load as compare.py (the reference Postfix + Dovecot and a throw-away
sendgate, both relaying to the reference's sink), one short run per point and server,
alternating, each after both queues are empty. Then each server holds `--idle` connections
that completed STARTTLS and AUTH and do nothing: for sendgate (a fresh instance) the growth of
its process tree's proportional set size (PSS, /proc/PID/smaps_rollup) per connection, for
Postfix (a process per connection) the mean PSS of its smtpd processes. Postfix serves at most
100 connections at once (default_process_limit): at 256 clients the rest wait in its listen
queue.

    .venv/bin/python bench/curves.py --duration 10

Only loopback is used. Numbers are noisy on shared 2-core machines: compare the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import smtplib
import ssl
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.compare import (
    PASSWORD,
    beside_reference,
    load,
    queue_dirs,
    reference_env,
    settle,
    start_sendgate,
)


def tree(pids: list[int]) -> list[int]:
    """`pids` and all their descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            parent = int(stat.rpartition(")")[2].split()[1])
            children.setdefault(parent, []).append(int(entry))
    found: list[int] = []
    todo = list(pids)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def pss_kib(pids: list[int], comm: str | None = None) -> tuple[int, int]:
    """The PSS of the trees of `pids` (only processes named `comm`, if given), and how many."""
    total = count = 0
    for pid in tree(pids):
        with contextlib.suppress(OSError):
            if comm is not None and Path(f"/proc/{pid}/comm").read_text().strip() != comm:
                continue
            count += 1
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
    return total, count


def hold_connections(
    host: str, port: int, ref: dict[str, str], password: str, count: int
) -> list[smtplib.SMTP]:
    """`count` connections that completed STARTTLS and AUTH, left idle."""
    context = ssl.create_default_context(cafile=ref["REF_CAFILE"])
    clients: list[smtplib.SMTP] = []
    for _ in range(count):
        client = smtplib.SMTP(host, port, timeout=30)
        client.starttls(context=context)
        client.login(ref["REF_USER"], password)
        clients.append(client)
    return clients


def idle_memory(
    host: str,
    port: int,
    ref: dict[str, str],
    password: str,
    pids: list[int],
    count: int,
    *,
    process_per_connection: str | None = None,
) -> float:
    """KiB of PSS per connection held open after STARTTLS + AUTH.

    Without `process_per_connection` (sendgate, a fresh instance, so that no freed memory of
    earlier runs is reused): the growth of its tree from 8 idle connections (the first ones
    fill caches) to 8 + `count`. With it (Postfix: "smtpd", which it keeps running from earlier
    runs, so its tree need not grow): the mean PSS of those processes while the connections
    are open.
    """
    per_process = process_per_connection is not None
    clients = [] if per_process else hold_connections(host, port, ref, password, 8)
    try:
        before, _ = pss_kib(pids)
        clients += hold_connections(host, port, ref, password, count)
        if per_process:
            total, processes = pss_kib(pids, process_per_connection)
            return total / max(processes, 1)
        after, _ = pss_kib(pids)
    finally:
        for client in clients:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                client.quit()
    return (after - before) / count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--per-session", type=int, default=100)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64, 256])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[1024, 10240, 102400, 1048576, 10000000]
    )
    parser.add_argument("--idle", type=int, default=64)
    parser.add_argument("--memory-only", action="store_true", help="skip the throughput curves")
    parser.add_argument("--port", type=int, default=12587)
    args = parser.parse_args()
    ref = reference_env()
    ref_pids = ref["REF_PIDS"].split(",")
    with beside_reference(ref, "sendgate-curves-") as tmp:
        proc, port = start_sendgate(Path(tmp) / "sg", ref, args.port)
        dirs = queue_dirs(ref, Path(tmp) / "sg")
        servers = {
            "postfix": (ref["REF_HOST"], int(ref["REF_PORT"]), ref["REF_PASSWORD"], ref_pids),
            "sendgate": ("127.0.0.1", port, PASSWORD, [str(proc.pid)]),
        }
        points = [(c, 10240) for c in args.concurrency] + [(16, s) for s in args.sizes]
        if args.memory_only:
            points = []
        results: dict[tuple[int, int], dict[str, dict[str, Any]]] = {}
        try:
            for concurrency, size in points:
                for name, (host, sport, password, pids) in servers.items():
                    settle(dirs)
                    ns = argparse.Namespace(
                        concurrency=concurrency, size=size, messages=10**7, duration=args.duration
                    )
                    r = load(host, sport, ref, password, args.per_session, ns, pids)
                    results.setdefault((concurrency, size), {})[name] = r
            settle(dirs)
            host, pf_port, pf_password, pf_pids = servers["postfix"]
            memory = {
                "postfix": idle_memory(
                    host,
                    pf_port,
                    ref,
                    pf_password,
                    [int(p) for p in pf_pids],
                    args.idle,
                    process_per_connection="smtpd",
                )
            }
            fresh, fresh_port = start_sendgate(Path(tmp) / "fresh", ref, args.port + 10)
            try:
                memory["sendgate"] = idle_memory(
                    "127.0.0.1", fresh_port, ref, PASSWORD, [fresh.pid], args.idle
                )
            finally:
                os.killpg(fresh.pid, signal.SIGTERM)
                fresh.wait(30)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
    print(f"{args.per_session} msgs/session, {args.duration:g} s per point and server")
    print(
        f"  {'clients':>8}{'size':>10}{'postfix':>10}{'sendgate':>10}{'ratio':>7}"
        f"{'p99 pf':>9}{'p99 sg':>9}"
    )
    for (concurrency, size), by in results.items():
        pf, sg = by["postfix"], by["sendgate"]
        a, b = pf["throughput_msgs_s"], sg["throughput_msgs_s"]
        print(
            f"  {concurrency:>8}{size:>10}{a:>10.1f}{b:>10.1f}{b / a if a else float('nan'):>7.2f}"
            f"{pf['latency_msg']['p99_ms']:>9.1f}{sg['latency_msg']['p99_ms']:>9.1f}"
        )
    print(f"memory per idle connection (PSS, {args.idle} connections after STARTTLS + AUTH):")
    for name, kib in memory.items():
        print(f"  {name:<9}{kib:>8.1f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

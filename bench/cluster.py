#!/usr/bin/env python3
"""Cluster benchmark: one node on the shared stores against one on the local ones, then three.

Starts a throwaway PostgreSQL and Redis (Debian's packages, loopback, as the tests do), a
sendgate node on the local backends and one on PostgreSQL (users and queue) and Redis (limits),
and alternates identical smtpload runs (../shared/bench/smtpload.py) against the two for each
scenario, delivery on (relayed to the reference server's sink, as bench/compare.py does). It
reports medians, cluster/local ratios and where the CPU goes: sendgate, PostgreSQL and Redis,
per 1,000 messages. Then it starts two more cluster nodes and loads all three at once (a third
of the clients each): total msgs/s and CPU per message. Needs the reference server's
certificate, user and sink (`sudo ../shared/anchors/postfix-ref start`).

    .venv/bin/python bench/cluster.py --rounds 3 --duration 20

Only loopback is used. Numbers are noisy on shared 2-core machines: compare the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# bench/ is run as scripts, not installed; the throwaway servers are the tests' own.
import psycopg  # noqa: E402
from bench.compare import (  # noqa: E402
    PASSWORD,
    load,
    queue_dirs,
    reference_env,
    settle,
    start_sendgate,
    tree_cpu,
)
from tests.peers.postgres_server import PostgresServer  # noqa: E402
from tests.peers.redis_server import RedisServer  # noqa: E402


def queue_empty(url: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM queue").fetchone()
    return row is not None and row[0] == 0


def settle_all(dirs: list[Path], url: str, timeout: float = 600.0) -> None:
    """Every local queue and the shared one empty: the next run pays for no earlier delivery."""
    settle(dirs, timeout)
    start = time.monotonic()
    while not queue_empty(url):
        if time.monotonic() - start > timeout:
            raise SystemExit("the shared queue did not empty")
        time.sleep(0.2)  # polling another process's queue: there is nothing to wait on


def measured(run: Any, services: dict[str, int], drained: Any) -> tuple[Any, dict[str, float]]:
    """Run the load (`run()`) and wait until its mail is delivered (`drained()`): the result,
    and the CPU seconds each service's process tree spent on both."""
    before = {name: tree_cpu(pid) for name, pid in services.items()}
    result = run()
    drained()
    return result, {name: tree_cpu(pid) - before[name] for name, pid in services.items()}


def per_1000(result: dict[str, Any], cpu: float) -> float:
    return 1000.0 * cpu / max(int(result["accepted"]), 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=20)
    parser.add_argument("--messages", type=int, default=100000)
    parser.add_argument("--concurrency", type=int, default=15)
    parser.add_argument("--size", type=int, default=10240)
    parser.add_argument("--per-session", type=int, nargs="+", default=[1, 100])
    parser.add_argument("--port", type=int, default=12587)
    parser.add_argument("--json", type=Path, help="also write all raw results here")
    args = parser.parse_args()

    ref = reference_env()
    raw: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sendgate-cluster-") as tmp_name:
        tmp = Path(tmp_name)
        with PostgresServer(tmp / "postgres") as pg, RedisServer(tmp / "redis") as redis:
            assert pg._proc is not None
            assert redis._proc is not None
            stores = {"postgresql": pg._proc.pid, "redis": redis._proc.pid}
            nodes: list[subprocess.Popen[str]] = []
            try:
                local, local_port = start_sendgate(tmp / "local", ref, args.port)
                nodes.append(local)
                first, first_port = start_sendgate(
                    tmp / "n1", ref, args.port + 10, cluster=(pg.url, redis.url, "n1")
                )
                nodes.append(first)
                dirs = queue_dirs(ref, tmp / "local")
                for m in args.per_session:
                    for _ in range(args.rounds):
                        for name, proc, port in (
                            ("local", local, local_port),
                            ("cluster", first, first_port),
                        ):
                            settle_all(dirs, pg.url)

                            def run(
                                port: int = port, proc: Any = proc, m: int = m
                            ) -> dict[str, Any]:
                                return load(
                                    "127.0.0.1", port, ref, PASSWORD, m, args, [str(proc.pid)]
                                )

                            services = {"sendgate": proc.pid}
                            if name == "cluster":
                                services.update(stores)
                            result, cpu = measured(run, services, lambda: settle_all(dirs, pg.url))
                            result["cpu_by_service"] = cpu
                            raw.setdefault(f"m{m}", {}).setdefault(name, []).append(result)
                report_pair(raw, args)
                # Three nodes at once, a third of the clients each.
                more = [
                    start_sendgate(
                        tmp / f"n{index}",
                        ref,
                        args.port + 10 * index,
                        cluster=(pg.url, redis.url, f"n{index}"),
                    )
                    for index in (2, 3)
                ]
                nodes += [proc for proc, _ in more]
                three = [(first, first_port), *more]
                for m in args.per_session:
                    for _ in range(args.rounds):
                        settle_all(dirs, pg.url)
                        raw.setdefault(f"three_m{m}", []).append(
                            three_nodes(
                                three, stores, ref, m, args, lambda: settle_all(dirs, pg.url)
                            )
                        )
                report_three(raw, args)
            finally:
                for proc in nodes:
                    os.killpg(proc.pid, signal.SIGTERM)
                for proc in nodes:
                    proc.wait(60)
    if args.json:
        args.json.write_text(json.dumps(raw, indent=1))
    return 0


def three_nodes(
    nodes: list[tuple[subprocess.Popen[str], int]],
    stores: dict[str, int],
    ref: dict[str, str],
    m: int,
    args: argparse.Namespace,
    drained: Any,
) -> dict[str, Any]:
    share = argparse.Namespace(**{**vars(args), "concurrency": max(1, args.concurrency // 3)})
    results: list[dict[str, Any]] = []

    def one(proc: subprocess.Popen[str], port: int) -> None:
        results.append(load("127.0.0.1", port, ref, PASSWORD, m, share, [str(proc.pid)]))

    def run() -> list[dict[str, Any]]:
        threads = [threading.Thread(target=one, args=node) for node in nodes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return results

    services = {f"node{index}": proc.pid for index, (proc, _) in enumerate(nodes, 1)}
    services.update(stores)
    done, cpu = measured(run, services, drained)
    total = sum(r["throughput_msgs_s"] for r in done)
    sent = sum(r["accepted"] for r in done)
    return {
        "msgs_s": total,
        "sent": sent,
        "failed": sum(r["failed"] for r in done),
        "p99_ms": max(r["latency_msg"]["p99_ms"] for r in done),
        "cpu_by_service": cpu,
    }


def report_pair(raw: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"{args.concurrency} clients, {args.size} B messages, delivery on, {args.rounds}"
        f" alternating rounds of {args.duration:g} s, medians; ratio = cluster / local"
    )
    for scenario, by_kind in raw.items():
        if scenario.startswith("three"):
            continue
        print(f"\n{scenario} messages/session")
        print(f"  {'metric':<28}{'local':>10}{'cluster':>10}{'ratio':>8}")
        rows: dict[str, Callable[[dict[str, Any]], float]] = {
            "msgs_s": lambda r: r["throughput_msgs_s"],
            "p50_ms": lambda r: r["latency_msg"]["p50_ms"],
            "p99_ms": lambda r: r["latency_msg"]["p99_ms"],
            "sendgate cpu s/1000 msgs": lambda r: per_1000(r, r["cpu_by_service"]["sendgate"]),
            "postgresql cpu s/1000 msgs": lambda r: per_1000(
                r, r["cpu_by_service"].get("postgresql", 0.0)
            ),
            "redis cpu s/1000 msgs": lambda r: per_1000(r, r["cpu_by_service"].get("redis", 0.0)),
            "failed": lambda r: r["failed"],
        }
        for label, pick in rows.items():
            local = statistics.median(pick(r) for r in by_kind["local"])
            cluster = statistics.median(pick(r) for r in by_kind["cluster"])
            ratio = cluster / local if local else float("nan")
            print(f"  {label:<28}{local:>10.2f}{cluster:>10.2f}{ratio:>8.2f}")


def report_three(raw: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\nthree cluster nodes at once, {args.concurrency // 3} clients each, medians")
    for scenario, runs in raw.items():
        if not scenario.startswith("three"):
            continue
        msgs = statistics.median(r["msgs_s"] for r in runs)
        sent = statistics.median(r["sent"] for r in runs)
        nodes_cpu = statistics.median(
            sum(v for k, v in r["cpu_by_service"].items() if k.startswith("node")) for r in runs
        )
        pg_cpu = statistics.median(r["cpu_by_service"]["postgresql"] for r in runs)
        redis_cpu = statistics.median(r["cpu_by_service"]["redis"] for r in runs)
        print(
            f"  {scenario.removeprefix('three_')}: {msgs:.0f} msgs/s in total; CPU per 1000 msgs:"
            f" nodes {1000 * nodes_cpu / sent:.2f} s, PostgreSQL {1000 * pg_cpu / sent:.2f} s,"
            f" Redis {1000 * redis_cpu / sent:.2f} s; failed"
            f" {sum(r['failed'] for r in runs)}"
        )


if __name__ == "__main__":
    sys.exit(main())

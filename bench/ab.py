#!/usr/bin/env python3
"""A/B benchmark: two sendgate checkouts side by side, for a change's cost against its base.

Each checkout (a directory with its own `.venv`, e.g. `git worktree add ../base <commit>` then
`python3 -m venv .venv && .venv/bin/pip install -e '.[fast]'`; without the `fast` extra there
is no uvloop, and that checkout runs 30 % slower) gets an instance made the way compare.py
makes one (the reference's certificate, a plaintext smarthost route to the
reference's sink), and identical smtpload runs alternate between them, the order swapped each
round. It prints per-run figures, medians and new/base ratios. Needs the reference server
running for its certificate and sink (see bench/README.md).

    .venv/bin/python bench/ab.py --base ../base --rounds 6 --duration 15
    .venv/bin/python bench/ab.py --base ../base --hold   # the submission path alone
    .venv/bin/python bench/ab.py --base . --new-http     # what the metrics cost

With --hold both instances keep mail queued (`delivery.hold = true`): no relaying, so only
the acceptors' work is measured. Only loopback is used.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench import compare  # noqa: E402  (bench/ is run as scripts, not installed)


def cpu(run: dict[str, Any]) -> float:
    return float(sum(run["server_cpu_per_1000_s"].values()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="the checkout to compare with")
    parser.add_argument("--new", type=Path, default=ROOT, help="default: this checkout")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=float, default=15)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--size", type=int, default=10240)
    parser.add_argument("--messages", type=int, default=100000)
    parser.add_argument("--per-session", type=int, nargs="+", default=[1, 100])
    parser.add_argument("--hold", action="store_true", help="no relaying: submission alone")
    parser.add_argument(
        "--new-http", action="store_true", help="the new instance with the HTTP listener (metrics)"
    )
    parser.add_argument("--port", type=int, default=12587)
    args = parser.parse_args()

    ref = compare.reference_env()
    trees = {"base": args.base.resolve(), "new": args.new.resolve()}
    runs: dict[int, dict[str, list[dict[str, Any]]]] = {}
    with compare.beside_reference(ref, "sendgate-ab-") as tmp:
        servers = {
            name: compare.start_sendgate(
                Path(tmp) / name,
                ref,
                args.port + 10 * index,
                python=str(tree / ".venv" / "bin" / "python"),
                hold=args.hold,
                http=args.new_http and name == "new",
            )
            for index, (name, tree) in enumerate(trees.items())
        }
        dirs = compare.queue_dirs(ref, *(Path(tmp) / name for name in trees))
        if len(dirs) != 4 + len(trees):
            raise SystemExit(f"cannot find both spools' queue directories: {dirs}")
        try:
            for m in args.per_session:
                for round_ in range(args.rounds):
                    order = ("base", "new") if round_ % 2 == 0 else ("new", "base")
                    for name in order:
                        if not args.hold:
                            compare.settle(dirs)
                        proc, port = servers[name]
                        before = compare.tree_cpu(proc.pid)
                        run = compare.load(
                            "127.0.0.1", port, ref, compare.PASSWORD, m, args, [str(proc.pid)]
                        )
                        # With --hold nothing is relayed and the queue never empties.
                        waited = compare.relayed(run, dirs, [proc.pid], before, wait=not args.hold)
                        runs.setdefault(m, {}).setdefault(name, []).append(run)
                        print(
                            f"m{m} round {round_} {name:<4} {run['throughput_msgs_s']:8.1f} "
                            f"msgs/s  {cpu(run):.3f} s/1000, {run['cpu_settled_s_per_1000']:.3f}"
                            f" until relayed  ({run['backlog']} left to relay, {waited:.1f} s)",
                            flush=True,
                        )
        finally:
            for proc, _ in servers.values():
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(30)
    mode = "submission alone (delivery.hold)" if args.hold else "relaying to the sink"
    print(f"\n{args.concurrency} clients, {args.size} B, {mode}, medians; ratio = new / base")
    for m, by in runs.items():
        msgs = {n: statistics.median(r["throughput_msgs_s"] for r in by[n]) for n in trees}
        cost = {n: statistics.median(cpu(r) for r in by[n]) for n in trees}
        full = {n: statistics.median(r["cpu_settled_s_per_1000"] for r in by[n]) for n in trees}
        print(
            f"  m{m}: msgs/s {msgs['base']:.0f} -> {msgs['new']:.0f} "
            f"({msgs['new'] / msgs['base']:.3f}); CPU s/1000 {cost['base']:.3f} -> "
            f"{cost['new']:.3f} ({cost['new'] / cost['base']:.3f}); until relayed "
            f"{full['base']:.3f} -> {full['new']:.3f} ({full['new'] / full['base']:.3f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

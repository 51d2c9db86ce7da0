#!/usr/bin/env python3
"""Side-by-side submission benchmark: sendgate against the reference Postfix, in one run.

Starts a throw-away sendgate instance that presents the reference server's certificate, then
alternates identical smtpload runs (../shared/bench/smtpload.py) against Postfix and sendgate
for each scenario, and prints medians and sendgate/Postfix ratios. Needs the reference server
running (`sudo ../shared/anchors/postfix-ref setup && sudo ../shared/anchors/postfix-ref start`).

    .venv/bin/python bench/compare.py --rounds 3 --duration 20

`cpu_s_per_1000` is the servers' CPU during the load (as smtpload measures it);
`cpu_settled_s_1000` runs on until the mail of the load is relayed (the queues are empty again),
so it holds the delivery work a server left for after the load, which `backlog` counts.

Only loopback is used. Numbers are noisy on shared 2-core machines: compare the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
LOAD = SHARED / "bench" / "smtpload.py"
ANCHOR = SHARED / "anchors" / "postfix-ref"
PASSWORD = "Bench-Password-2026!"


def reference_env() -> dict[str, str]:
    out = subprocess.run(["bash", str(ANCHOR), "env"], check=True, capture_output=True, text=True)
    env: dict[str, str] = {}
    for line in out.stdout.splitlines():
        line = line.removeprefix("export ")
        key, _, value = line.partition("=")
        if key.startswith("REF_"):
            env[key] = shlex.split(value)[0] if value else ""
    return env


def beside_reference(ref: dict[str, str], prefix: str) -> tempfile.TemporaryDirectory[str]:
    """A throw-away directory for sendgate's instances, in the reference's state directory.

    The spools side by side: Postfix keeps its queue there. On ext4 creating a file allocates
    an inode, and what that costs depends on where the new directory lands: on the machine of
    2026-12-06, whose disk held 1.9 million of the sink's message files, 20-30 us of CPU in a
    directory made right under the reference's state directory, and 480-660 us under /tmp,
    /var/lib, or four levels down in either (where a spool's fresh/ is). Postfix's queue
    directories are old; sendgate recycles its spool files, so it creates few (see
    store/local/fresh.py).
    """
    return tempfile.TemporaryDirectory(prefix=prefix, dir=ref["REF_STATE_DIR"])


SENDING_LIMITS = (
    "messages_per_hour",
    "messages_per_day",
    "recipients_per_day",
    "new_recipients_per_day",
)


def start_sendgate(
    workdir: Path, ref: dict[str, str], port: int, *, python: str = sys.executable, **options: Any
) -> tuple[subprocess.Popen[str], int]:
    """`make_sendgate` (with its `options`), then `serve`: the process and its port."""
    config = make_sendgate(workdir, ref, port, python=python, **options)
    return serve(config, python=python), port


def make_sendgate(
    workdir: Path,
    ref: dict[str, str],
    port: int,
    *,
    python: str = sys.executable,
    hold: bool = False,
    http: bool = False,
    cluster: tuple[str, str, str] | None = None,
) -> Path:
    """A throw-away instance of the sendgate installed for `python` (bench/ab.py runs two): its
    configuration file. `hold`: delivery held; `http`: with the HTTP listener on (its metrics
    counted), at port + 2; `cluster`: (PostgreSQL URL, Redis URL, node name) for a node on the
    shared stores (bench/cluster.py)."""
    sendgate = [python, "-m", "sendgate"]
    subprocess.run(
        [
            *sendgate,
            "init",
            str(workdir),
            "--hostname",
            "msa.example.test",
            "--submission",
            f"127.0.0.1:{port}",
            "--submissions",
            f"127.0.0.1:{port + 1}",
            "--cert",
            ref["REF_CAFILE"],
            "--key",
            str(Path(ref["REF_CAFILE"]).with_name("key.pem")),
            # Equal footing: Postfix relays what it accepts to the sink during the run too.
            "--smarthost",
            f"127.0.0.1:{ref['REF_SINK_PORT']}",
            "--smarthost-tls",
            "none",
            # The HTTP listener counts every event for /metrics in every process.
            *(["--http", f"127.0.0.1:{port + 2}"] if http else []),
            *(["--cluster", cluster[0], "--redis", cluster[1]] if cluster else []),
        ],
        check=True,
        capture_output=True,
    )
    config = workdir / "sendgate.toml"
    if cluster is not None:
        subprocess.run(
            [*sendgate, "--config", str(config), "db", "migrate"], check=True, capture_output=True
        )
    # The load generator opens all its connections from 127.0.0.1.
    text = config.read_text().replace(
        "max_connections_per_ip = 50", "max_connections_per_ip = 1000"
    )
    if hold:  # no relaying: only the submission path is measured
        text = text.replace("hold = false", "hold = true")
    if cluster is not None:
        text = text.replace('node_name = ""', f'node_name = "{cluster[2]}"')
    config.write_text(text)
    subprocess.run(
        [*sendgate, "--config", str(config), "user", "add", ref["REF_USER"]],
        input=PASSWORD + "\n",
        text=True,
        # A second node of a cluster finds the user there already.
        check=cluster is None,
        capture_output=True,
    )
    # One user sends the whole load: lift its sending limits far above it, so the limits are
    # checked on every message (as with the defaults) but never refuse or flag the load.
    # A checkout from before the sending limits has no `user set`: nothing to lift there.
    for limit in SENDING_LIMITS:
        subprocess.run(
            [
                *sendgate,
                "--config",
                str(config),
                "user",
                "set",
                ref["REF_USER"],
                limit,
                "100000000",
            ],
            check=False,
            capture_output=True,
        )
    return config


def serve(config: Path, *, python: str = sys.executable) -> subprocess.Popen[str]:
    """`sendgate serve` with `config`, once it is ready (its log drained in the background)."""
    proc = subprocess.Popen(
        [python, "-m", "sendgate", "--config", str(config), "serve"],
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if "event=ready" in line:
            break
    else:
        raise SystemExit("sendgate did not start")
    # Keep draining the log so the server never blocks on a full pipe.
    subprocess.Popen(["cat"], stdin=proc.stderr, stdout=subprocess.DEVNULL)
    return proc


def group_cpu(pgid: int) -> float:
    """CPU seconds (user + system) of every live process in the process group."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[2]) == pgid:  # field 5 (pgrp), after pid, comm and state
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def tree_cpu(root: int) -> float:
    """CPU seconds of `root` and its descendants, those reaped included (cutime, cstime)."""
    ticks = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    spent: dict[int, float] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        parents[int(name)] = int(fields[1])
        # utime, stime, cutime, cstime: fields 14-17 of stat(5), here from index 11.
        spent[int(name)] = sum(int(value) for value in fields[11:15]) / ticks
    total, stack = 0.0, [root]
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    while stack:
        pid = stack.pop()
        total += spent.get(pid, 0.0)
        stack.extend(children.get(pid, ()))
    return total


def queued(dirs: list[Path]) -> int:
    """How many messages wait in `dirs` (one file each, for both servers)."""
    return sum(len(files) for path in dirs for _, _, files in os.walk(path))


def relayed(
    run: dict[str, Any], dirs: list[Path], roots: list[int], before: float, *, wait: bool = True
) -> float:
    """After a load: record in `run` what it left to relay (`backlog`) and the CPU of `roots`'
    process trees from `before` until the queues are empty again (`cpu_settled_s_per_1000`;
    without `wait`, until now), so that delivery a server put off is counted; the seconds
    waited.

    A server whose delivery falls behind would otherwise leave that work out of the window.
    """
    run["backlog"] = queued(dirs)
    waited = settle(dirs) if wait else 0.0
    spent = sum(tree_cpu(root) for root in roots) - before
    run["cpu_settled_s_per_1000"] = 1000 * spent / max(int(run["accepted"]), 1)
    return waited


def queue_dirs(ref: dict[str, str], *workdirs: Path) -> list[Path]:
    """Where the servers keep queued mail: Postfix's queues and each sendgate's spool."""
    spool = Path(ref["REF_STATE_DIR"]) / "spool"
    dirs = [spool / name for name in ("maildrop", "incoming", "active", "deferred")]
    for workdir in workdirs:
        dirs += sorted(workdir.glob("**/spool/queue"))
    return dirs


def settle(dirs: list[Path], timeout: float = 600.0) -> float:
    """Wait until every queue is empty; the seconds waited.

    A run leaves mail to relay; without this the next run (the other server's) pays for those
    deliveries, and whichever server runs first in a round looked 20% faster.
    """
    start = time.monotonic()
    while any(any(files for _, _, files in os.walk(path)) for path in dirs):
        if time.monotonic() - start > timeout:
            raise SystemExit(f"the queues did not empty within {timeout:g} s: {dirs}")
        time.sleep(0.2)  # polling an external server's queue: there is nothing to wait on
    return time.monotonic() - start


def load(
    host: str,
    port: int,
    ref: dict[str, str],
    password: str,
    m: int,
    args: argparse.Namespace,
    pids: list[str],
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(LOAD),
        "--host",
        host,
        "--port",
        str(port),
        "--tls",
        "starttls",
        "--cafile",
        ref["REF_CAFILE"],
        "--user",
        ref["REF_USER"],
        "--password",
        password,
        "--rcpt",
        ref["REF_RCPT"],
        "-c",
        str(args.concurrency),
        "--size",
        str(args.size),
        "-m",
        str(m),
        "-n",
        str(args.messages),
        "--duration",
        str(args.duration),
        "--pipelining",
        "--json",
    ]
    for pid in pids:
        cmd += ["--server-pid", pid]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def summary(runs: list[dict[str, Any]]) -> dict[str, float]:
    def med(values: list[float]) -> float:
        return statistics.median(values)

    return {
        "msgs_s": med([r["throughput_msgs_s"] for r in runs]),
        "p50_ms": med([r["latency_msg"]["p50_ms"] for r in runs]),
        "p99_ms": med([r["latency_msg"]["p99_ms"] for r in runs]),
        "setup_p50_ms": med([r["latency_setup"]["p50_ms"] for r in runs]),
        "cpu_s_per_1000": med([sum(r["server_cpu_per_1000_s"].values()) for r in runs]),
        "cpu_settled_s_1000": med([r["cpu_settled_s_per_1000"] for r in runs]),
        "backlog": med([r["backlog"] for r in runs]),
        "server_cores": med([sum(r["server_cpu_util"].values()) for r in runs]),
        "client_cores": med([r["client_cpu_util"] for r in runs]),
        "failed": sum(r["failed"] for r in runs),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=20)
    parser.add_argument("--messages", type=int, default=100000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--size", type=int, default=10240)
    parser.add_argument("--per-session", type=int, nargs="+", default=[1, 100])
    parser.add_argument("--port", type=int, default=11587)
    parser.add_argument("--json", type=Path, help="also write all raw results here")
    args = parser.parse_args()

    ref = reference_env()
    ref_pids = ref["REF_PIDS"].split(",")
    with beside_reference(ref, "sendgate-bench-") as tmp:
        proc, port = start_sendgate(Path(tmp) / "sg", ref, args.port)
        dirs = queue_dirs(ref, Path(tmp) / "sg")
        if len(dirs) != 5:
            raise SystemExit(f"cannot find sendgate's queue directory: {dirs}")
        raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
        try:
            for m in args.per_session:
                for _ in range(args.rounds):
                    for name in ("postfix", "sendgate"):
                        settle(dirs)
                        roots = [int(pid) for pid in ref_pids] if name == "postfix" else [proc.pid]
                        before = sum(tree_cpu(root) for root in roots)
                        if name == "postfix":
                            r = load(
                                ref["REF_HOST"],
                                int(ref["REF_PORT"]),
                                ref,
                                ref["REF_PASSWORD"],
                                m,
                                args,
                                ref_pids,
                            )
                        else:
                            r = load("127.0.0.1", port, ref, PASSWORD, m, args, [str(proc.pid)])
                        r["settle_s"] = relayed(r, dirs, roots, before)
                        raw.setdefault(f"m{m}", {}).setdefault(name, []).append(r)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
    print(
        f"{args.concurrency} clients, {args.size} B messages, {args.rounds} alternating rounds "
        f"of {args.duration:g} s, medians; ratio = sendgate / postfix"
    )
    keys = [
        "msgs_s",
        "p50_ms",
        "p99_ms",
        "setup_p50_ms",
        "cpu_s_per_1000",
        "cpu_settled_s_1000",
        "backlog",
        "server_cores",
        "client_cores",
        "failed",
    ]
    for scenario, by_server in raw.items():
        pf, sg = summary(by_server["postfix"]), summary(by_server["sendgate"])
        print(f"\n{scenario} messages/session")
        print(f"  {'metric':<20}{'postfix':>10}{'sendgate':>10}{'ratio':>8}")
        for key in keys:
            ratio = sg[key] / pf[key] if pf[key] else float("nan")
            print(f"  {key:<20}{pf[key]:>10.2f}{sg[key]:>10.2f}{ratio:>8.2f}")
    if args.json:
        args.json.write_text(json.dumps(raw, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

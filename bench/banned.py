#!/usr/bin/env python3
"""What a refused connection from a banned address costs the server, against an accepted message.

Starts a throw-away sendgate the way compare.py does, measures the server's CPU per accepted
message with smtpload (one message per connection, and 100), then bans another address
(127.9.0.2, with `sendgate bans add`) and opens `--connections` connections from it to 587 and
465, each refused with 421 (587) or closed before any TLS (465). Server CPU is read from
/proc for every process of the server's process group, before and after. Needs the reference
server running, for its certificate and sink (see bench/README.md). Only loopback is used.

    .venv/bin/python bench/banned.py --connections 3000
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench import compare  # noqa: E402  (bench/ is run as scripts, not installed)

BANNED = "127.9.0.2"  # another /24 than the load's 127.0.0.1, where the load user is known


def refused_connections(port: int, count: int, *, implicit: bool) -> int:
    """Open `count` connections from BANNED; return how many were refused as a ban refuses.

    On 587 the server sends `421 4.7.0` and closes; on 465 it closes without a byte (no TLS).
    """
    refused = 0
    for _ in range(count):
        with socket.create_connection(
            ("127.0.0.1", port), timeout=10, source_address=(BANNED, 0)
        ) as sock:
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
        if (data == b"") if implicit else data.startswith(b"421 4.7.0"):
            refused += 1
    return refused


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=3000)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--port", type=int, default=14586)
    args = parser.parse_args()
    ref = compare.reference_env()
    load_args = argparse.Namespace(
        concurrency=16, size=10240, messages=100000, duration=args.duration
    )
    with compare.beside_reference(ref, "sendgate-banned-") as tmp:
        workdir = Path(tmp) / "sg"
        proc, port = compare.start_sendgate(workdir, ref, args.port, hold=True)
        try:
            pgid = os.getpgid(proc.pid)
            per_message = {}
            for m in (1, 100):
                before = compare.group_cpu(pgid)
                run = compare.load("127.0.0.1", port, ref, compare.PASSWORD, m, load_args, [])
                per_message[m] = (compare.group_cpu(pgid) - before) / run["accepted"]
            config = workdir / "sendgate.toml"
            subprocess.run(
                [sys.executable, "-m", "sendgate", "--config", str(config), "bans", "add", BANNED],
                check=True,
                capture_output=True,
            )
            results = {}
            for name, listen, implicit in (("587", port, False), ("465", port + 1, True)):
                before = compare.group_cpu(pgid)
                started = time.perf_counter()
                closed = refused_connections(listen, args.connections, implicit=implicit)
                elapsed = time.perf_counter() - started
                cpu = (compare.group_cpu(pgid) - before) / args.connections
                results[name] = (cpu, closed, args.connections / elapsed)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
    for m, cpu in per_message.items():
        print(f"accepted message, {m} per connection: {cpu * 1e6:8.0f} us server CPU")
    for name, (cpu, closed, rate) in results.items():
        print(
            f"banned connection to {name}: {cpu * 1e6:8.0f} us server CPU"
            f" ({cpu / per_message[1]:.1%} of an m1 message, {cpu / per_message[100]:.1%} of m100);"
            f" {closed}/{args.connections} refused as expected, {rate:.0f}/s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""Queue-drain benchmark: how fast sendgate and the reference Postfix empty a full queue.

Both servers relay the same number of queued 10 KB messages to the same receiver, the
reference's smtp-sink on loopback, with the same outbound concurrency, in alternating rounds;
the script prints medians and sendgate/Postfix ratios. Needs the reference server running
(`sudo ../shared/anchors/postfix-ref setup && sudo ../shared/anchors/postfix-ref start`) and root.

    .venv/bin/python bench/drain.py --rounds 3 --messages 5000

sendgate: a throw-away instance made as bench/compare.py makes one (`--smarthost <sink>
--smarthost-tls none`), filled the way Postfix is: with delivery.hold on, smtpload submits the
messages, then the instance stops (so the spool holds the acceptors' group-committed batch files,
as after a restart). The clock runs from the first delivery runner's `delivery_started` event
until `queue/` is empty and the log holds one `result=sent` line per message. CPU is the runner
processes' (the acceptors are idle), and of the whole process tree.

Postfix: its submission service puts every message on hold while smtpload fills the queue
(`smtpd_end_of_data_restrictions = check_client_access static:HOLD`, removed again before the
clock starts); the clock runs from `postsuper -H ALL` + `postqueue -f` until its queue is empty.
CPU is the master and all its descendants (reaped ones through the master's cutime/cstime) plus
the two release commands. The sink must receive exactly N new dumps in every run, on both sides.

Only loopback is used. Numbers are noisy on shared 2-core machines: compare the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench import compare  # noqa: E402  (bench/ is run as scripts, not installed)

SHARED = ROOT.parent / "shared"
LOAD = SHARED / "bench" / "smtpload.py"
ANCHOR = SHARED / "anchors" / "postfix-ref"
HOLD_RESTRICTION = "check_client_access static:HOLD"
POSTFIX_QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")
POLL = 0.01  # seconds between queue checks while draining
CLK_TCK = os.sysconf("SC_CLK_TCK")
_DELIVERY = re.compile(r"\bevent=delivery\s.*\bresult=(\S+)")
_PIDS = re.compile(r"\bevent=workers_started\b.* pids=([\d,]+)")
_RUNNER_PIDS = re.compile(r"\bevent=workers_started\b.* runner_pids=([\d,]+)")


@dataclass
class Run:
    """One drain of one server."""

    server: str
    messages: int
    seconds: float
    cpu_s: float  # sendgate: the delivery runner; Postfix: all its processes + release commands
    tree_cpu_s: float  # every process of the server
    sink_cpu_s: float
    delivered: int  # new dumps at the sink

    @property
    def msgs_s(self) -> float:
        return self.messages / self.seconds


# --- /proc ------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def process_cpu(pid: int, *, reaped: bool = True) -> float:
    """CPU seconds of `pid` (utime + stime), plus its reaped children's when `reaped`."""
    fields = _stat_fields(pid)  # fields[0] is field 3 (state) of proc(5)
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def commands_cpu() -> float:
    """CPU seconds of this script's reaped child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- files ------------------------------------------------------------------------------------


def count_files(top: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(top))


def any_file(top: Path) -> bool:
    """Whether `top` holds a file at any depth; stops at the first one."""
    try:
        with os.scandir(top) as entries:
            for entry in entries:
                if not entry.is_dir(follow_symlinks=False) or any_file(Path(entry.path)):
                    return True
    except FileNotFoundError:
        return False
    return False


# --- the reference ----------------------------------------------------------------------------


def postfix_tool(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def reference_env() -> dict[str, str]:
    out = subprocess.run(["bash", str(ANCHOR), "env"], check=True, capture_output=True, text=True)
    env: dict[str, str] = {}
    for line in out.stdout.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        if key.startswith("REF_"):
            env[key] = shlex.split(value)[0] if value else ""
    return env


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Postfix:
    """The reference instance: its config directory, queue, log, sink and CPU."""

    def __init__(self, ref: dict[str, str]) -> None:
        self.ref = ref
        state = Path(ref["REF_STATE_DIR"])
        self.config_dir = str(state / "postfix")
        self.queue = state / "spool"
        self.log = state / "log" / "postfix.log"
        self.sink_dir = Path(ref["REF_SINK_DIR"])
        self.master = int(ref["REF_PIDS"].split(",")[0])
        self.sink_pid = int((state / "run" / "sink.pid").read_text().strip())

    def postconf(self, *args: str) -> str:
        cmd = [postfix_tool("postconf"), "-c", self.config_dir, *args]
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()

    def command(self, tool: str, *args: str) -> None:
        subprocess.run(
            [postfix_tool(tool), "-c", self.config_dir, *args], check=True, capture_output=True
        )

    def concurrency(self) -> int:
        """How many deliveries Postfix runs at once to the relayhost (one destination)."""
        per_destination = int(self.postconf("-xh", "smtp_destination_concurrency_limit"))
        processes = int(self.postconf("-xh", "default_process_limit"))
        return min(per_destination, processes)

    def reload(self) -> None:
        """`postfix reload`, returning once the master has logged that it re-read main.cf."""
        offset = self.log.stat().st_size
        self.command("postfix", "reload")
        deadline = time.monotonic() + 30
        while b"reload -- version" not in self._log_since(offset):
            if time.monotonic() > deadline:
                raise SystemExit(f"postfix did not log its reload in {self.log}")
            time.sleep(POLL)

    def _log_since(self, offset: int) -> bytes:
        with self.log.open("rb") as f:
            f.seek(offset)
            return f.read()

    def queued(self) -> bool:
        return any(any_file(self.queue / name) for name in POSTFIX_QUEUES)

    def fill(self, args: argparse.Namespace) -> None:
        """Queue `args.messages` messages on hold through the submission port (smtpload)."""
        before = self.postconf("-n", "smtpd_end_of_data_restrictions")
        self.postconf("-e", f"smtpd_end_of_data_restrictions = {HOLD_RESTRICTION}")
        try:
            self.reload()
            cmd = [
                sys.executable,
                str(LOAD),
                "--host",
                self.ref["REF_HOST"],
                "--port",
                self.ref["REF_PORT"],
                "--tls",
                "starttls",
                "--cafile",
                self.ref["REF_CAFILE"],
                "--user",
                self.ref["REF_USER"],
                "--password",
                self.ref["REF_PASSWORD"],
                "--rcpt",
                self.ref["REF_RCPT"],
                "-c",
                "16",
                "-m",
                "100",
                "-n",
                str(args.messages),
                "--size",
                str(args.size),
                "--pipelining",
                "--json",
            ]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True)
            accepted = json.loads(out.stdout)["accepted"]
            if accepted != args.messages:
                raise SystemExit(f"postfix accepted {accepted} of {args.messages} messages")
            deadline = time.monotonic() + 120
            while (held := count_files(self.queue / "hold")) < args.messages:
                if time.monotonic() > deadline:
                    raise SystemExit(f"only {held} of {args.messages} messages reached hold")
                time.sleep(POLL)
        finally:
            if before:
                self.postconf("-e", before)
            else:
                self.postconf("-X", "smtpd_end_of_data_restrictions")
            self.reload()

    def drain(self, args: argparse.Namespace) -> Run:
        if self.queued():
            raise SystemExit(f"the reference queue {self.queue} is not empty; flush it first")
        self.fill(args)
        dumps = count_files(self.sink_dir)
        sink0 = process_cpu(self.sink_pid)
        cpu0 = compare.tree_cpu(self.master) + commands_cpu()
        start = time.perf_counter()
        self.command("postsuper", "-H", "ALL")
        self.command("postqueue", "-f")
        deadline = time.monotonic() + args.timeout
        while self.queued():
            if time.monotonic() > deadline:
                raise SystemExit(f"postfix did not drain its queue within {args.timeout:g} s")
            time.sleep(POLL)
        seconds = time.perf_counter() - start
        cpu = compare.tree_cpu(self.master) + commands_cpu() - cpu0
        return Run(
            server="postfix",
            messages=args.messages,
            seconds=seconds,
            cpu_s=cpu,
            tree_cpu_s=cpu,
            sink_cpu_s=process_cpu(self.sink_pid) - sink0,
            delivered=count_files(self.sink_dir) - dumps,
        )


# --- sendgate ---------------------------------------------------------------------------------


def set_config(path: Path, section: str, values: dict[str, str]) -> None:
    """Rewrite `key = value` lines that `sendgate init` wrote in [section]."""
    lines = path.read_text().splitlines(keepends=True)
    current, todo = "", dict(values)
    for index, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("["):
            current = stripped.strip("[]")
            continue
        key = stripped.partition(" =")[0]
        if current == section and key in todo:
            lines[index] = f"{key} = {todo.pop(key)}\n"
    if todo:
        raise SystemExit(f"{path}: no [{section}] line for {', '.join(todo)}")
    path.write_text("".join(lines))


class LogWatch:
    """Reads the server's log lines in a thread: runner pid, start time, delivery results."""

    def __init__(self, stream: IO[str], serve_pid: int, expected: int) -> None:
        self.serve_pid = serve_pid
        self.expected = expected
        self.lines: list[str] = []
        self.runners: list[int] = []
        self.start = 0.0
        self.runner_cpu0 = 0.0
        self.tree_cpu0 = 0.0
        self.sent = 0
        self.failed: list[str] = []
        self.started = threading.Event()
        self.done = threading.Event()  # every message sent, one failed, or the log ended
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))
            if found := _DELIVERY.search(line):
                if found[1] == "sent":
                    self.sent += 1
                    if self.sent == self.expected:
                        self.done.set()
                else:
                    self.failed.append(line)
                    self.done.set()
            elif found := _RUNNER_PIDS.search(line):
                self.runners = [int(pid) for pid in found[1].split(",")]
            elif found := _PIDS.search(line):
                # Older supervisors list the runner as the last of their children.
                self.runners = [int(found[1].split(",")[-1])]
            elif "event=delivery_started" in line and not self.start:
                # The first runner's: with several, the clock must not restart at the next.
                self.start = time.perf_counter()
                self.runner_cpu0 = self.runner_cpu()
                self.tree_cpu0 = compare.tree_cpu(self.serve_pid)
                self.started.set()
        self.started.set()
        self.done.set()

    def runner_cpu(self) -> float:
        return sum(process_cpu(pid) for pid in self.runners)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def tail(self) -> str:
        return "\n".join(self.lines[-20:])


class Sendgate:
    """A throw-away sendgate instance relaying everything to the sink in plaintext, made the way
    bench/compare.py makes one (the reference's certificate and user)."""

    def __init__(
        self, workdir: Path, ref: dict[str, str], port: int, concurrency: int, runners: int
    ) -> None:
        self.cli = [sys.executable, "-m", "sendgate"]
        self.ref, self.port = ref, port
        self.config = compare.make_sendgate(workdir, ref, port)
        set_config(self.config, "listen", {"workers": "1"})  # acceptors stay idle in a drain
        set_config(
            self.config,
            "delivery",
            {
                "concurrency": str(concurrency),
                "domain_concurrency": str(concurrency),
                "runners": str(runners),
            },
        )
        self.spool_dir = workdir / "data" / "spool"

    def fill(self, messages: int, size: int) -> None:
        """Queue `messages` messages on hold through the submission port, as Postfix's are
        (smtpload, 16 clients, 100 messages a connection), then stop: the spool holds what
        the acceptors' group commits wrote, as after a restart."""
        set_config(self.config, "delivery", {"hold": "true"})
        proc = compare.serve(self.config)
        try:
            load = argparse.Namespace(concurrency=16, size=size, messages=messages, duration=3600.0)
            result = compare.load("127.0.0.1", self.port, self.ref, compare.PASSWORD, 100, load, [])
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)
        if result["accepted"] != messages:
            raise SystemExit(f"sendgate queued {result['accepted']} of {messages}: {result}")
        set_config(self.config, "delivery", {"hold": "false"})

    def queued(self) -> bool:
        return any_file(self.spool_dir / "queue")

    def drain(self, args: argparse.Namespace, postfix: Postfix) -> Run:
        if self.queued():
            raise SystemExit(f"the sendgate queue {self.spool_dir / 'queue'} is not empty")
        self.fill(args.messages, args.size)
        dumps = count_files(postfix.sink_dir)
        sink0 = process_cpu(postfix.sink_pid)
        proc = subprocess.Popen(
            [*self.cli, "--config", str(self.config), "serve"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert proc.stderr is not None
        watch = LogWatch(proc.stderr, proc.pid, args.messages)
        try:
            if not watch.started.wait(60) or not watch.start:
                raise SystemExit(f"sendgate did not start delivering:\n{watch.tail()}")
            if not watch.done.wait(args.timeout) or watch.sent < args.messages:
                problem = watch.failed[0] if watch.failed else f"{watch.sent} sent"
                raise SystemExit(f"sendgate did not deliver everything: {problem}")
            deadline = time.monotonic() + 60
            while self.queued():
                if time.monotonic() > deadline:
                    raise SystemExit("sendgate logged every delivery but its queue stayed full")
                time.sleep(POLL)
            seconds = time.perf_counter() - watch.start
            runner_cpu = watch.runner_cpu() - watch.runner_cpu0
            all_cpu = compare.tree_cpu(proc.pid) - watch.tree_cpu0
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)
            watch.join(60)
        return Run(
            server="sendgate",
            messages=args.messages,
            seconds=seconds,
            cpu_s=runner_cpu,
            tree_cpu_s=all_cpu,
            sink_cpu_s=process_cpu(postfix.sink_pid) - sink0,
            delivered=count_files(postfix.sink_dir) - dumps,
        )


# --- report -----------------------------------------------------------------------------------


def summary(runs: list[Run]) -> dict[str, float]:
    def med(values: Iterator[float]) -> float:
        return statistics.median(values)

    per_1000 = 1000 / runs[0].messages
    return {
        "msgs_s": med(r.msgs_s for r in runs),
        "drain_s": med(r.seconds for r in runs),
        "cpu_s_per_1000": med(r.cpu_s * per_1000 for r in runs),
        "tree_cpu_s_per_1000": med(r.tree_cpu_s * per_1000 for r in runs),
        "cores": med(r.cpu_s / r.seconds for r in runs),
        "sink_cpu_s_per_1000": med(r.sink_cpu_s * per_1000 for r in runs),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", "-n", type=int, default=5000)
    parser.add_argument("--size", type=int, default=10240)
    parser.add_argument(
        "--concurrency", type=int, help="outbound connections (default: Postfix's limit)"
    )
    parser.add_argument(
        "--runners", type=int, default=0, help="delivery.runners (default 0: sendgate's choice)"
    )
    parser.add_argument("--timeout", type=float, default=600, help="seconds per drain")
    parser.add_argument("--port", type=int, default=11687, help="sendgate's submission port")
    parser.add_argument("--json", type=Path, help="also write all raw results here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the reference Postfix is driven with postsuper/postqueue")

    ref = reference_env()
    if len(ref.get("REF_PIDS", "").split(",")) != 2 or not listening(int(ref["REF_SINK_PORT"])):
        raise SystemExit(
            "the reference is not running: bash ../shared/anchors/postfix-ref setup && "
            "bash ../shared/anchors/postfix-ref start"
        )
    postfix = Postfix(ref)
    concurrency = args.concurrency or postfix.concurrency()
    runs: dict[str, list[Run]] = {"postfix": [], "sendgate": []}
    with tempfile.TemporaryDirectory(
        # Beside Postfix's queue, as bench/compare.py's beside_reference says why.
        prefix="sendgate-drain-",
        dir=ref["REF_STATE_DIR"],
    ) as tmp:
        sendgate = Sendgate(Path(tmp) / "sg", ref, args.port, concurrency, args.runners)
        for _ in range(args.rounds):
            for run in (postfix.drain(args), sendgate.drain(args, postfix)):
                if run.delivered != args.messages:
                    raise SystemExit(
                        f"{run.server}: the sink got {run.delivered} of {args.messages} messages"
                    )
                runs[run.server].append(run)
                print(
                    f"{run.server:<9} {run.seconds:7.2f} s  {run.msgs_s:7.1f} msgs/s  "
                    f"cpu {run.cpu_s:6.2f} s",
                    file=sys.stderr,
                )
    pf, sg = summary(runs["postfix"]), summary(runs["sendgate"])
    print(
        f"{args.messages} queued messages of {args.size} B to smtp-sink, {concurrency} "
        f"connections, sendgate's delivery.runners = {args.runners}, {args.rounds} alternating "
        "rounds, medians; ratio = sendgate / postfix"
    )
    print(f"  {'metric':<22}{'postfix':>10}{'sendgate':>10}{'ratio':>8}")
    for key in pf:
        ratio = sg[key] / pf[key] if pf[key] else float("nan")
        print(f"  {key:<22}{pf[key]:>10.2f}{sg[key]:>10.2f}{ratio:>8.2f}")
    if args.json:
        raw: dict[str, Any] = {
            "messages": args.messages,
            "size": args.size,
            "concurrency": concurrency,
            "runners": args.runners,
            "runs": {name: [asdict(r) for r in rs] for name, rs in runs.items()},
            "medians": {"postfix": pf, "sendgate": sg},
        }
        args.json.write_text(json.dumps(raw, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

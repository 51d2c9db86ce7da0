#!/usr/bin/env python3
"""Coverage-guided fuzzing of sendgate's parsers: each target of tests/fuzz for N seconds.

Runs `python -m tests.fuzz.run_target NAME -max_total_time=N -print_final_stats=1` for every
target (or those named with `--target`, in that order), `--jobs` at a time, each in a temporary
directory of its own (`--runs N` stops a target earlier, after N inputs), and prints per target
the inputs executed, executions per second (libFuzzer's average) and crashes. libFuzzer stops a
target at its first crash (an uncaught exception or a broken invariant, an input slower than
`--input-timeout` seconds, or memory over 2 GB); the crash inputs are copied to `--crashes` and
named in the output. `--corpus DIR` keeps each target's corpus in DIR/NAME for the next run.
Exit status 1 if any target crashed.

    .venv/bin/python bench/fuzz.py --seconds 60 [--target session ...] [--jobs 2]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.fuzz.run_target import SENDGATE_ONLY  # noqa: E402  (bench/ is run as scripts)
from tests.fuzz.targets import TARGETS  # noqa: E402

_STAT = re.compile(r"^stat::(\w+):\s+(\d+)$", re.MULTILINE)
# What libFuzzer names the inputs it keeps for a crash, a timeout, a leak or too much memory.
_ARTIFACT = re.compile(r"(crash|timeout|oom|leak|slow-unit)-[0-9a-f]+")


@dataclass(frozen=True)
class Run:
    target: str
    executions: int
    per_second: int
    crashes: list[Path]
    wall: float
    status: int


def fuzz(name: str, args: argparse.Namespace) -> Run:
    """Fuzz one target in a subprocess as `args` say; its corpus and artifacts in a temp dir."""
    corpus_root: Path | None = args.corpus
    with tempfile.TemporaryDirectory(prefix=f"sendgate-fuzz-{name}-") as tmp:
        work = Path(tmp)
        artifacts = work / "artifacts"
        artifacts.mkdir()
        corpus = corpus_root / name if corpus_root else work / "corpus"
        corpus.mkdir(parents=True, exist_ok=True)
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("COVERAGE_PROCESS_START", "COVERAGE_PROCESS_CONFIG")
        }
        # This checkout's source, whichever sendgate the interpreter has installed.
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
        env["TMPDIR"] = str(work)
        if args.sendgate_only:
            env[SENDGATE_ONLY] = "1"
        command = [
            sys.executable,
            "-m",
            "tests.fuzz.run_target",
            name,
            f"-max_total_time={args.seconds}",
            f"-runs={args.runs or -1}",
            f"-timeout={args.input_timeout}",
            "-rss_limit_mb=2048",
            "-print_final_stats=1",
            f"-artifact_prefix={artifacts}/",
            str(corpus),
        ]
        started = time.monotonic()
        result = subprocess.run(
            command,
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=args.seconds + 600,
            check=False,
        )
        wall = time.monotonic() - started
        stats = {key: int(value) for key, value in _STAT.findall(result.stderr)}
        kept = []
        for artifact in sorted(artifacts.iterdir()):
            if _ARTIFACT.fullmatch(artifact.name):
                args.crashes.mkdir(parents=True, exist_ok=True)
                kept.append(Path(shutil.copy(artifact, args.crashes / f"{name}-{artifact.name}")))
        if result.returncode != 0 and not kept:
            # Failed before or outside libFuzzer (an import error, a bad seed): show why.
            print(f"{name}: exit status {result.returncode}\n{result.stderr[-3000:]}")
        elif kept:
            print(f"{name}: crashed; input(s): {' '.join(map(str, kept))}")
            print(result.stderr[-3000:])
        executions = stats.get("number_of_executed_units", 0)
        # libFuzzer's average is whole seconds of fuzzing; it says 0 for a run under a second.
        per_second = stats.get("average_exec_per_sec", 0) or round(executions / wall)
        return Run(name, executions, per_second, kept, wall, result.returncode)


def table(runs: list[Run]) -> str:
    lines = [f"{'target':<10} {'executions':>12} {'exec/s':>8} {'crashes':>7} {'wall s':>7}"]
    for run in runs:
        crashes = len(run.crashes) if run.crashes or run.status == 0 else "exit"
        lines.append(
            f"{run.target:<10} {run.executions:>12,} {run.per_second:>8,} {crashes!s:>7}"
            f" {run.wall:>7.0f}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=60, help="fuzzing time per target")
    parser.add_argument("--runs", type=int, default=0, help="stop a target after N inputs")
    parser.add_argument("--target", action="append", choices=sorted(TARGETS), default=[])
    parser.add_argument("--jobs", type=int, default=1, help="targets fuzzed at the same time")
    parser.add_argument("--input-timeout", type=int, default=10, help="seconds for one input")
    parser.add_argument("--corpus", type=Path, help="keep each target's corpus in DIR/NAME")
    parser.add_argument(
        "--sendgate-only",
        action="store_true",
        help="coverage from sendgate's code only (header: not the stdlib's email parser)",
    )
    parser.add_argument(
        "--crashes",
        type=Path,
        default=Path(tempfile.gettempdir()) / "sendgate-fuzz-crashes",
        help="where crash inputs are copied",
    )
    args = parser.parse_args()
    names = args.target or list(TARGETS)
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda name: fuzz(name, args), names))
    print(table(runs))
    return 0 if all(run.status == 0 and not run.crashes for run in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())

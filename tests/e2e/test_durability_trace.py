"""A syscall trace of one submission: the queue file and its directory are synced before the 250.

strace follows every thread of the acceptor workers while one message is submitted. In the
trace, the file holding the message (a single-message file or a group commit's batch file) is
fsync'd before its name is linked or renamed into queue/, queue/ is fsync'd after that, and the
first write to a TCP socket after the commit (the 250 reply, encrypted) follows that directory
fsync. Lines are printed in the order the system calls finished, so "before" is real.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from tests.e2e.settings import UNLIMITED_SENDING

if TYPE_CHECKING:
    from tests.e2e.conftest import InstanceFactory, ServerFactory

pytestmark = pytest.mark.e2e

_LINE = re.compile(r"^(\d+) +\S+ (?:<\.\.\. (\w+) resumed>|(\w+)\((.*?)(?: <unfinished \.\.\.>)?$)")
_FD_PATH = re.compile(r"^\d+<([^>]*)>")


@dataclass(frozen=True)
class Call:
    index: int
    name: str
    args: str


def _finished_calls(trace: str) -> list[Call]:
    """The traced calls in the order they finished (an interrupted call counts at its resume)."""
    started: dict[str, tuple[str, str]] = {}
    calls: list[Call] = []
    for line in trace.splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        tid, resumed, name, args = match.groups()
        if line.endswith("<unfinished ...>"):
            started[tid] = (name, args)
            continue
        if resumed is not None:
            name, args = started.pop(tid, (resumed, ""))
        calls.append(Call(len(calls), name, args))
    return calls


def _fd_path(call: Call) -> str:
    match = _FD_PATH.match(call.args)
    return match.group(1) if match else ""


def test_the_message_and_its_name_are_synced_before_the_250(
    instance: InstanceFactory, server: ServerFactory, tmp_path: Path
) -> None:
    made = instance({**UNLIMITED_SENDING, "listen.workers": 1, "delivery.hold": True})
    running = server(made)
    out = tmp_path / "trace.txt"
    tracer = subprocess.Popen(
        ["strace", "-f", "-tt", "-yy", "-o", str(out)]
        + ["-e", "trace=fsync,fdatasync,rename,link,write,writev,sendto,sendmsg"]
        + [arg for pid in running.worker_pids for arg in ("-p", str(pid))],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert tracer.stderr is not None
        tasks = sum(len(list(Path(f"/proc/{pid}/task").iterdir())) for pid in running.worker_pids)
        attached = 0
        while attached < tasks:  # strace reports each thread it attached to
            line = tracer.stderr.readline()
            assert line, "strace ended before attaching"
            attached += "attached" in line
        with running.smtp() as client:
            queue_id = running.submit(client, made.message("traced"))
    finally:
        tracer.terminate()
        tracer.wait(30)
        if tracer.stderr is not None:
            tracer.stderr.close()
    calls = _finished_calls(out.read_text())
    commits = [
        c for c in calls if c.name in ("rename", "link") and f'/queue/{queue_id}")' in c.args
    ]
    assert len(commits) == 1, calls
    commit = commits[0]
    paths = re.match(r'"([^"]+)", "([^"]+)"\)', commit.args)
    assert paths is not None, commit
    source = str(Path(paths.group(1)).resolve())
    queue_dir = str(Path(paths.group(2)).parent.resolve())
    file_syncs = [c for c in calls[: commit.index] if c.name == "fsync" and _fd_path(c) == source]
    assert file_syncs, f"no fsync of {source} before {commit}"
    dir_syncs = [c for c in calls[commit.index :] if c.name == "fsync" and _fd_path(c) == queue_dir]
    assert dir_syncs, f"no fsync of {queue_dir} after {commit}"
    replies = [
        c
        for c in calls[commit.index :]
        if c.name in ("write", "writev", "sendto", "sendmsg") and _fd_path(c).startswith("TCP")
    ]
    assert replies, "no reply written after the commit:\n" + out.read_text()[-3000:]
    assert dir_syncs[0].index < replies[0].index

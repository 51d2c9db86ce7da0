"""A syscall trace of one submission: the message and the name holding it are synced before the 250.

strace follows every thread of the acceptor workers while one message is submitted. The group
commit writes the message into a fresh file (`store.local.fresh`): in the trace, that file is
created, then its directory fresh/ is fsync'd, then the file is fdatasync'd, and only then is
the first write to a TCP socket (the 250 reply, encrypted) made. The file is linked into
queue/ before the reply too, and queue/ is fsync'd after the link (in the background), before
the file's fresh name is given up (renamed to a spent name, which recovery never restores
from). Lines are printed in the order the system calls finished, so "before" is real.

A large message takes the same path with its body streamed: the fresh file is written while
the body arrives (`smtp.spill`, `store.local.streamfile`), then the envelope and header section
follow, one fdatasync, the link, and the 250.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from tests.e2e.settings import UNLIMITED_SENDING

from sendgate.store.local.fresh import SPENT

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


# Over `smtp.spill.SPILL_AT`: its body is written to the spool as it arrives.
_LARGE_BODY = b"a line of a large body, to be streamed to the spool\r\n" * 20_000


@pytest.mark.parametrize("size", ["small", "large"])
def test_the_message_and_its_name_are_synced_before_the_250(
    instance: InstanceFactory, server: ServerFactory, tmp_path: Path, size: str
) -> None:
    made = instance({**UNLIMITED_SENDING, "listen.workers": 1, "delivery.hold": True})
    running = server(made)
    out = tmp_path / "trace.txt"
    tracer = subprocess.Popen(
        ["strace", "-f", "-tt", "-yy", "-o", str(out)]
        + ["-e", "trace=openat,fsync,fdatasync,rename,link,unlink,write,writev,sendto,sendmsg"]
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
            message = made.message("traced")
            if size == "large":
                message += _LARGE_BODY
            queue_id = running.submit(client, message)
        fresh = made.data_dir / "spool" / "fresh"
        link = made.data_dir / "spool" / "queue" / queue_id
        deadline = time.monotonic() + 30

        # The background sync of queue/ ends with the file's fresh name given up (spent).
        def spent() -> bool:
            return any(p.name.endswith(SPENT) for p in fresh.iterdir())

        while not spent() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert spent(), sorted(p.name for p in fresh.iterdir())
        assert link.stat().st_nlink == 2  # its queue name and its spent name
    finally:
        tracer.terminate()
        tracer.wait(30)
        if tracer.stderr is not None:
            tracer.stderr.close()
    calls = _finished_calls(out.read_text())
    # An interrupted call's arguments come from its first line, which has no closing ")".
    links = [c for c in calls if c.name == "link" and f'/queue/{queue_id}"' in c.args]
    assert len(links) == 1, calls
    commit = links[0]
    paths = re.match(r'"([^"]+)", "([^"]+)"', commit.args)
    assert paths is not None, commit
    source = str(Path(paths.group(1)).resolve())
    fresh_dir = str(Path(source).parent)
    queue_dir = str(Path(paths.group(2)).parent.resolve())
    assert Path(fresh_dir).name == "fresh", source
    created = [
        c for c in calls if c.name == "openat" and f'"{source}"' in c.args and "O_CREAT" in c.args
    ]
    assert len(created) == 1, created
    data_syncs = [c for c in calls if c.name == "fdatasync" and _fd_path(c) == source]
    assert len(data_syncs) == 1, f"no fdatasync of {source}"
    data_sync = data_syncs[0]
    written = [
        c
        for c in calls[: data_sync.index]
        if c.name in ("write", "writev") and _fd_path(c) == source
    ]
    # A small message is one writev; a large one many writes, as its body arrived.
    assert len(written) >= (3 if size == "large" else 1), written
    name_syncs = [
        c
        for c in calls[created[0].index : data_sync.index]
        if c.name == "fsync" and _fd_path(c) == fresh_dir
    ]
    assert name_syncs, f"{source} was not made durable by a sync of {fresh_dir} before its data"
    replies = [
        c
        for c in calls[data_sync.index :]
        if c.name in ("write", "writev", "sendto", "sendmsg") and _fd_path(c).startswith("TCP")
    ]
    assert replies, "no reply written after the commit:\n" + out.read_text()[-3000:]
    assert data_sync.index < commit.index < replies[0].index
    given_up = f'"{source}", "{source}{SPENT}"'
    removed = [c for c in calls if c.name == "rename" and c.args.startswith(given_up)]
    assert len(removed) == 1, f"the fresh name {source} was not given up"
    queue_syncs = [
        c
        for c in calls[commit.index : removed[0].index]
        if c.name == "fsync" and _fd_path(c) == queue_dir
    ]
    assert queue_syncs, f"{fresh_dir} lost {source} before {queue_dir} was synced"

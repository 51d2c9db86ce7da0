"""/healthz: the listeners accept, the spool takes writes, the delivery runners are alive.

Each acceptor and each delivery runner touch a heartbeat file from their event loops every
`BEAT` seconds; a file older than `STALE` seconds means a process that died or is stuck (its
loop no longer turns), which a process list alone would not show.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

BEAT = 5.0
STALE = 20.0
_MIN_FREE = 1 << 20  # a spool with less free space than this takes no message


class Heartbeat:
    """One process's heartbeat file: `beat` touches it, `run` does so for ever."""

    def __init__(self, directory: Path, name: str) -> None:
        self.path = directory / name

    def beat(self) -> None:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            os.close(fd)
            os.utime(self.path)
        except OSError:
            pass  # a full or read-only disk shows in /healthz: the file grows stale

    async def run(self) -> None:
        while True:
            self.beat()
            await asyncio.sleep(BEAT)


@dataclass(frozen=True, slots=True)
class HealthSources:
    """What /healthz looks at: the listening sockets, the spool, the expected heartbeats."""

    listeners: Sequence[socket.socket]
    spool: Path
    heartbeats: Path
    acceptors: Sequence[str]  # heartbeat names of the acceptor processes
    runners: Sequence[str]  # the delivery runners' (they beat while held too); none: unchecked


def check(sources: HealthSources, clock: Callable[[], float] = time.time) -> dict[str, str]:
    """Each check's verdict: "ok", or what is wrong (one line)."""
    now = clock()
    verdicts = {"listeners": _listeners(sources, now), "spool": _spool(sources.spool)}
    verdicts["delivery"] = _all_fresh(sources.heartbeats, sources.runners, now)
    return verdicts


def _listeners(sources: HealthSources, now: float) -> str:
    for sock in sources.listeners:
        try:
            listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        except OSError as exc:
            return f"a listening socket is gone: {exc.strerror}"
        if not listening:
            return "a socket no longer listens"
    return _all_fresh(sources.heartbeats, sources.acceptors, now)


def _all_fresh(directory: Path, names: Sequence[str], now: float) -> str:
    """The first of `names` whose heartbeat is not fresh, as `_fresh` words it; else "ok"."""
    for name in names:
        verdict = _fresh(directory, name, now)
        if verdict != "ok":
            return verdict
    return "ok"


def _fresh(directory: Path, name: str, now: float) -> str:
    try:
        age = now - (directory / name).stat().st_mtime
    except FileNotFoundError:
        return f"{name}: no heartbeat yet"
    except OSError as exc:
        return f"{name}: heartbeat unreadable: {exc.strerror}"
    if age > STALE:
        return f"{name}: no heartbeat for {age:.0f} s"
    return "ok"


def _spool(path: Path) -> str:
    if not os.access(path, os.W_OK | os.X_OK):
        return f"{path} is not writable"
    try:
        stats = os.statvfs(path)
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    if stats.f_bavail * stats.f_frsize < _MIN_FREE:
        return f"{path}: the file system is full"
    if stats.f_files and stats.f_favail == 0:
        return f"{path}: no free inodes"
    return "ok"

"""Telling systemd how `serve` is doing (sd_notify): ready, reloading, stopping.

Written here rather than taken from a library: the protocol is one datagram of text to the
Unix socket named in $NOTIFY_SOCKET, and the libraries for it are bindings to libsystemd or
unmaintained. Without $NOTIFY_SOCKET (not started by systemd with Type=notify) nothing is sent.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable

Notify = Callable[[str], None]


def systemd_notifier() -> Notify:
    """A function sending one state line ("READY=1", ...) to systemd, or doing nothing."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return lambda _state: None
    target = "\0" + address[1:] if address[0] == "@" else address  # "@": an abstract socket

    def send(state: str) -> None:
        # Never fatal: systemd gone or restarted must not stop the mail. A socket per state:
        # there are a handful in a server's life.
        with (
            contextlib.suppress(OSError),
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock,
        ):
            sock.sendto(state.encode(), target)

    return send


def reloading(notify: Notify) -> None:
    """RELOADING=1 with the time systemd needs to match the READY=1 that follows."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")

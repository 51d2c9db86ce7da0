"""sd_notify (`server.notify`): datagrams to the socket systemd names, or nothing without one."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from sendgate.server.notify import reloading, systemd_notifier


def test_without_systemd_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    systemd_notifier()("READY=1")  # nowhere to go, and no error
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/path")  # not a socket systemd would name
    systemd_notifier()("READY=1")


def test_a_path_socket_gets_each_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(str(tmp_path / "notify"))
        systemd.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
        notify = systemd_notifier()
        notify("READY=1")
        reloading(notify)
        assert systemd.recv(100) == b"READY=1"
        assert re.fullmatch(rb"RELOADING=1\nMONOTONIC_USEC=\d+", systemd.recv(100))
    notify("STOPPING=1")  # systemd gone: no error


def test_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"sendgate-test-{id(monkeypatch)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind("\0" + name)
        systemd.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        systemd_notifier()("READY=1")
        assert systemd.recv(100) == b"READY=1"

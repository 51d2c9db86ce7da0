"""Giving up root (`server.privileges.become`), in forked children so the test process keeps its
own user."""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable

from sendgate.errors import SendgateError
from sendgate.server.privileges import become

NOBODY = pwd.getpwnam("nobody")


def in_child(act: Callable[[], str]) -> str:
    """What `act` returns (or the SendgateError it raises) in a forked child."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            try:
                result = act()
            except SendgateError as exc:
                result = f"error: {exc}"
            os.write(write, result.encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as stream:
        output = stream.read().decode()
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    return output


def switched_for_good() -> str:
    ids = become("nobody")
    try:
        os.setuid(0)
    except PermissionError:
        back = "no way back"
    else:
        back = "root again"
    return f"{ids} {os.getuid()} {os.geteuid()} {os.getgid()} {sorted(os.getgroups())} {back}"


def test_root_becomes_the_user_for_good() -> None:
    outcome = in_child(switched_for_good)
    if os.geteuid() == 0:
        uid, gid = NOBODY.pw_uid, NOBODY.pw_gid
        groups = sorted(os.getgrouplist("nobody", gid))  # its own groups, no more
        assert outcome == f"({uid}, {gid}) {uid} {uid} {gid} {groups} no way back"
    else:
        assert outcome.startswith("error: service.user = 'nobody': started as ")


def test_the_user_it_already_is_changes_nothing() -> None:
    me = pwd.getpwuid(os.geteuid()).pw_name
    assert in_child(lambda: repr(become(me))) == "None"


def test_only_root_can_switch() -> None:
    def twice() -> str:
        if os.geteuid() == 0:
            become("nobody")
        become("daemon")
        return "switched"

    assert in_child(twice).startswith("error: service.user = 'daemon': started as ")
    assert in_child(twice).endswith("and only root can switch users")


def test_an_unknown_user_is_named() -> None:
    assert in_child(lambda: repr(become("no-such-user-here"))) == (
        "error: service.user = 'no-such-user-here': no such user"
    )

"""Giving up root after binding the privileged ports (`service.user`).

A `serve` started as root binds 587 and 465, then becomes the configured user for good (the
user's groups, its group, the user, in that order, so no way back to root is left) before it
reads a key, opens a store or forks a child: nothing that handles a client ever runs as root.
"""

from __future__ import annotations

import os
import pwd

from sendgate.errors import SendgateError


def become(user: str) -> tuple[int, int] | None:
    """Run as `user` from now on; (uid, gid), or None when already running as `user`.

    SendgateError (one line) when the user does not exist, when switching needs root and this
    process is not root, or when root could be taken back after the switch.
    """
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise SendgateError(f"service.user = {user!r}: no such user") from None
    if os.geteuid() == entry.pw_uid and os.getuid() == entry.pw_uid:
        return None
    if os.geteuid() != 0:
        running = pwd.getpwuid(os.geteuid()).pw_name
        raise SendgateError(
            f"service.user = {user!r}: started as {running!r}, and only root can switch users"
        )
    os.initgroups(user, entry.pw_gid)  # its own groups (ssl-cert for a key...), no others
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    try:
        os.setuid(0)
    except PermissionError:
        return entry.pw_uid, entry.pw_gid
    raise SendgateError(f"service.user = {user!r}: root could be taken back; refusing to run")

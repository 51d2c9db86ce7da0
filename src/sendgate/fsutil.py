"""Durable file writes: whole-file writes that are fsync'd, atomic replacement, directory syncs.

A file's bytes are durable after `fsync` on the file; its name is durable only after `fsync` on
the directory that holds it. The helpers here make both steps explicit so callers can order them
(the spool makes its commit point the rename of the envelope, then syncs the directory once).
POSIX only; stdlib only.
"""

import errno
import os
import secrets
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path

_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024  # writev limit


def fsync_dir(path: Path) -> None:
    """Make the entries of directory `path` (creations, renames, unlinks) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_durably(
    path: Path, data: bytes | Sequence[bytes], *, exclusive: bool = True, mode: int = 0o600
) -> None:
    """Write `data` to `path`, fsync it and close it; on any error unlink `path` and re-raise.

    `data` may be a sequence of parts, written with one writev (no joined copy is made).
    With `exclusive` (the default) the file must not exist yet (O_EXCL), so an existing file is
    never touched, not even by the clean-up. Without it an existing file is truncated and
    rewritten. Symbolic links are never followed. The file ends up with exactly `mode`, whatever
    the umask. The directory entry is not synced: call `fsync_dir` when the name must survive.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    flags |= os.O_EXCL if exclusive else os.O_TRUNC
    fd = os.open(path, flags, mode)
    try:
        try:
            # The umask may have removed bits, and an existing file keeps its old mode.
            os.fchmod(fd, mode)
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        # A partly written file must never be mistaken for a whole one.
        with suppress(OSError):
            path.unlink()
        raise


def atomic_replace(path: Path, data: bytes, tmp_dir: Path, mode: int = 0o600) -> None:
    """Replace `path` with a file holding `data`, so readers see the old or the new bytes only.

    The data goes to a uniquely named file in `tmp_dir` (which must be on the same file system as
    `path`), is fsync'd, renamed over `path`, and then `path`'s directory is fsync'd.
    """
    tmp_path = tmp_dir / f"{path.name}.{secrets.token_hex(8)}.tmp"
    write_file_durably(tmp_path, data, exclusive=True, mode=mode)
    try:
        os.replace(tmp_path, path)
    except BaseException:
        with suppress(OSError):
            tmp_path.unlink()
        raise
    fsync_dir(path.parent)


def is_disk_full(exc: OSError) -> bool:
    """Tell whether `exc` means the file system is out of space or quota (ENOSPC, EDQUOT)."""
    return exc.errno in _DISK_FULL_ERRNOS


def write_all(fd: int, data: bytes | Sequence[bytes]) -> None:
    """Write every byte of `data` (one buffer or several) to `fd`, looping on short writes."""
    views = [memoryview(part) for part in ((data,) if isinstance(data, bytes) else data) if part]
    while views:
        written = os.writev(fd, views[:_IOV_MAX])
        if written <= 0:
            # Regular files report errors instead; never spin on a descriptor that stalls.
            raise OSError(errno.EIO, "write made no progress")
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]

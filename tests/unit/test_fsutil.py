"""Tests for sendgate.fsutil: durable writes, atomic replacement, disk-full detection."""

import errno
import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import sendgate
from sendgate.fsutil import atomic_replace, fsync_dir, is_disk_full, write_file_durably

# Writes a file larger than RLIMIT_FSIZE allows: the kernel accepts a short write, then EFBIG.
_OVERSIZED_WRITE = textwrap.dedent(
    """
    import resource, signal, sys
    from pathlib import Path
    from sendgate.fsutil import write_file_durably

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (65536, resource.RLIM_INFINITY))
    try:
        write_file_durably(Path(sys.argv[1]), b"x" * 200_000)
    except OSError as exc:
        print(exc.errno)
    """
)


def file_mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def strict_umask() -> Iterator[None]:
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def test_write_file_durably_writes_all_bytes_with_mode_600(tmp_path: Path) -> None:
    path = tmp_path / "f"
    data = bytes(range(256)) * 12_000
    write_file_durably(path, data)
    assert path.read_bytes() == data
    assert file_mode(path) == 0o600


@pytest.mark.usefixtures("strict_umask")
def test_write_file_durably_sets_the_mode_despite_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "cert.pem"
    write_file_durably(path, b"x", mode=0o644)
    assert file_mode(path) == 0o644


def test_exclusive_write_refuses_an_existing_file_and_leaves_it_alone(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"theirs")
    with pytest.raises(FileExistsError):
        write_file_durably(path, b"mine")
    assert path.read_bytes() == b"theirs"


def test_non_exclusive_write_truncates_and_resets_the_mode(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"a much longer old content")
    path.chmod(0o666)
    write_file_durably(path, b"new", exclusive=False)
    assert path.read_bytes() == b"new"
    assert file_mode(path) == 0o600


def test_write_does_not_follow_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"keep")
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(OSError, match="Too many levels of symbolic links") as excinfo:
        write_file_durably(link, b"evil", exclusive=False)
    assert excinfo.value.errno == errno.ELOOP
    assert target.read_bytes() == b"keep"
    assert link.is_symlink()


def test_write_failing_midway_removes_the_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "big"
    src = str(Path(sendgate.__file__).parents[1])
    result = subprocess.run(
        [sys.executable, "-c", _OVERSIZED_WRITE, str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": src},
    )
    assert result.stdout.strip() == str(errno.EFBIG)
    assert not path.exists()


def test_atomic_replace_swaps_content_and_leaves_no_temp_file(tmp_path: Path) -> None:
    tmp_dir = tmp_path / "tmp"
    tmp_dir.mkdir()
    path = tmp_path / "config.toml"
    path.write_bytes(b"old")
    atomic_replace(path, b"new", tmp_dir, mode=0o640)
    assert path.read_bytes() == b"new"
    assert file_mode(path) == 0o640
    assert list(tmp_dir.iterdir()) == []


def test_atomic_replace_into_a_missing_directory_cleans_up(tmp_path: Path) -> None:
    tmp_dir = tmp_path / "tmp"
    tmp_dir.mkdir()
    with pytest.raises(FileNotFoundError):
        atomic_replace(tmp_path / "missing" / "f", b"data", tmp_dir)
    assert list(tmp_dir.iterdir()) == []


def test_fsync_dir_rejects_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        fsync_dir(path)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_is_disk_full_recognises_a_real_enospc() -> None:
    fd = os.open("/dev/full", os.O_WRONLY | os.O_CLOEXEC)
    try:
        with pytest.raises(OSError, match="No space left on device") as excinfo:
            os.write(fd, b"x")
    finally:
        os.close(fd)
    assert is_disk_full(excinfo.value)


def test_is_disk_full_recognises_quota_and_rejects_other_errors(tmp_path: Path) -> None:
    assert is_disk_full(OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)))
    with pytest.raises(FileNotFoundError) as excinfo:
        (tmp_path / "missing").read_bytes()
    assert not is_disk_full(excinfo.value)


def test_more_parts_than_one_writev_takes_are_all_written(tmp_path: Path) -> None:
    parts = [b"%d," % n for n in range(3000)]  # IOV_MAX is 1024 on Linux
    path = tmp_path / "many"
    write_file_durably(path, parts)
    assert path.read_bytes() == b"".join(parts)

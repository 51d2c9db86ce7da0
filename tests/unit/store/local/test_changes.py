"""Tests for sendgate.store.local.changes: the change mark that processes share through a file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sendgate.store.local.changes import KEPT, REREAD, ChangeMark, KeptReads

NOBODY = 65534


def test_a_renewal_by_one_process_is_seen_by_another(tmp_path: Path) -> None:
    writer, reader = ChangeMark(tmp_path / "db-mark"), ChangeMark(tmp_path / "db-mark")
    try:
        seen = reader.current()
        assert reader.current() == seen  # nothing changed: the same mark
        writer.renew()
        renewed = reader.current()
        assert renewed != seen
        writer.renew()
        assert reader.current() not in (seen, renewed)
    finally:
        writer.close()
        reader.close()


def test_the_file_is_owner_only_and_given_to_the_database_s_owner(tmp_path: Path) -> None:
    database = tmp_path / "db"
    database.write_bytes(b"")
    expected = os.geteuid()
    if expected == 0:  # root makes it (a CLI command): the unprivileged workers must open it
        os.chown(database, NOBODY, NOBODY)
        expected = NOBODY
    mark = ChangeMark(tmp_path / "db-mark", owner_of=database)
    mark.close()
    info = (tmp_path / "db-mark").stat()
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == expected


def test_without_its_file_the_mark_never_repeats(tmp_path: Path) -> None:
    mark = ChangeMark(tmp_path / "missing" / "db-mark")
    seen = {mark.current() for _ in range(100)}
    assert len(seen) == 100
    mark.renew()  # nothing to renew: no error either
    mark.close()


def test_a_closed_mark_never_repeats_and_renews_nothing(tmp_path: Path) -> None:
    mark = ChangeMark(tmp_path / "db-mark")
    before = mark.current()
    mark.close()
    assert mark.current() != before
    assert mark.current() != mark.current()
    mark.renew()


def test_kept_reads_last_until_the_mark_changes_or_reread_passes(tmp_path: Path) -> None:
    mark = ChangeMark(tmp_path / "db-mark")
    now = [100.0]
    kept: KeptReads[str, int] = KeptReads(mark, clock=lambda: now[0])
    try:
        seen = kept.seen()
        assert kept.get("a", seen) is None  # nothing read yet
        kept.keep("a", seen, 1)
        assert kept.get("a", kept.seen()) == 1
        mark.renew()
        assert kept.get("a", kept.seen()) is None
        kept.keep("a", kept.seen(), 2)
        now[0] += REREAD
        assert kept.get("a", kept.seen()) is None
    finally:
        mark.close()


def test_kept_reads_are_all_dropped_when_the_most_are_kept(tmp_path: Path) -> None:
    mark = ChangeMark(tmp_path / "db-mark")
    kept: KeptReads[int, int] = KeptReads(mark, clock=lambda: 100.0)
    try:
        seen = kept.seen()
        for key in range(KEPT):
            kept.keep(key, seen, key)
        assert kept.get(KEPT - 1, seen) == KEPT - 1
        kept.keep(KEPT, seen, KEPT)
        assert kept.get(0, seen) is None
        assert kept.get(KEPT, seen) == KEPT
    finally:
        mark.close()

"""DKIM key rotation on real key directories: stage, switch (and its crash recovery), prune.

Crash states are made by hand on disk (what an interrupted switch leaves), not by mocks: the
switch run again must finish the job.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.unit.dkim.conftest import DOMAIN, is_one_line

from sendgate.dkim.keys import generate_key, load_keys
from sendgate.dkim.rotation import (
    RetiredRecord,
    prune_retired,
    retired_records,
    stage_key,
    staged_keys,
    switch_key,
)
from sendgate.errors import ConfigError, UserError

T = TypeVar("T")
NOW = 1_796_000_000.0  # 2026-11-30 UTC
WEEK = 7 * 86400.0


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def key_dir(tmp_path: Path) -> Path:
    path = tmp_path / "dkim"
    generate_key(path, DOMAIN, "old", "ed25519")
    return path


def only(items: tuple[T, ...]) -> T:
    [item] = items
    return item


# --- stage ---------------------------------------------------------------------------------------


def test_a_staged_key_is_written_apart_and_does_not_sign(key_dir: Path) -> None:
    staged = stage_key(key_dir, "EXAMPLE.org", None, "New", NOW)
    path = key_dir / DOMAIN / "staged" / "new.ed25519.key"
    assert (staged.domain, staged.selector, staged.algorithm) == (DOMAIN, "new", "ed25519")
    assert mode_of(path) == 0o600
    assert mode_of(path.parent) == 0o700
    assert only(staged_keys(key_dir)) == staged
    assert only(load_keys(key_dir)).selector == "old"  # the signer's keys are unchanged


def test_the_default_selector_is_the_month_then_the_day(key_dir: Path) -> None:
    assert stage_key(key_dir, DOMAIN, None, None, NOW).selector == "sg202611"
    (key_dir / DOMAIN / "staged" / "sg202611.ed25519.key").unlink()
    generate_key(key_dir, DOMAIN, "sg202611", "rsa")  # the month's selector is taken now
    assert stage_key(key_dir, DOMAIN, "ed25519", None, NOW).selector == "sg20261130"
    (key_dir / DOMAIN / "staged" / "sg20261130.ed25519.key").rename(
        key_dir / DOMAIN / "staged" / "sg20261130.rsa.key"
    )
    with pytest.raises(UserError, match="sg202611 and sg20261130 are taken"):
        stage_key(key_dir, DOMAIN, "ed25519", None, NOW)


@pytest.mark.parametrize(
    ("algorithm", "selector", "fragment"),
    [
        ("rsa", "new", "has no rsa key to rotate"),
        ("ed25519", "old", "selector old is taken"),
        ("ed25519", "bad_name", "not a DKIM selector"),
    ],
)
def test_staging_refuses_what_cannot_rotate(
    key_dir: Path, algorithm: str, selector: str, fragment: str
) -> None:
    with pytest.raises(UserError, match=fragment) as caught:
        stage_key(key_dir, DOMAIN, algorithm, selector, NOW)
    assert is_one_line(str(caught.value))
    assert staged_keys(key_dir) == ()


def test_staging_needs_a_key_and_a_clear_algorithm(tmp_path: Path, key_dir: Path) -> None:
    with pytest.raises(UserError, match="has no DKIM key to rotate; make one with"):
        stage_key(tmp_path / "empty", DOMAIN, None, None, NOW)
    generate_key(key_dir, DOMAIN, "other", "rsa")
    with pytest.raises(UserError, match="has ed25519 and rsa keys: choose one with --algorithm"):
        stage_key(key_dir, DOMAIN, None, None, NOW)
    with pytest.raises(UserError, match="unknown DKIM algorithm"):
        stage_key(key_dir, DOMAIN, "dsa", None, NOW)


def test_one_staged_key_per_algorithm_and_no_reused_selector(key_dir: Path) -> None:
    stage_key(key_dir, DOMAIN, None, "new", NOW)
    with pytest.raises(UserError, match=r"is staged for example\.org already"):
        stage_key(key_dir, DOMAIN, None, "newer", NOW)
    switch_key(key_dir, DOMAIN, None, WEEK, NOW)
    # "old" is retired, its record still in DNS and in caches: never a new key's name.
    with pytest.raises(UserError, match="selector old is taken"):
        stage_key(key_dir, DOMAIN, None, "old", NOW)


# --- switch --------------------------------------------------------------------------------------


def test_switch_signs_with_the_staged_key_and_keeps_the_old_record(key_dir: Path) -> None:
    old = only(load_keys(key_dir))
    new = stage_key(key_dir, DOMAIN, None, "new", NOW)
    switched = switch_key(key_dir, DOMAIN, None, WEEK, NOW)
    assert switched.new == new
    assert only(load_keys(key_dir)) == new
    assert staged_keys(key_dir) == ()
    retired = RetiredRecord(DOMAIN, "old", "ed25519", old.public_record, NOW, NOW + WEEK)
    assert switched.retired == retired
    assert retired_records(key_dir) == (retired,)
    # The old private key is gone: only its public record is kept.
    assert not (key_dir / DOMAIN / "old.ed25519.key").exists()
    assert sorted(p.name for p in (key_dir / DOMAIN / "retired").iterdir()) == [
        "old.ed25519.record"
    ]


def test_switch_without_a_staged_key_changes_nothing(key_dir: Path) -> None:
    before = load_keys(key_dir)
    with pytest.raises(UserError, match=r"no key is staged for example\.org; stage one with"):
        switch_key(key_dir, DOMAIN, None, WEEK, NOW)
    with pytest.raises(UserError, match="no rsa key is staged"):
        switch_key(key_dir, DOMAIN, "rsa", WEEK, NOW)
    assert load_keys(key_dir) == before
    assert retired_records(key_dir) == ()


def test_switch_picks_among_two_staged_keys_only_when_told(key_dir: Path) -> None:
    generate_key(key_dir, DOMAIN, "oldr", "rsa")
    stage_key(key_dir, DOMAIN, "ed25519", "newe", NOW)
    stage_key(key_dir, DOMAIN, "rsa", "newr", NOW)
    with pytest.raises(UserError, match="has ed25519 and rsa staged keys"):
        switch_key(key_dir, DOMAIN, None, WEEK, NOW)
    switch_key(key_dir, DOMAIN, "rsa", WEEK, NOW)
    assert sorted(key.selector for key in load_keys(key_dir)) == ["newr", "old"]
    assert [key.selector for key in staged_keys(key_dir)] == ["newe"]


def test_a_switch_cut_after_the_record_finishes_when_run_again(key_dir: Path) -> None:
    new = stage_key(key_dir, DOMAIN, None, "new", NOW)
    # What a crash right after writing the retired record leaves: the old key still there,
    # and a temporary file from a still earlier crash.
    retired_dir = key_dir / DOMAIN / "retired"
    retired_dir.mkdir()
    (retired_dir / "old.ed25519.record.tmp").write_text("{")
    old = only(load_keys(key_dir))
    document = {"record": old.public_record, "retired": int(NOW) - 5, "until": int(NOW)}
    (retired_dir / "old.ed25519.record").write_text(json.dumps(document))
    assert [r.selector for r in retired_records(key_dir)] == ["old"]  # the .tmp is skipped
    switched = switch_key(key_dir, DOMAIN, None, WEEK, NOW)
    assert only(load_keys(key_dir)) == new
    assert switched.retired is not None
    assert switched.retired.until == NOW + WEEK
    assert only(retired_records(key_dir)).until == NOW + WEEK


def test_a_switch_cut_after_removing_the_old_key_finishes_when_run_again(key_dir: Path) -> None:
    new = stage_key(key_dir, DOMAIN, None, "new", NOW)
    (key_dir / DOMAIN / "old.ed25519.key").unlink()  # the crash came before the staged key moved
    switched = switch_key(key_dir, DOMAIN, None, WEEK, NOW)
    assert only(load_keys(key_dir)) == new
    assert switched.retired is None


def test_a_failed_switch_says_which_file(key_dir: Path) -> None:
    stage_key(key_dir, DOMAIN, None, "new", NOW)
    in_the_way = key_dir / DOMAIN / "retired" / "old.ed25519.record"
    in_the_way.mkdir(parents=True)  # a directory where the record goes
    with pytest.raises(UserError, match=r"cannot switch keys: .*old\.ed25519\.record") as caught:
        switch_key(key_dir, DOMAIN, None, WEEK, NOW)
    assert is_one_line(str(caught.value))
    assert only(load_keys(key_dir)).selector == "old"  # still signing with the old key
    assert only(staged_keys(key_dir)).selector == "new"
    assert sorted(p.name for p in in_the_way.parent.iterdir()) == [in_the_way.name]


# --- retired records -----------------------------------------------------------------------------


def test_prune_forgets_only_records_past_their_time(key_dir: Path) -> None:
    generate_key(key_dir, DOMAIN, "oldr", "rsa")
    stage_key(key_dir, DOMAIN, "ed25519", "newe", NOW)
    stage_key(key_dir, DOMAIN, "rsa", "newr", NOW)
    switch_key(key_dir, DOMAIN, "ed25519", WEEK, NOW)
    switch_key(key_dir, DOMAIN, "rsa", 2 * WEEK, NOW)
    assert prune_retired(key_dir, NOW + WEEK - 1) == []
    [gone] = prune_retired(key_dir, NOW + WEEK)
    assert (gone.selector, gone.algorithm) == ("old", "ed25519")
    assert [r.selector for r in retired_records(key_dir)] == ["oldr"]


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("old.ed25519.json", "{}", "not a retired DKIM record"),
        ("old.dsa.record", "{}", "not a retired DKIM record"),
        ("Bad_name.rsa.record", "{}", "not a DKIM selector"),
        ("old.rsa.record", "{", "not a readable retired DKIM record"),
        ("old.rsa.record", "[]", "not a readable retired DKIM record"),
        ("old.rsa.record", '{"record": "v=DKIM1; p=x", "retired": 1}', "'until'"),
        ("old.rsa.record", '{"record": "v=DKIM1", "retired": 1, "until": 2}', "no DKIM key"),
        ("old.rsa.record", '{"record": "p=x", "retired": true, "until": 2}', "whole seconds"),
        ("old.rsa.record", '{"record": "p=x", "retired": 1, "until": 2.5}', "whole seconds"),
        ("old.rsa.record", '{"record": "p=x\\n", "retired": 1, "until": 2}', "no DKIM key"),
        ("old.rsa.record", " " * 20000, "too large"),
    ],
)
def test_a_broken_retired_record_is_refused_by_name(
    key_dir: Path, name: str, content: str, fragment: str
) -> None:
    path = key_dir / DOMAIN / "retired" / name
    path.parent.mkdir()
    path.write_text(content)
    with pytest.raises(ConfigError, match=fragment) as caught:
        retired_records(key_dir)
    assert str(path) in str(caught.value)
    assert is_one_line(str(caught.value))


@settings(max_examples=200, deadline=None)
@given(content=st.binary(max_size=300))
def test_any_record_file_reads_or_is_refused_cleanly(
    tmp_path_factory: pytest.TempPathFactory, content: bytes
) -> None:
    tmp_path = tmp_path_factory.mktemp("records")
    place = tmp_path / "k" / DOMAIN / "retired"
    place.mkdir(parents=True, exist_ok=True)
    (place / "s1.rsa.record").write_bytes(content)
    try:
        (record,) = retired_records(tmp_path / "k")
    except ConfigError as exc:
        refusal = str(exc)
        assert is_one_line(refusal)
    else:
        assert "p=" in record.public_record
        assert record.selector == "s1"


@settings(max_examples=20, deadline=None)
@given(retired=st.integers(0, 2**40), keep=st.integers(0, 2**30))
def test_a_written_record_reads_back_the_same(
    tmp_path_factory: pytest.TempPathFactory, retired: int, keep: int
) -> None:
    key_dir = tmp_path_factory.mktemp("dkim")
    generate_key(key_dir, DOMAIN, "old", "ed25519")
    stage_key(key_dir, DOMAIN, None, "new", float(retired))
    switched = switch_key(key_dir, DOMAIN, None, float(keep), float(retired))
    assert retired_records(key_dir) == (switched.retired,)

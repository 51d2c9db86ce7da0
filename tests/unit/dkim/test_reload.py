"""Reloading a running process's signing keys: the new set whole, or the old one kept."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from tests.unit.dkim.conftest import DOMAIN, MESSAGE, dns_for, ed_pem, signature_tags, verify

from sendgate.dkim.keys import generate_key, load_keys
from sendgate.dkim.reload import KeyReloader
from sendgate.dkim.rotation import stage_key, switch_key
from sendgate.dkim.signer import DkimSigner
from sendgate.log import EventLog


def selector_of(signer: DkimSigner) -> bytes:
    return signature_tags(signer.sign(MESSAGE, DOMAIN).rstrip(b"\r\n"))[b"s"]


def test_keys_arrive_rotate_and_survive_a_broken_file(tmp_path: Path) -> None:
    key_dir, stream = tmp_path / "dkim", io.StringIO()
    signer = DkimSigner([])
    reload = KeyReloader(key_dir, signer, EventLog(stream, clock=lambda: 0.0))
    assert signer.sign(MESSAGE, DOMAIN) == b""

    generate_key(key_dir, DOMAIN, "one", "ed25519")
    assert reload() is True
    assert (
        stream.getvalue()
        .splitlines()[-1]
        .endswith(f'event=dkim_reloaded keys={DOMAIN}:one:ed25519 before=""')
    )
    assert selector_of(signer) == b"one"
    assert reload() is False  # nothing changed: nothing logged
    assert len(stream.getvalue().splitlines()) == 1

    stage_key(key_dir, DOMAIN, None, "two", 0.0)
    assert reload() is False  # a staged key does not sign
    switch_key(key_dir, DOMAIN, None, 0.0, 0.0)
    assert reload() is True
    assert selector_of(signer) == b"two"
    [new] = load_keys(key_dir)
    assert verify(signer.sign(MESSAGE, DOMAIN) + MESSAGE, dns_for(new))

    broken = key_dir / DOMAIN / "three.rsa.key"
    broken.write_bytes(ed_pem())  # an Ed25519 key in an RSA key's name
    broken.chmod(0o600)
    assert reload() is False
    line = stream.getvalue().splitlines()[-1]
    assert "level=error event=dkim_reload_failed" in line
    assert str(broken) in line
    assert line.endswith(f"keeping={DOMAIN}:two:ed25519")
    assert selector_of(signer) == b"two"


def test_replace_with_a_bad_key_set_changes_nothing(tmp_path: Path) -> None:
    generate_key(tmp_path, DOMAIN, "one", "ed25519")
    [key] = load_keys(tmp_path)
    signer = DkimSigner([key])
    with pytest.raises(ValueError, match="two ed25519 keys"):
        signer.replace([key, key])
    assert signer.keys() == (key,)
    assert selector_of(signer) == b"one"


def test_a_reload_in_the_middle_of_a_switch_keeps_the_keys_in_use(tmp_path: Path) -> None:
    key_dir, stream = tmp_path / "dkim", io.StringIO()
    generate_key(key_dir, DOMAIN, "one", "ed25519")
    signer = DkimSigner(load_keys(key_dir))
    reload = KeyReloader(key_dir, signer, EventLog(stream, clock=lambda: 0.0))
    stage_key(key_dir, DOMAIN, None, "two", 0.0)
    (key_dir / DOMAIN / "one.ed25519.key").unlink()  # where `switch` is between its steps
    assert reload() is False
    line = stream.getvalue().splitlines()[-1]
    assert "event=dkim_reload_failed" in line
    assert "a key switch is under way for example.org (ed25519)" in line
    assert selector_of(signer) == b"one"
    switch_key(key_dir, DOMAIN, None, 0.0, 0.0)  # the switch, run again, finishes
    assert reload() is True
    assert selector_of(signer) == b"two"


def test_refresh_reloads_only_when_a_key_file_changed(tmp_path: Path) -> None:
    key_dir, stream = tmp_path / "dkim", io.StringIO()
    generate_key(key_dir, DOMAIN, "one", "ed25519")
    signer = DkimSigner(load_keys(key_dir))
    reload = KeyReloader(key_dir, signer, EventLog(stream, clock=lambda: 0.0))
    assert reload.refresh() is False  # as at the start: nothing read, nothing logged
    assert stream.getvalue() == ""
    stage_key(key_dir, DOMAIN, None, "two", 0.0)
    assert reload.refresh() is False  # a staged key is no active key file
    switch_key(key_dir, DOMAIN, None, 0.0, 0.0)
    assert reload.refresh() is True
    assert selector_of(signer) == b"two"
    assert reload.refresh() is False

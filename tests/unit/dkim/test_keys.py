"""Tests for sendgate.dkim.keys: name rules, key generation, loading errors, DNS records."""

import os
import re
import stat
import tempfile
import time
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.unit.dkim.conftest import DOMAIN, MESSAGE, attempt, dns_for, ed_pem, is_one_line

from sendgate.dkim.keys import (
    ALGORITHMS,
    DkimKey,
    default_selector,
    dns_record,
    generate_key,
    key_path,
    load_keys,
)
from sendgate.dkim.signer import DkimSigner
from sendgate.errors import ConfigError, SendgateError, UserError

# --- names ---------------------------------------------------------------------------------------


@given(st.text(max_size=80))
def test_domain_parser_accepts_only_dns_names(domain: str) -> None:
    base = Path("/keys")
    path = attempt(lambda: key_path(base, domain, "s", "rsa"))
    if isinstance(path, SendgateError):
        assert isinstance(path, UserError)
        assert is_one_line(str(path))
    else:
        name = path.parent.name
        assert path.parent.parent == base
        assert name.isascii()
        assert name == name.lower()
        assert re.fullmatch(r"[a-z0-9-]+(\.[a-z0-9-]+)+", name)
        assert len(name) <= 253
        # The stored form is a fixed point: converting it again changes nothing.
        assert key_path(base, name, "s", "rsa") == path


@given(st.text(max_size=70))
def test_selector_parser_accepts_only_dns_labels(selector: str) -> None:
    path = attempt(lambda: key_path(Path("/keys"), DOMAIN, selector, "ed25519"))
    if isinstance(path, SendgateError):
        assert isinstance(path, UserError)
        assert is_one_line(str(path))
    else:
        assert re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", selector.lower())
        assert path.name == f"{selector.lower()}.ed25519.key"


_FILE_NAME_CHARS = st.sampled_from("abcSZ09-_.") | st.sampled_from(["rsa", "ed25519", "key"])


@settings(max_examples=60)
@given(
    st.lists(_FILE_NAME_CHARS, min_size=1, max_size=8)
    .map("".join)
    .filter(lambda name: name not in {".", ".."})
)
def test_key_file_name_parser(name: str) -> None:
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / DOMAIN / name
        path.parent.mkdir()
        path.write_bytes(pem)
        path.chmod(0o600)
        valid = re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.ed25519\.key", name)
        loaded = attempt(lambda: load_keys(Path(tmp)))
        if isinstance(loaded, SendgateError):
            assert isinstance(loaded, ConfigError)
            assert not valid
            assert str(path) in str(loaded)
            assert is_one_line(str(loaded))
        else:
            assert valid
            assert [(k.domain, k.selector, k.algorithm) for k in loaded] == [
                (DOMAIN, name.split(".")[0], "ed25519")
            ]


# --- key generation --------------------------------------------------------------------------


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generate_key_writes_0600_in_0700_dirs(tmp_path: Path) -> None:
    key_dir = tmp_path / "dkim"
    previous = os.umask(0o022)
    try:
        path, record = generate_key(key_dir, "Example.COM", "Sel-1")
    finally:
        os.umask(previous)
    assert path == key_path(key_dir, "example.com", "sel-1", "rsa")
    assert path == key_dir / "example.com" / "sel-1.rsa.key"
    assert mode_of(path) == 0o600
    assert mode_of(key_dir) == 0o700
    assert mode_of(path.parent) == 0o700
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(loaded, rsa.RSAPrivateKey)
    assert loaded.key_size == 2048
    (key,) = load_keys(key_dir)
    assert record == dns_record(key)
    assert record.startswith("sel-1._domainkey.example.com. IN TXT ( ")


def test_generate_key_refuses_to_overwrite(tmp_path: Path) -> None:
    path, _ = generate_key(tmp_path, DOMAIN, "s1", "ed25519")
    before = path.read_bytes()
    with pytest.raises(UserError, match="already exists") as caught:
        generate_key(tmp_path, DOMAIN, "S1", "ed25519")
    assert str(path) in str(caught.value)
    assert is_one_line(str(caught.value))
    assert path.read_bytes() == before


def test_generate_key_refuses_a_second_key_of_one_algorithm(tmp_path: Path) -> None:
    first, _ = generate_key(tmp_path, DOMAIN, "s1", "ed25519")
    with pytest.raises(UserError, match="already has an ed25519 key") as caught:
        generate_key(tmp_path, DOMAIN, "s2", "ed25519")
    assert str(first) in str(caught.value)
    assert not (tmp_path / DOMAIN / "s2.ed25519.key").exists()


@pytest.mark.parametrize(
    ("domain", "selector", "algorithm", "named"),
    [
        ("exa mple.org", "s1", "rsa", "exa mple.org"),
        ("localhost", "s1", "rsa", "localhost"),
        ("-bad.example", "s1", "rsa", "-bad.example"),
        ("a..example", "s1", "rsa", "a..example"),
        ("a" * 64 + ".example", "s1", "rsa", "a" * 64),
        (("a" * 60 + ".") * 5 + "org", "s1", "rsa", "68"),
        ("ex\\097mple.org", "s1", "rsa", "ex"),
        (DOMAIN, "s_1", "rsa", "s_1"),
        (DOMAIN, "s.1", "rsa", "s.1"),
        (DOMAIN, "", "rsa", "''"),
        (DOMAIN, "-s", "rsa", "-s"),
        (DOMAIN, "s1", "dsa", "dsa"),
    ],
)
def test_generate_key_rejects_bad_names(
    tmp_path: Path, domain: str, selector: str, algorithm: str, named: str
) -> None:
    with pytest.raises(UserError) as caught:
        generate_key(tmp_path / "dkim", domain, selector, algorithm)
    assert is_one_line(str(caught.value))
    assert named in str(caught.value)
    assert not (tmp_path / "dkim").exists()


def test_generate_key_reports_an_unwritable_place(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(UserError, match="cannot write") as caught:
        generate_key(blocker / "dkim", DOMAIN, "s1", "ed25519")
    assert is_one_line(str(caught.value))


@pytest.mark.parametrize(
    ("now", "expected"),
    [(0.0, "sg197001"), (1_793_491_199.0, "sg202610"), (1_793_491_200.0, "sg202611")],
)
def test_default_selector_is_year_and_month_in_utc(now: float, expected: str) -> None:
    assert default_selector(now) == expected


def test_default_selector_is_a_valid_selector(tmp_path: Path) -> None:
    selector = default_selector(time.time())
    assert key_path(tmp_path, DOMAIN, selector, "rsa").name == f"{selector}.rsa.key"


# --- loading -----------------------------------------------------------------------------------


def test_load_keys_of_a_missing_directory_is_empty(tmp_path: Path) -> None:
    assert load_keys(tmp_path / "absent") == ()


def test_load_keys_reads_both_algorithms(key_dir: Path, keys: dict[str, DkimKey]) -> None:
    assert set(keys) == {"rsa", "ed25519"}
    assert keys["rsa"].selector == "sg202611"
    assert keys["rsa"].public_record.startswith("v=DKIM1; k=rsa; p=MIIB")
    assert keys["ed25519"].public_record.startswith("v=DKIM1; k=ed25519; p=")
    assert len(load_keys(key_dir)) == 2


def write_key(path: Path, pem: bytes, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pem)
    path.chmod(mode)
    return path


def rsa_pem(bits: int) -> bytes:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def assert_config_error(key_dir: Path, named: Path, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_keys(key_dir)
    message = str(caught.value)
    assert is_one_line(message)
    assert str(named) in message
    assert fragment in message


@pytest.mark.parametrize(
    "name", ["s1.key", "s1.dsa.key", "S1.ed25519.key", "s1.ed25519.pem", "a.b.ed25519.key", "x"]
)
def test_load_keys_rejects_names_outside_the_layout(tmp_path: Path, name: str) -> None:
    path = write_key(tmp_path / DOMAIN / name, ed_pem())
    assert_config_error(tmp_path, path, "layout")


@pytest.mark.parametrize("name", ["Example.org", "localhost", "bücher.example"])
def test_load_keys_rejects_bad_domain_directories(tmp_path: Path, name: str) -> None:
    write_key(tmp_path / name / "s1.ed25519.key", ed_pem())
    assert_config_error(tmp_path, tmp_path / name, "domain directory")


def test_load_keys_rejects_a_file_beside_the_domains(tmp_path: Path) -> None:
    stray = tmp_path / "example.com"
    stray.write_bytes(b"")
    assert_config_error(tmp_path, stray, "domain directory")


def test_load_keys_rejects_a_key_open_to_others(tmp_path: Path) -> None:
    path = write_key(tmp_path / DOMAIN / "s1.ed25519.key", ed_pem(), mode=0o640)
    assert_config_error(tmp_path, path, "0640")


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage\n", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"],
)
def test_load_keys_rejects_unparsable_keys(tmp_path: Path, content: bytes) -> None:
    path = write_key(tmp_path / DOMAIN / "s1.ed25519.key", content)
    assert_config_error(tmp_path, path, "not a PEM private key")


def test_load_keys_rejects_an_encrypted_key(tmp_path: Path) -> None:
    pem = ed_pem(serialization.BestAvailableEncryption(b"secret"))
    path = write_key(tmp_path / DOMAIN / "s1.ed25519.key", pem)
    assert_config_error(tmp_path, path, "encrypted")


def test_load_keys_rejects_an_unreadable_key(tmp_path: Path) -> None:
    path = tmp_path / DOMAIN / "s1.rsa.key"
    path.parent.mkdir()
    path.symlink_to(tmp_path / "nowhere")
    assert_config_error(tmp_path, path, "cannot read")


def test_load_keys_rejects_a_directory_named_like_a_key(tmp_path: Path) -> None:
    path = tmp_path / DOMAIN / "s1.rsa.key"
    path.mkdir(parents=True, mode=0o700)
    assert_config_error(tmp_path, path, "not a regular file")


def test_load_keys_rejects_a_short_rsa_key(tmp_path: Path) -> None:
    path = write_key(tmp_path / DOMAIN / "s1.rsa.key", rsa_pem(1024))
    assert_config_error(tmp_path, path, "1024 bits")


def test_load_keys_rejects_a_key_of_the_other_algorithm(tmp_path: Path) -> None:
    path = write_key(tmp_path / DOMAIN / "s1.rsa.key", ed_pem())
    assert_config_error(tmp_path, path, "not an RSA key")


def test_load_keys_rejects_two_keys_for_one_algorithm(tmp_path: Path) -> None:
    write_key(tmp_path / DOMAIN / "a1.ed25519.key", ed_pem())
    second = write_key(tmp_path / DOMAIN / "b1.ed25519.key", ed_pem())
    assert_config_error(tmp_path, second, "second ed25519 key")


def test_load_keys_accepts_pkcs8_rsa_keys(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_key(tmp_path / DOMAIN / "s1.rsa.key", pem.replace(b"\n", b"\r\n"))
    (loaded,) = load_keys(tmp_path)
    header = DkimSigner([loaded]).sign(MESSAGE, DOMAIN)
    assert dkim.verify(header + MESSAGE, dnsfunc=dns_for(loaded)) is True


# --- DNS records ---------------------------------------------------------------------------------


def txt_strings(record: str) -> list[str]:
    match = re.fullmatch(r"(\S+) IN TXT \( (.*) \)", record)
    assert match is not None
    return [
        s.replace('\\"', '"').replace("\\\\", "\\")
        for s in re.findall(r'"((?:[^"\\]|\\.)*)"', match[2])
    ]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_dns_record_splits_long_strings(keys: dict[str, DkimKey], algorithm: str) -> None:
    key = keys[algorithm]
    record = dns_record(key)
    assert record.startswith(f"{key.selector}._domainkey.{DOMAIN}. IN TXT ( ")
    strings = txt_strings(record)
    assert all(0 < len(s) <= 255 for s in strings)
    assert "".join(strings) == key.public_record
    assert strings[0] == f"v=DKIM1; k={algorithm}; "
    if algorithm == "rsa":
        assert len(strings) == 3


@given(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=900))
def test_dns_record_round_trips_any_value(value: str) -> None:
    key = DkimKey(DOMAIN, "s1", "rsa", b"", value)
    strings = txt_strings(dns_record(key))
    assert all(0 < len(s) <= 255 for s in strings)
    assert "".join(strings) == value


def test_load_keys_rejects_two_keys_with_one_selector(tmp_path: Path) -> None:
    write_key(tmp_path / DOMAIN / "s1.ed25519.key", ed_pem())
    second = write_key(tmp_path / DOMAIN / "s1.rsa.key", rsa_pem(2048))
    assert_config_error(tmp_path, second, "second key with selector s1")


def test_generate_key_refuses_a_selector_another_algorithm_uses(tmp_path: Path) -> None:
    # One selector is one DNS name: a second record there would break both keys.
    first, _ = generate_key(tmp_path, DOMAIN, "s1", "ed25519")
    with pytest.raises(UserError, match="selector s1 is taken") as caught:
        generate_key(tmp_path, DOMAIN, "s1", "rsa")
    assert str(first) in str(caught.value)
    assert sorted(p.name for p in (tmp_path / DOMAIN).iterdir()) == ["s1.ed25519.key"]


def test_load_keys_leaves_the_rotation_directories_out(tmp_path: Path) -> None:
    generate_key(tmp_path, DOMAIN, "s1", "ed25519")
    write_key(tmp_path / DOMAIN / "staged" / "s2.ed25519.key", ed_pem())
    (tmp_path / DOMAIN / "retired").mkdir()
    assert [key.selector for key in load_keys(tmp_path)] == ["s1"]
    # A file named like them is no key, and says so.
    (tmp_path / DOMAIN / "staged" / "s2.ed25519.key").unlink()
    (tmp_path / DOMAIN / "staged").rmdir()
    write_key(tmp_path / DOMAIN / "staged", b"")
    assert_config_error(tmp_path, tmp_path / DOMAIN / "staged", "not a key file")

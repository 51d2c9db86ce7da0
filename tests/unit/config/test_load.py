"""Tests for sendgate.config.load: good configs, file-level errors, and the relations checked.

The bad configs, one file per rule, live in tests/configs/bad/ with their expected messages.
"""

import dataclasses
import os
from pathlib import Path

import pytest
import trustme
from tests.unit.config.conftest import ANY_V4, CERTIFICATES, MINIMAL, write_config

from sendgate.certs import generate_self_signed
from sendgate.config.kinds import HostPort
from sendgate.config.load import load_config
from sendgate.errors import ConfigError

# --- good configs ------------------------------------------------------------------------------


def test_minimal_config_gets_every_default(pair_dir: Path) -> None:
    config = load_config(write_config(pair_dir, MINIMAL))

    assert config.hostname == "mail.example.com"
    assert config.data_dir == pair_dir / "data"
    assert config.unsafe_overrides == ()
    assert config.listen.submission == (HostPort(ANY_V4, 587),)
    assert config.listen.submissions == (HostPort(ANY_V4, 465),)
    assert config.listen.workers == 0
    assert config.tls.min_version == "1.2"
    assert config.tls.reload_interval == 60.0
    assert config.auth.required is True
    assert config.auth.allow_plaintext is False
    assert config.auth.cache_ttl == 300.0
    assert config.auth.verify_threads == 2
    assert config.limits.max_message_size == 26214400
    assert config.limits.max_recipients == 100
    assert config.limits.max_errors == 10
    assert config.limits.command_timeout == 300.0
    assert config.limits.session_timeout == 3600.0
    assert config.limits.max_connections == 1000
    assert config.limits.max_connections_per_ip == 50
    assert config.limits.shutdown_grace == 30.0
    assert config.privacy.received_client_ip is False
    assert config.log.format == "kv"
    assert config.log.level == "info"


def test_given_values_are_kept_with_their_types(pair_dir: Path) -> None:
    text = (
        'hostname = "mx-1.example.org"\n'
        'data_dir = "/var/lib/sendgate"\n'
        "[listen]\n"
        'submission = ["127.0.0.1:0", "[::1]:2587"]\n'
        "submissions = []\n"
        "workers = 4\n"
        "[auth]\n"
        "cache_ttl = 0\n"
        "[limits]\n"
        "command_timeout = 600\n"
        "max_message_size = 1024\n"
        "[privacy]\n"
        "received_client_ip = true\n"
        "[log]\n"
        'format = "json"\n'
        'level = "debug"\n' + CERTIFICATES.replace("[tls]", '[tls]\nmin_version = "1.3"')
    )
    config = load_config(write_config(pair_dir, text))

    assert config.hostname == "mx-1.example.org"
    assert config.data_dir == Path("/var/lib/sendgate")
    assert config.listen.submission == (HostPort("127.0.0.1", 0), HostPort("::1", 2587))
    assert config.listen.submissions == ()
    assert config.listen.workers == 4
    assert config.auth.cache_ttl == 0.0
    assert isinstance(config.auth.cache_ttl, float)
    assert config.limits.command_timeout == 600.0
    assert isinstance(config.limits.command_timeout, float)
    assert config.limits.max_message_size == 1024
    assert config.privacy.received_client_ip is True
    assert (config.log.format, config.log.level) == ("json", "debug")
    assert config.tls.min_version == "1.3"


def test_relative_paths_resolve_against_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = tmp_path / "etc"
    (etc / "tls").mkdir(parents=True)
    generate_self_signed("mail.example.com", etc / "tls" / "c.pem", etc / "tls" / "k.pem")
    write_config(
        etc,
        'hostname = "mail.example.com"\ndata_dir = "spool"\n'
        '[tls]\ncertificates = [{ cert = "tls/c.pem", key = "tls/k.pem" }]\n',
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    config = load_config(Path("../etc/sendgate.toml"))

    assert config.data_dir.is_absolute()
    assert config.data_dir.resolve() == etc / "spool"
    pair = config.tls.certificates[0]
    assert pair.cert.is_absolute()
    assert pair.key.is_absolute()
    assert (pair.cert.resolve(), pair.key.resolve()) == (etc / "tls/c.pem", etc / "tls/k.pem")


def test_symlinked_key_keeps_its_link_path(pair_dir: Path) -> None:
    # Reloads must follow a renewed link (certbot's live/), so the link is not resolved away.
    (pair_dir / "live-key.pem").symlink_to(pair_dir / "key.pem")
    text = MINIMAL.replace("key.pem", "live-key.pem")

    config = load_config(write_config(pair_dir, text))

    assert config.tls.certificates[0].key == pair_dir / "live-key.pem"


def test_rsa_and_ecdsa_pairs_side_by_side_load(pair_dir: Path) -> None:
    ca = trustme.CA(key_type=trustme.KeyType.RSA)
    leaf = ca.issue_cert("mail.example.com", key_type=trustme.KeyType.RSA)
    leaf.cert_chain_pems[0].write_to_path(str(pair_dir / "rsa-cert.pem"))
    leaf.private_key_pem.write_to_path(str(pair_dir / "rsa-key.pem"))
    os.chmod(pair_dir / "rsa-key.pem", 0o600)
    text = (
        'hostname = "mail.example.com"\n'
        "[[tls.certificates]]\n"
        'cert = "rsa-cert.pem"\nkey = "rsa-key.pem"\n'
        "[[tls.certificates]]\n"
        'cert = "cert.pem"\nkey = "key.pem"\n'
    )

    config = load_config(write_config(pair_dir, text))

    assert [pair.key.name for pair in config.tls.certificates] == ["rsa-key.pem", "key.pem"]


def test_key_of_another_certificate_is_refused(pair_dir: Path) -> None:
    generate_self_signed("other.example.com", pair_dir / "other.pem", pair_dir / "other-key.pem")
    text = MINIMAL.replace("key.pem", "other-key.pem")
    path = write_config(pair_dir, text)

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert str(caught.value) == (
        f"{path}: tls.certificates[0]: {pair_dir}/other-key.pem: private key does not match "
        f"certificate {pair_dir}/cert.pem"
    )


def test_same_port_zero_twice_is_allowed(pair_dir: Path) -> None:
    text = (
        'hostname = "mail.example.com"\n'
        '[listen]\nsubmission = ["127.0.0.1:0"]\nsubmissions = ["127.0.0.1:0"]\n' + CERTIFICATES
    )

    config = load_config(write_config(pair_dir, text))

    assert config.listen.submission == config.listen.submissions == (HostPort("127.0.0.1", 0),)


def test_config_is_frozen(pair_dir: Path) -> None:
    config = load_config(write_config(pair_dir, MINIMAL))

    with pytest.raises(dataclasses.FrozenInstanceError):
        config.hostname = "other.example.com"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.limits.max_recipients = 1  # type: ignore[misc]


# --- file-level errors -------------------------------------------------------------------------


def test_missing_file_is_one_line_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert str(caught.value) == f"{path}: cannot read: No such file or directory"


def test_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'hostname = "caf\xe9.example"\n')

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert str(caught.value) == f"{path}: not valid UTF-8 (byte 15)"


def test_integer_too_long_for_python_is_invalid_toml(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[limits]\nmax_recipients = " + "9" * 5000 + "\n")

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    message = str(caught.value)
    assert message.startswith(f"{path}: invalid TOML: ")
    assert "\n" not in message
    assert len(message) < 200 + len(str(path))


def test_deeply_nested_arrays_are_invalid_toml(tmp_path: Path) -> None:
    path = write_config(tmp_path, "a = " + "[" * 100000 + "]" * 100000 + "\n")

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert str(caught.value) == f"{path}: invalid TOML: arrays or tables nested too deeply"


def test_certificate_path_that_is_a_directory_is_refused(pair_dir: Path) -> None:
    (pair_dir / "certs").mkdir()
    text = MINIMAL.replace('"cert.pem"', '"certs"')
    path = write_config(pair_dir, text)

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert str(caught.value) == (
        f"{path}: tls.certificates[0].cert: not a regular file: {pair_dir}/certs"
    )


def test_huge_integer_is_echoed_shortened(pair_dir: Path) -> None:
    path = write_config(pair_dir, "[limits]\nmax_recipients = " + "9" * 40 + "\n")

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert str(caught.value) == (
        f"{path}: limits.max_recipients: must be an integer between 1 and 10000, got {'9' * 20}..."
    )


def test_unknown_quoted_key_is_shown_escaped(pair_dir: Path) -> None:
    path = write_config(pair_dir, '"odd\\nkey" = 1\n')

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert str(caught.value) == f'{path}: "odd\\nkey": unknown key'

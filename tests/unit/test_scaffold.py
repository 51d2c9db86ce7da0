"""Tests for sendgate.scaffold: `sendgate init` makes a working instance and never clobbers."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sendgate.certs import check_pair, describe_certificate, generate_self_signed
from sendgate.config.kinds import HostPort, parse_hostname
from sendgate.config.load import load_config
from sendgate.config.unsafe import unsafe_settings
from sendgate.errors import ConfigError, UserError
from sendgate.scaffold import default_hostname, init_instance


def _init(
    directory: Path,
    hostname: str = "mail.example.com",
    *,
    cert: Path | None = None,
    key: Path | None = None,
    http: str | None = None,
) -> Path:
    return init_instance(
        directory,
        hostname=hostname,
        submission="127.0.0.1:0",
        submissions="[::1]:0",
        cert=cert,
        key=key,
        http=http,
    )


@pytest.fixture
def open_umask() -> Iterator[None]:
    """Run with umask 0, so any mode a file gets must have been set on purpose."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.mark.usefixtures("open_umask")
def test_init_creates_a_private_instance_that_loads(tmp_path: Path) -> None:
    directory = tmp_path / "instance"

    config_path = _init(directory)

    assert config_path == directory / "sendgate.toml"
    assert sorted(path.name for path in directory.iterdir()) == ["data", "sendgate.toml", "tls"]
    assert sorted(path.name for path in (directory / "tls").iterdir()) == ["cert.pem", "key.pem"]
    assert _mode(directory) == 0o700
    assert _mode(directory / "data") == 0o700
    assert _mode(directory / "tls") == 0o700
    assert _mode(config_path) == 0o600
    assert _mode(directory / "tls" / "key.pem") == 0o600
    config = load_config(config_path)
    assert config.hostname == "mail.example.com"
    assert config.listen.submission == (HostPort("127.0.0.1", 0),)
    assert config.listen.submissions == (HostPort("::1", 0),)
    assert config.data_dir == directory / "data"
    assert config.tls.certificates[0].cert == directory / "tls" / "cert.pem"
    assert unsafe_settings(config) == []


def test_generated_config_uses_relative_paths_so_the_directory_can_move(tmp_path: Path) -> None:
    _init(tmp_path / "old")
    (tmp_path / "old").rename(tmp_path / "new")

    config = load_config(tmp_path / "new" / "sendgate.toml")

    assert config.tls.certificates[0].key == tmp_path / "new" / "tls" / "key.pem"
    assert config.data_dir == tmp_path / "new" / "data"


def test_init_creates_missing_parents(tmp_path: Path) -> None:
    config_path = _init(tmp_path / "a" / "b")

    assert config_path.is_file()


def test_existing_directory_keeps_its_mode(tmp_path: Path) -> None:
    directory = tmp_path / "shared"
    directory.mkdir()
    os.chmod(directory, 0o750)  # noqa: S103 - a mode to keep

    _init(directory)

    assert _mode(directory) == 0o750


def test_init_refuses_an_existing_config_and_leaves_it_alone(tmp_path: Path) -> None:
    existing = tmp_path / "sendgate.toml"
    existing.write_text("# mine\n")

    with pytest.raises(UserError) as caught:
        _init(tmp_path)

    assert str(caught.value) == f"{existing}: already exists; not overwriting it"
    assert existing.read_text() == "# mine\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["sendgate.toml"]


def test_init_twice_refuses_the_second_time(tmp_path: Path) -> None:
    _init(tmp_path / "i")
    key_before = (tmp_path / "i" / "tls" / "key.pem").read_bytes()

    with pytest.raises(UserError, match="already exists"):
        _init(tmp_path / "i", "other.example.com")

    assert (tmp_path / "i" / "tls" / "key.pem").read_bytes() == key_before


def test_init_refuses_to_overwrite_a_leftover_key(tmp_path: Path) -> None:
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "key.pem").write_text("precious")

    with pytest.raises(UserError) as caught:
        _init(tmp_path)

    assert str(caught.value) == (
        f"{tmp_path}/tls/key.pem: already exists; pass --cert and --key to use it, or remove it"
    )
    assert (tmp_path / "tls" / "key.pem").read_text() == "precious"
    assert not (tmp_path / "sendgate.toml").exists()


@pytest.mark.parametrize(
    ("hostname", "submission", "submissions", "message"),
    [
        (
            "mail server",
            "127.0.0.1:0",
            "[::1]:0",
            '--hostname: expected a host name like "mail.example.com", got "mail server"',
        ),
        ("mail.example.com", "x", "[::1]:0", '--submission: expected HOST:PORT, got "x"'),
        (
            "mail.example.com",
            "127.0.0.1:0",
            "::1:0",
            '--submissions: an IPv6 address needs brackets, as in "[::1]:587", got "::1:0"',
        ),
    ],
)
def test_bad_options_are_named_and_nothing_is_created(
    tmp_path: Path, hostname: str, submission: str, submissions: str, message: str
) -> None:
    directory = tmp_path / "instance"

    with pytest.raises(UserError) as caught:
        init_instance(directory, hostname=hostname, submission=submission, submissions=submissions)

    assert str(caught.value) == message
    assert not directory.exists()


def test_directory_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")

    with pytest.raises(UserError) as caught:
        _init(tmp_path / "file")

    assert str(caught.value) == f"{tmp_path}/file: exists and is not a directory"


def test_given_cert_and_key_are_referenced_not_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pki").mkdir()
    generate_self_signed("mail.example.com", tmp_path / "pki/cert.pem", tmp_path / "pki/key.pem")
    monkeypatch.chdir(tmp_path)

    config_path = _init(Path("instance"), cert=Path("pki/cert.pem"), key=Path("pki/key.pem"))

    assert not (tmp_path / "instance" / "tls").exists()
    pair = load_config(config_path).tls.certificates[0]
    assert (pair.cert, pair.key) == (tmp_path / "pki/cert.pem", tmp_path / "pki/key.pem")
    assert f'cert = "{tmp_path}/pki/cert.pem"' in config_path.read_text()


def test_given_key_open_to_others_is_refused(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    generate_self_signed("mail.example.com", cert, key)
    os.chmod(key, 0o644)

    with pytest.raises(UserError) as caught:
        _init(tmp_path / "i", cert=cert, key=key)

    assert str(caught.value) == (
        f"--key: {key} is open to group or others (mode 0644); run chmod 600 on it"
    )
    assert not (tmp_path / "i").exists()


def test_given_missing_cert_is_named(tmp_path: Path) -> None:
    generate_self_signed("mail.example.com", tmp_path / "cert.pem", tmp_path / "key.pem")
    missing = tmp_path / "missing.pem"

    with pytest.raises(UserError) as caught:
        _init(tmp_path / "i", cert=missing, key=tmp_path / "key.pem")

    assert str(caught.value) == f"--cert: file not found: {missing}"


def test_cert_without_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError) as caught:
        _init(tmp_path / "i", cert=tmp_path / "c.pem")

    assert str(caught.value) == "--cert and --key must be given together"


def test_generated_certificate_names_the_host(tmp_path: Path) -> None:
    _init(tmp_path, "smtp.example.net")

    assert check_pair(tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem") == "ECDSA"
    description = describe_certificate(tmp_path / "tls" / "cert.pem")
    assert description.startswith("CN=smtp.example.net; SAN=DNS:smtp.example.net; ")


def test_default_hostname_is_a_valid_host_name() -> None:
    name = default_hostname()

    assert parse_hostname(name) == name


def test_init_with_an_http_listener_on_loopback_only(tmp_path: Path) -> None:
    config = load_config(_init(tmp_path / "a", http="127.0.0.1:8025"))
    assert config.http.listen == HostPort("127.0.0.1", 8025)
    with pytest.raises(UserError, match="--http: plain HTTP is allowed only on a loopback address"):
        _init(tmp_path / "b", http="192.0.2.1:80")
    with pytest.raises(UserError, match='--http: expected HOST:PORT, got "nonsense"'):
        _init(tmp_path / "c", http="nonsense")
    assert not (tmp_path / "b").exists()
    assert not (tmp_path / "c").exists()


def test_init_for_a_cluster_names_the_shared_stores(tmp_path: Path) -> None:
    database = "postgresql://sendgate@10.0.0.6/sendgate?sslmode=verify-full"
    path = init_instance(
        tmp_path / "node",
        hostname="mail.example.com",
        submission="127.0.0.1:0",
        submissions="127.0.0.1:0",
        cluster=database,
        redis="rediss://:secret@10.0.0.5:6380/0",
    )
    config = load_config(path)
    assert (config.store.users, config.store.queue) == (database, database)
    assert config.store.limits == "rediss://:secret@10.0.0.5:6380/0"
    assert unsafe_settings(config) == []
    assert _mode(path) == 0o600 & ~_umask()  # it holds the URLs' passwords


def test_init_refuses_a_cluster_store_without_tls_and_leaves_no_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        init_instance(
            tmp_path / "node",
            hostname="mail.example.com",
            submission="127.0.0.1:0",
            submissions="127.0.0.1:0",
            cluster="postgresql://sendgate:s3cret@10.0.0.6/sendgate",
        )
    assert "store.users: unsafe setting refused" in str(caught.value)
    assert "s3cret" not in str(caught.value)
    assert not (tmp_path / "node" / "sendgate.toml").exists()


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current

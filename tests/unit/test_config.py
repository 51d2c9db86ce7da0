"""Tests for sendgate.config: good configs, parsers, the unsafe gate, and the generated texts.

The bad configs, one file per rule, live in tests/configs/bad/ with their expected messages.
"""

import dataclasses
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import trustme

import sendgate
from sendgate.certs import generate_self_signed
from sendgate.config import (
    Config,
    HostPort,
    load_config,
    parse_hostname,
    render_docs,
    render_example,
    unsafe_settings,
)
from sendgate.errors import ConfigError

DOCS = Path(__file__).parents[2] / "docs" / "config.md"
# The schema's default listening address (all IPv4 interfaces).
ANY_V4 = "0.0.0.0"  # noqa: S104
CERTIFICATES = '\n[tls]\ncertificates = [{ cert = "cert.pem", key = "key.pem" }]\n'


@pytest.fixture
def pair_dir(tmp_path: Path) -> Path:
    """A directory holding a valid ECDSA pair as cert.pem and key.pem (key mode 0600)."""
    generate_self_signed("mail.example.com", tmp_path / "cert.pem", tmp_path / "key.pem")
    return tmp_path


def _write(directory: Path, text: str, name: str = "sendgate.toml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def _leaf_keys(cls: type, prefix: str = "") -> set[str]:
    """Every dotted setting key of a schema dataclass, found through the public dataclasses."""
    keys = set()
    for setting in dataclasses.fields(cls):
        dotted = f"{prefix}.{setting.name}" if prefix else setting.name
        if isinstance(setting.type, type) and dataclasses.is_dataclass(setting.type):
            keys |= _leaf_keys(setting.type, dotted)
        else:
            keys.add(dotted)
    return keys


def _toml_keys(table: dict[str, object], prefix: str = "") -> set[str]:
    keys = set()
    for name, value in table.items():
        dotted = f"{prefix}.{name}" if prefix else name
        keys |= _toml_keys(value, dotted) if isinstance(value, dict) else {dotted}
    return keys


# --- good configs ------------------------------------------------------------------------------


def test_minimal_config_gets_every_default(pair_dir: Path) -> None:
    config = load_config(_write(pair_dir, 'hostname = "mail.example.com"\n' + CERTIFICATES))

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
    config = load_config(_write(pair_dir, text))

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
    _write(
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
    text = 'hostname = "mail.example.com"\n' + CERTIFICATES.replace("key.pem", "live-key.pem")

    config = load_config(_write(pair_dir, text))

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

    config = load_config(_write(pair_dir, text))

    assert [pair.key.name for pair in config.tls.certificates] == ["rsa-key.pem", "key.pem"]


def test_key_of_another_certificate_is_refused(pair_dir: Path) -> None:
    generate_self_signed("other.example.com", pair_dir / "other.pem", pair_dir / "other-key.pem")
    text = 'hostname = "mail.example.com"\n' + CERTIFICATES.replace("key.pem", "other-key.pem")
    path = _write(pair_dir, text)

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

    config = load_config(_write(pair_dir, text))

    assert config.listen.submission == config.listen.submissions == (HostPort("127.0.0.1", 0),)


def test_config_is_frozen(pair_dir: Path) -> None:
    config = load_config(_write(pair_dir, 'hostname = "mail.example.com"\n' + CERTIFICATES))

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
    path = _write(tmp_path, "[limits]\nmax_recipients = " + "9" * 5000 + "\n")

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    message = str(caught.value)
    assert message.startswith(f"{path}: invalid TOML: ")
    assert "\n" not in message
    assert len(message) < 200 + len(str(path))


def test_deeply_nested_arrays_are_invalid_toml(tmp_path: Path) -> None:
    path = _write(tmp_path, "a = " + "[" * 100000 + "]" * 100000 + "\n")

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert str(caught.value) == f"{path}: invalid TOML: arrays or tables nested too deeply"


def test_certificate_path_that_is_a_directory_is_refused(pair_dir: Path) -> None:
    (pair_dir / "certs").mkdir()
    text = 'hostname = "mail.example.com"\n' + CERTIFICATES.replace('"cert.pem"', '"certs"')
    path = _write(pair_dir, text)

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert str(caught.value) == (
        f"{path}: tls.certificates[0].cert: not a regular file: {pair_dir}/certs"
    )


def test_huge_integer_is_echoed_shortened(pair_dir: Path) -> None:
    path = _write(pair_dir, "[limits]\nmax_recipients = " + "9" * 40 + "\n")

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert str(caught.value) == (
        f"{path}: limits.max_recipients: must be an integer between 1 and 10000, got {'9' * 20}..."
    )


def test_unknown_quoted_key_is_shown_escaped(pair_dir: Path) -> None:
    path = _write(pair_dir, '"odd\\nkey" = 1\n')

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert str(caught.value) == f'{path}: "odd\\nkey": unknown key'


# --- the unsafe gate ---------------------------------------------------------------------------

UNSAFE_CASES = [
    ("plaintext_auth", "[auth]\nallow_plaintext = true\n" + CERTIFICATES),
    ("tls_below_1_2", CERTIFICATES + 'min_version = "1.0"\n'),
    ("no_auth", "[auth]\nrequired = false\n" + CERTIFICATES),
]


@pytest.mark.parametrize(("override", "tables"), UNSAFE_CASES, ids=[c[0] for c in UNSAFE_CASES])
def test_unsafe_setting_with_its_override_loads_and_is_listed(
    pair_dir: Path, override: str, tables: str
) -> None:
    text = f'hostname = "mail.example.com"\nunsafe_overrides = ["{override}"]\n' + tables

    config = load_config(_write(pair_dir, text))

    assert [name for name, _ in unsafe_settings(config)] == [override]
    assert config.unsafe_overrides == (override,)


def test_world_readable_key_with_override_loads_and_is_described(pair_dir: Path) -> None:
    os.chmod(pair_dir / "key.pem", 0o644)
    text = 'hostname = "mail.example.com"\nunsafe_overrides = ["world_readable_key"]\n'

    config = load_config(_write(pair_dir, text + CERTIFICATES))

    assert unsafe_settings(config) == [
        (
            "world_readable_key",
            f"tls.certificates[0].key: {pair_dir}/key.pem is open to group or others (mode 0644)",
        )
    ]


def test_unsafe_settings_reads_the_key_mode_now(pair_dir: Path) -> None:
    config = load_config(_write(pair_dir, 'hostname = "mail.example.com"\n' + CERTIFICATES))
    assert unsafe_settings(config) == []

    os.chmod(pair_dir / "key.pem", 0o604)

    assert [name for name, _ in unsafe_settings(config)] == ["world_readable_key"]


def test_every_unsafe_setting_at_once_is_listed_in_order(pair_dir: Path) -> None:
    os.chmod(pair_dir / "key.pem", 0o660)
    text = (
        'hostname = "mail.example.com"\n'
        'unsafe_overrides = ["world_readable_key", "no_auth", "tls_below_1_2", "plaintext_auth"]\n'
        "[auth]\nrequired = false\nallow_plaintext = true\n"
        + CERTIFICATES.replace("[tls]", '[tls]\nmin_version = "1.1"')
    )

    config = load_config(_write(pair_dir, text))

    assert [name for name, _ in unsafe_settings(config)] == [
        "plaintext_auth",
        "tls_below_1_2",
        "no_auth",
        "world_readable_key",
    ]


def test_override_listed_but_not_needed_is_fine(pair_dir: Path) -> None:
    text = 'hostname = "mail.example.com"\nunsafe_overrides = ["no_auth", "plaintext_auth"]\n'

    config = load_config(_write(pair_dir, text + CERTIFICATES))

    assert config.unsafe_overrides == ("no_auth", "plaintext_auth")
    assert unsafe_settings(config) == []


# --- parsers shared with `sendgate init` -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("0.0.0.0:587", ANY_V4, 587),
        ("127.0.0.1:0", "127.0.0.1", 0),
        ("[::1]:587", "::1", 587),
        ("[::]:465", "::", 465),
        ("localhost:65535", "localhost", 65535),
        ("mail.example.com:25", "mail.example.com", 25),
    ],
)
def test_host_port_parses_and_prints_back(text: str, host: str, port: int) -> None:
    address = HostPort.parse(text)

    assert address == HostPort(host, port)
    assert str(address) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", 'expected HOST:PORT, got ""'),
        (":587", 'expected HOST:PORT, got ":587"'),
        ("[::1]", 'expected HOST:PORT, got "[::1]"'),
        ("[127.0.0.1]:587", 'expected an IPv6 address inside [...], got "[127.0.0.1]:587"'),
        ("host:", 'expected a port from 0 to 65535 after the host, got "host:"'),
        ("host:-1", 'expected a port from 0 to 65535 after the host, got "host:-1"'),
        ("host:\u0661\u0662", 'expected a port from 0 to 65535 after the host, got "host:١٢"'),
        ("host:0000587", 'expected a port from 0 to 65535 after the host, got "host:0000587"'),
        ("1.2.3:587", 'expected an IP address or host name before the port, got "1.2.3:587"'),
    ],
)
def test_host_port_rejects_with_reason(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        HostPort.parse(text)


@pytest.mark.parametrize(
    "name", ["localhost", "mail.example.com", "a-b.c-d.example", "x" * 63 + ".example"]
)
def test_parse_hostname_accepts_dns_names(name: str) -> None:
    assert parse_hostname(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "-mail.example.com",
        "mail-.example.com",
        "mail..example.com",
        "mail.example.com.",
        "x" * 64 + ".example",
        "mail_1.example.com",
        "b\u00fccher.example",
        "10.0.0.1",
        ".".join(["abcdefghi"] * 26),
    ],
)
def test_parse_hostname_rejects_other_text(name: str) -> None:
    with pytest.raises(ValueError, match=r'^expected a host name like "mail\.example\.com", got '):
        parse_hostname(name)


# --- generated example and docs ----------------------------------------------------------------


def test_render_example_loads_back_with_the_given_values(pair_dir: Path) -> None:
    text = render_example(
        "mail.example.com", ["127.0.0.1:0", "[::1]:0"], ["127.0.0.1:0"], "cert.pem", "key.pem"
    )

    config = load_config(_write(pair_dir, text))

    assert config.hostname == "mail.example.com"
    assert config.listen.submission == (HostPort("127.0.0.1", 0), HostPort("::1", 0))
    assert config.listen.submissions == (HostPort("127.0.0.1", 0),)
    assert config.tls.certificates[0].cert == pair_dir / "cert.pem"
    assert unsafe_settings(config) == []


def test_render_example_holds_every_setting_at_its_default(pair_dir: Path) -> None:
    text = render_example(
        "mail.example.com", ["0.0.0.0:587"], ["0.0.0.0:465"], "cert.pem", "key.pem"
    )
    example = load_config(_write(pair_dir, text, name="example.toml"))
    minimal = load_config(_write(pair_dir, 'hostname = "mail.example.com"\n' + CERTIFICATES))

    assert _toml_keys(tomllib.loads(text)) == _leaf_keys(Config)
    assert example == minimal


def test_render_example_escapes_strings(pair_dir: Path) -> None:
    text = render_example("mail.example.com", ["0.0.0.0:587"], [], 'c"\\\n.pem', "k.pem")

    assert tomllib.loads(text)["tls"]["certificates"][0]["cert"] == 'c"\\\n.pem'


def test_render_example_comments_every_setting_with_its_doc() -> None:
    text = render_example("mail.example.com", ["0.0.0.0:587"], ["0.0.0.0:465"], "c", "k")
    lines = text.splitlines()
    assert all(len(line) <= 100 for line in lines)

    settings = [index for index, line in enumerate(lines) if line and line[0] not in "#["]
    assert len(settings) == len(_leaf_keys(Config))
    for index in settings:
        start = index
        while lines[start - 1].startswith("# "):
            start -= 1
        comment = " ".join(line[2:] for line in lines[start:index])
        assert index - start >= 2, lines[index]
        assert "default " in comment or "required" in comment, lines[index]


def test_docs_config_md_is_current() -> None:
    assert DOCS.is_file(), "docs/config.md is missing: python -m sendgate.config > docs/config.md"
    assert DOCS.read_text() == render_docs(), (
        "docs/config.md is stale; regenerate it: python -m sendgate.config > docs/config.md"
    )


def test_docs_list_every_setting_and_override() -> None:
    docs = render_docs()

    for key in _leaf_keys(Config):
        assert f"| `{key}` |" in docs, key
    for override in ("plaintext_auth", "tls_below_1_2", "no_auth", "world_readable_key"):
        assert f"| `{override}` |" in docs, override


def test_running_the_module_prints_the_docs() -> None:
    src = Path(sendgate.__file__).parents[1]
    result = subprocess.run(
        [sys.executable, "-m", "sendgate.config"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(src)},
    )

    assert result.stdout == render_docs()

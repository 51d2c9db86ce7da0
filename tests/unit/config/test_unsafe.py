"""Tests for sendgate.config.unsafe: the override list, the findings, and the gate."""

import os
from pathlib import Path

import pytest
from tests.unit.config.conftest import CERTIFICATES, MINIMAL, write_config

from sendgate.config.echo import Where
from sendgate.config.load import load_config
from sendgate.config.unsafe import OVERRIDES, UnsafeSetting, refuse_unsafe, unsafe_settings
from sendgate.errors import ConfigError

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

    config = load_config(write_config(pair_dir, text))

    assert [unsafe.override for unsafe in unsafe_settings(config)] == [override]
    assert config.unsafe_overrides == (override,)


def test_world_readable_key_with_override_loads_and_is_described(pair_dir: Path) -> None:
    os.chmod(pair_dir / "key.pem", 0o644)
    text = 'hostname = "mail.example.com"\nunsafe_overrides = ["world_readable_key"]\n'

    config = load_config(write_config(pair_dir, text + CERTIFICATES))

    assert unsafe_settings(config) == [
        UnsafeSetting(
            "world_readable_key",
            "tls.certificates[0].key",
            f"tls.certificates[0].key: {pair_dir}/key.pem is open to group or others (mode 0644)",
        )
    ]


def test_unsafe_settings_reads_the_key_mode_now(pair_dir: Path) -> None:
    config = load_config(write_config(pair_dir, MINIMAL))
    assert unsafe_settings(config) == []

    os.chmod(pair_dir / "key.pem", 0o604)

    assert [unsafe.override for unsafe in unsafe_settings(config)] == ["world_readable_key"]


def test_every_unsafe_setting_at_once_is_listed_in_order(pair_dir: Path) -> None:
    os.chmod(pair_dir / "key.pem", 0o660)
    text = (
        'hostname = "mail.example.com"\n'
        'unsafe_overrides = ["world_readable_key", "no_auth", "tls_below_1_2", "plaintext_auth"]\n'
        "[auth]\nrequired = false\nallow_plaintext = true\n"
        + CERTIFICATES.replace("[tls]", '[tls]\nmin_version = "1.1"')
    )

    config = load_config(write_config(pair_dir, text))

    assert [unsafe.override for unsafe in unsafe_settings(config)] == [
        "plaintext_auth",
        "tls_below_1_2",
        "no_auth",
        "world_readable_key",
    ]


def test_override_listed_but_not_needed_is_fine(pair_dir: Path) -> None:
    text = 'hostname = "mail.example.com"\nunsafe_overrides = ["no_auth", "plaintext_auth"]\n'

    config = load_config(write_config(pair_dir, text + CERTIFICATES))

    assert config.unsafe_overrides == ("no_auth", "plaintext_auth")
    assert unsafe_settings(config) == []


def test_plaintext_relay_names_the_route(pair_dir: Path) -> None:
    text = (
        'unsafe_overrides = ["plaintext_relay"]\n'
        + MINIMAL
        + "[[delivery.routes]]\n"
        + 'domains = ["*"]\nsmarthost = "relay.example.net:25"\ntls = "none"\n'
    )

    config = load_config(write_config(pair_dir, text))

    assert unsafe_settings(config) == [
        UnsafeSetting(
            "plaintext_relay",
            "delivery.routes[0].tls",
            'delivery.routes[0]: tls = "none" to relay.example.net:25: mail and passwords '
            "cross the network in clear",
        )
    ]


def test_gate_refuses_the_first_setting_not_overridden(pair_dir: Path) -> None:
    text = 'unsafe_overrides = ["no_auth"]\n' + MINIMAL + "[auth]\nrequired = false\n"
    config = load_config(write_config(pair_dir, text))
    os.chmod(pair_dir / "key.pem", 0o640)

    with pytest.raises(ConfigError) as caught:
        refuse_unsafe(config, Where("sendgate.toml", "", pair_dir))

    assert str(caught.value) == (
        "sendgate.toml: tls.certificates[0].key: unsafe setting refused; "
        'add "world_readable_key" to unsafe_overrides to allow it'
    )


def test_key_that_cannot_be_checked_is_an_error(pair_dir: Path) -> None:
    config = load_config(write_config(pair_dir, MINIMAL))
    (pair_dir / "key.pem").unlink()

    with pytest.raises(ConfigError) as caught:
        unsafe_settings(config)

    assert str(caught.value) == (
        f"tls.certificates[0].key: cannot check {pair_dir}/key.pem: No such file or directory"
    )


def test_overrides_are_named_in_a_fixed_order_with_one_line_each() -> None:
    assert list(OVERRIDES) == [
        "plaintext_auth",
        "tls_below_1_2",
        "no_auth",
        "world_readable_key",
        "plaintext_relay",
        "public_http",
        "proxy_from_anywhere",
        "plaintext_store",
    ]
    assert all(allows and "\n" not in allows for allows in OVERRIDES.values())


@pytest.mark.parametrize("listen", ["127.0.0.1:8025", "[::1]:80", "localhost:8025"])
def test_plain_http_on_loopback_is_fine(pair_dir: Path, listen: str) -> None:
    config = load_config(write_config(pair_dir, MINIMAL + f'[http]\nlisten = "{listen}"\n'))

    assert unsafe_settings(config) == []


def test_plain_http_off_loopback_needs_its_override(pair_dir: Path) -> None:
    http = '[http]\nlisten = "0.0.0.0:8025"\n'
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(pair_dir, MINIMAL + http))
    assert str(caught.value).endswith(
        'sendgate.toml: http.listen: unsafe setting refused; add "public_http" to '
        "unsafe_overrides to allow it"
    )

    config = load_config(
        write_config(pair_dir, 'unsafe_overrides = ["public_http"]\n' + MINIMAL + http)
    )

    assert [(u.override, u.key) for u in unsafe_settings(config)] == [
        ("public_http", "http.listen")
    ]


def test_a_proxy_trusted_from_anywhere_needs_its_override(pair_dir: Path) -> None:
    listen = '[listen]\nproxy_from = ["127.0.0.1/32", "::/0"]\n'
    with pytest.raises(ConfigError, match=r"listen.proxy_from\[1\]: unsafe setting refused"):
        load_config(write_config(pair_dir, MINIMAL + listen))
    config = load_config(
        write_config(pair_dir, 'unsafe_overrides = ["proxy_from_anywhere"]\n' + MINIMAL + listen)
    )
    [found] = unsafe_settings(config)
    assert found.description.startswith("listen.proxy_from[1] = ::/0: anyone may claim")


@pytest.mark.parametrize(
    "url",
    [
        "local",
        "redis://127.0.0.1:6379/0",
        "redis://:s3cret@[::1]:6379",
        "redis://localhost",
        "rediss://:s3cret@redis.example.net:6380/0",
        "unix:///run/redis/redis.sock",
    ],
)
def test_a_store_on_loopback_or_over_tls_is_fine(pair_dir: Path, url: str) -> None:
    config = load_config(write_config(pair_dir, MINIMAL + f'[store]\nlimits = "{url}"\n'))
    assert unsafe_settings(config) == []


def test_a_plaintext_store_across_the_network_needs_its_override(pair_dir: Path) -> None:
    store = '[store]\nlimits = "redis://:s3cret@10.0.0.5:6379/0"\n'
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(pair_dir, MINIMAL + store))
    assert "store.limits: unsafe setting refused" in str(caught.value)
    assert "s3cret" not in str(caught.value)
    config = load_config(
        write_config(pair_dir, 'unsafe_overrides = ["plaintext_store"]\n' + MINIMAL + store)
    )
    [found] = unsafe_settings(config)
    assert found.description.startswith("store.limits: redis:// to 10.0.0.5: ")
    assert "s3cret" not in found.description


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://sendgate@127.0.0.1/sendgate",
        "postgresql:///sendgate?host=/run/postgresql",
        "postgresql://sendgate@db.example.net/sendgate?sslmode=verify-full",
        "postgres://sendgate@10.0.0.7:5432/sendgate?sslmode=require",
    ],
)
def test_users_on_postgresql_locally_or_with_tls_required_are_fine(
    pair_dir: Path, url: str
) -> None:
    config = load_config(write_config(pair_dir, MINIMAL + f'[store]\nusers = "{url}"\n'))
    assert unsafe_settings(config) == []


@pytest.mark.parametrize("mode", ["", "?sslmode=prefer", "?sslmode=disable"])
def test_users_on_postgresql_without_tls_across_the_network_need_the_override(
    pair_dir: Path, mode: str
) -> None:
    store = f'[store]\nusers = "postgresql://sendgate:s3cret@10.0.0.7/sendgate{mode}"\n'
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(pair_dir, MINIMAL + store))
    assert "store.users: unsafe setting refused" in str(caught.value)
    assert "s3cret" not in str(caught.value)
    config = load_config(
        write_config(pair_dir, 'unsafe_overrides = ["plaintext_store"]\n' + MINIMAL + store)
    )
    [found] = unsafe_settings(config)
    assert found.description.startswith("store.users: PostgreSQL at 10.0.0.7 without sslmode=")
    assert "s3cret" not in found.description


def test_users_store_must_be_local_or_a_postgresql_url(pair_dir: Path) -> None:
    store = '[store]\nusers = "mysql://root:s3cret@db/sendgate"\n'
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(pair_dir, MINIMAL + store))
    assert "store.users" in str(caught.value)
    assert "postgresql://" in str(caught.value)
    assert "s3cret" not in str(caught.value)

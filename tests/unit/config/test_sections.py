"""Tests for sendgate.config.sections: the schema walk and the arrays of tables."""

import tomllib
from pathlib import Path

import pytest

from sendgate.config.echo import Where, toml_value
from sendgate.config.kinds import HostPort
from sendgate.config.schema import CertPair, Config, RouteConfig
from sendgate.config.sections import (
    Certificates,
    Routes,
    is_required,
    parse_section,
    sections,
    settings,
)
from sendgate.errors import ConfigError


def test_sections_walk_the_schema_in_order() -> None:
    assert [prefix for prefix, _ in sections(Config)] == [
        "",
        "listen",
        "tls",
        "auth",
        "limits",
        "login_limits",
        "sending_limits",
        "sign_in_notice",
        "privacy",
        "delivery",
        "dkim",
        "audit",
        "http",
        "sendmail",
        "store",
        "service",
        "log",
    ]


def test_settings_leave_out_sub_sections_and_know_what_is_required() -> None:
    top = settings(Config)

    assert [entry.name for entry in top] == ["hostname", "data_dir", "unsafe_overrides"]
    assert [is_required(entry) for entry in top] == [True, False, False]


def test_parse_section_fills_defaults_through_the_kinds(tmp_path: Path) -> None:
    table = {"domains": ["Example.ORG"], "smarthost": "relay.example.net:587"}

    route = parse_section(RouteConfig, table, Where("f.toml", "route", tmp_path))

    assert route == RouteConfig(
        domains=("example.org",), smarthost=HostPort("relay.example.net", 587), tls="starttls"
    )


def test_parse_section_suggests_a_close_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_section(CertPair, {"certs": "c.pem"}, Where("f.toml", "pair", tmp_path))

    assert str(caught.value) == 'f.toml: pair.certs: unknown key (did you mean "cert"?)'


def test_routes_write_back_what_they_read(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("hunter2\n")
    kind = Routes(RouteConfig)
    raw = [
        {"domains": ["*"], "smarthost": "[::1]:2525", "tls": "none"},
        {
            "domains": [".example.org"],
            "smarthost": "relay.example.net:465",
            "tls": "implicit",
            "username": "me",
            "password_file": str(tmp_path / "secret"),
        },
    ]
    where = Where("f.toml", "delivery.routes", tmp_path)

    routes = kind.parse(raw, where)

    assert kind.to_raw(routes) == raw
    assert kind.parse(tomllib.loads(f"v = {toml_value(kind.to_raw(routes))}")["v"], where) == routes


def test_routes_never_write_an_inline_password(tmp_path: Path) -> None:
    kind = Routes(RouteConfig)
    raw = [{"domains": ["*"], "smarthost": "127.0.0.1:25", "username": "me", "password": "pw"}]

    routes = kind.parse(raw, Where("f.toml", "delivery.routes", tmp_path))

    assert "password" not in str(kind.to_raw(routes))
    assert "pw" not in repr(routes)


def test_certificates_write_back_their_paths(tmp_path: Path) -> None:
    kind = Certificates(CertPair)
    pairs = (CertPair(tmp_path / "c.pem", tmp_path / "k.pem"),)

    assert kind.to_raw(pairs) == [{"cert": f"{tmp_path}/c.pem", "key": f"{tmp_path}/k.pem"}]
